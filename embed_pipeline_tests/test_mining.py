import pandas as pd
import pytest
from sentence_transformers import SentenceTransformer

from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.mining import (
    mine_negatives,
    rows_short_of_negatives,
    shared_negatives,
    unroll_training_rows,
)
from embed_pipeline.core.settings import MiningSettings

QUESTION = "At what temperature does water boil at sea level?"
PASSAGES = {
    "pos/a.b:1": "Water boils at 100 degrees Celsius at sea level.",
    "pos/a.b:2": "Boiling points fall as altitude rises because the air pressure drops.",
    "near-dup": "At sea level, water boils at a temperature of 100 degrees Celsius.",
    "related": "Ice melts into liquid water at zero degrees Celsius.",
    "far-1": "The stock market closed higher on Friday after strong earnings reports.",
    "far-2": "Bananas are rich in potassium and easy to digest.",
    "far-3": "The violin has four strings tuned in perfect fifths.",
}


@pytest.fixture(scope="module")
def model():
    return SentenceTransformer(base_model_path(None), device="cpu")


def _chunks() -> pd.DataFrame:
    return pd.DataFrame({"chunk_id": list(PASSAGES), "doc_id": list(PASSAGES), "passage": list(PASSAGES.values())})


# One question's scores against a hand-built corpus: two positives (0.80 and 0.60, so the recipe's limit is
# 0.95 x 0.60 = 0.57) and candidates on both sides of that limit.
POSITIVES = {"pos:strong": 0.80, "pos:weak": 0.60}
CANDIDATES = {
    "pos:strong": 0.80,  # a positive offered as a candidate again: masked
    "above-strong-limit": 0.77,  # under 0.95 x the strong positive, above 0.95 x the weak one: dropped
    "at-limit": 0.57,
    "below-1": 0.55,
    "same-doc": 0.50,
    "below-2": 0.40,
    "below-3": 0.10,
}


def test_margin_is_taken_from_the_weakest_positive_and_positives_are_masked():
    kept = shared_negatives(POSITIVES, CANDIDATES, num_mined=10)
    assert [c for c, _ in kept] == ["at-limit", "below-1", "same-doc", "below-2", "below-3"]
    assert [s for _, s in kept] == [0.57, 0.55, 0.50, 0.40, 0.10]


def test_margin_options_excluded_chunks_and_the_number_kept():
    assert [c for c, _ in shared_negatives(POSITIVES, CANDIDATES, 2)] == ["at-limit", "below-1"]
    absolute = shared_negatives(POSITIVES, CANDIDATES, 10, relative_margin=None, absolute_margin=0.1)
    assert [c for c, _ in absolute] == ["same-doc", "below-2", "below-3"]  # at most 0.60 - 0.1
    both = shared_negatives(POSITIVES, CANDIDATES, 10, relative_margin=0.05, absolute_margin=0.01)
    assert [c for c, _ in both][0] == "at-limit"  # the stricter of 0.57 and 0.59
    no_margin = shared_negatives(POSITIVES, CANDIDATES, 10, relative_margin=None)
    assert [c for c, _ in no_margin][0] == "above-strong-limit"
    excluded = shared_negatives(POSITIVES, CANDIDATES, 10, excluded={"same-doc"})
    assert "same-doc" not in {c for c, _ in excluded}


def test_margin_rule_drops_candidates_above_095_of_the_weakest_positive_and_masks_all_positives(model):
    questions = pd.DataFrame(
        {"question_id": ["q:1"], "question": [QUESTION], "positive_chunk_ids": [["pos/a.b:1", "pos/a.b:2"]]}
    )
    mined = mine_negatives(questions, _chunks(), model, MiningSettings(num_mined=5, relative_margin=0.05))

    q, docs = model.encode([QUESTION]), model.encode(list(PASSAGES.values()))
    score = dict(zip(PASSAGES, model.similarity(q, docs)[0].tolist(), strict=True))
    weakest = min(score["pos/a.b:1"], score["pos/a.b:2"])
    assert score["near-dup"] > 0.95 * weakest, "fixture no longer exercises the margin"
    assert score["related"] < 0.95 * weakest, "fixture no longer has a valid hard negative"

    assert len(mined) == 2  # one row per positive, negatives shared
    for row in mined.itertuples():
        negatives = list(row.negative_chunk_ids)
        assert not {"pos/a.b:1", "pos/a.b:2", "near-dup"} & set(negatives)
        assert negatives[0] == "related"
        assert all(s <= 0.95 * weakest + 1e-6 for s in row.negative_scores)
        assert list(row.negative_scores) == sorted(row.negative_scores, reverse=True)
    assert mined["negative_chunk_ids"].map(list).iloc[0] == mined["negative_chunk_ids"].map(list).iloc[1]


def test_unrolling_gives_one_row_per_positive_and_leaves_out_rows_short_of_negatives(model):
    questions = pd.DataFrame(
        {"question_id": ["q:1"], "question": [QUESTION], "positive_chunk_ids": [["pos/a.b:1", "pos/a.b:2"]]}
    )
    mined = mine_negatives(questions, _chunks(), model, MiningSettings(num_mined=5))
    rows = unroll_training_rows(mined, _chunks(), num_negatives=3)
    assert rows["positive"].tolist() == [PASSAGES["pos/a.b:1"], PASSAGES["pos/a.b:2"]]
    assert list(rows.columns) == [
        "question_id",
        "source",
        "anchor",
        "positive",
        "negative_1",
        "negative_2",
        "negative_3",
    ]
    assert set(rows["source"]) == {"llm"}
    assert rows_short_of_negatives(mined, 5) == 2  # only 4 candidates survive the margin
    assert unroll_training_rows(mined, _chunks(), num_negatives=5).empty


def test_unknown_positive_is_a_clear_error(model):
    questions = pd.DataFrame({"question_id": ["q"], "question": [QUESTION], "positive_chunk_ids": [["nope"]]})
    with pytest.raises(ValueError, match="nope"):
        mine_negatives(questions, _chunks(), model)


def test_other_chunks_of_a_positive_document_are_never_negatives_unless_asked(model):
    questions = pd.DataFrame({"question_id": ["q:1"], "question": [QUESTION], "positive_chunk_ids": [["pos/a.b:1"]]})
    chunks = _chunks()
    chunks.loc[chunks["chunk_id"] == "related", "doc_id"] = "pos/a.b:1"  # a second chunk of the positive's doc
    kept = mine_negatives(questions, chunks, model, MiningSettings(num_mined=3))
    assert "related" not in list(kept["negative_chunk_ids"].iloc[0])
    assert len(kept["negative_chunk_ids"].iloc[0]) == 3  # extra candidates mined to make up for it
    allowed = mine_negatives(questions, chunks, model, MiningSettings(num_mined=3, exclude_same_document=False))
    assert "related" in list(allowed["negative_chunk_ids"].iloc[0])
