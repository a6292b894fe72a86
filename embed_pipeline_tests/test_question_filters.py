import pandas as pd
import pytest
from sentence_transformers import SentenceTransformer

from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.question_filters import (
    complexity_filter,
    filter_questions,
    near_duplicate_filter,
    roundtrip_filter,
)

CHUNKS = pd.DataFrame(
    {
        "chunk_id": ["d1#a", "d2#b", "d3#c", "d4#d"],
        "passage": [
            "Statins lower LDL cholesterol by inhibiting HMG-CoA reductase in the liver.",
            "Osteoclasts resorb bone while osteoblasts deposit new bone matrix.",
            "The influenza virus enters cells through hemagglutinin binding to sialic acid.",
            "Apolipoprotein E transports lipids in the brain and is linked to Alzheimer's disease.",
        ],
    }
)


def _questions(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "question_id": [f"q{i}" for i in range(len(rows))],
            "question": [q for q, _ in rows],
            "positive_chunk_ids": [[c] for _, c in rows],
        }
    )


@pytest.fixture(scope="module")
def model():
    return SentenceTransformer(base_model_path(None), device="cpu")


@pytest.mark.parametrize("method", ["bm25", "base"])
def test_roundtrip_keeps_questions_their_passage_answers_and_drops_the_rest(model, method):
    questions = _questions(
        [
            ("Which enzyme do statins inhibit to lower LDL cholesterol?", "d1#a"),
            ("How does the influenza virus bind to sialic acid on cells?", "d3#c"),
            ("How does the influenza virus bind to sialic acid on cells?", "d2#b"),  # wrong source
        ]
    )
    kept, dropped = roundtrip_filter(questions, CHUNKS, top_k=1, method=method, model=model)
    assert kept["question_id"].tolist() == ["q0", "q1"]
    assert dropped["question_id"].tolist() == ["q2"] and dropped["filter"].tolist() == ["roundtrip"]
    assert f"{method} top 1" in dropped["reason"].iloc[0]
    assert roundtrip_filter(questions, CHUNKS, top_k=1, method="either", model=model)[0]["question_id"].tolist() == [
        "q0",
        "q1",
    ]


def test_roundtrip_either_keeps_what_bm25_or_the_base_model_finds(model):
    paraphrase = _questions([("Which drugs reduce bad blood fats?", "d1#a")])  # no word shared with its passage
    assert roundtrip_filter(paraphrase, CHUNKS, top_k=1, method="bm25")[0].empty
    assert len(roundtrip_filter(paraphrase, CHUNKS, top_k=1, method="either", model=model)[0]) == 1
    with pytest.raises(ValueError, match="needs the base model"):
        roundtrip_filter(paraphrase, CHUNKS, method="either")


def test_near_duplicates_drop_the_later_question_and_keep_distinct_ones(model):
    questions = _questions(
        [
            ("Which enzyme do statins inhibit?", "d1#a"),
            ("Which enzyme is inhibited by statins?", "d1#a"),
            ("What do osteoclasts do to bone?", "d2#b"),
        ]
    )
    kept, dropped = near_duplicate_filter(questions, model, threshold=0.9)
    assert kept["question_id"].tolist() == ["q0", "q2"]
    assert dropped["question_id"].tolist() == ["q1"]
    assert "Which enzyme do statins inhibit?" in dropped["reason"].iloc[0]
    kept_all, _ = near_duplicate_filter(questions, model, threshold=0.999)
    assert len(kept_all) == 3


def test_filters_can_be_switched_off(model):
    questions = _questions([("Unrelated question about the weather today?", "d1#a")])
    kept, dropped = filter_questions(questions, CHUNKS, model, roundtrip="none", dedup_threshold=None)
    assert len(kept) == 1 and dropped.empty
    kept, dropped = filter_questions(questions, CHUNKS, model, roundtrip="bm25", roundtrip_top_k=1)
    assert kept.empty and dropped["filter"].tolist() == ["roundtrip"]


def test_complexity_filter_drops_questions_below_the_minimum_and_says_why():
    questions = _questions([("What do statins lower?", "d1#a"), ("Why do statins lower LDL?", "d1#a")])
    questions["complexity"] = [1, 3]
    kept, dropped = complexity_filter(questions, min_complexity=2)
    assert kept["question_id"].tolist() == ["q1"]
    assert dropped[["question_id", "filter", "reason"]].values.tolist() == [["q0", "complexity", "complexity 1 < 2"]]
    kept, dropped = filter_questions(questions, CHUNKS, None, roundtrip="none", dedup_threshold=None)
    assert len(kept) == 2 and dropped.empty  # min_complexity 1 (the default) keeps everything
