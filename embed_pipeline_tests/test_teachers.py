import numpy as np
import pandas as pd
import pytest
from sentence_transformers import SentenceTransformer

from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.mining import unroll_training_rows
from embed_pipeline.core.settings import TeacherSettings, TrainingSettings
from embed_pipeline.core.teachers import hybrid_teacher_scores, score_with_teacher
from embed_pipeline.core.training import ValidationSet, finetune

PAIRS = [
    (
        "Which enzyme breaks down lactose?",
        "Lactase splits lactose into glucose and galactose in the gut.",
        "Volcanic ash clouds ground aircraft across the North Atlantic.",
    ),
    (
        "What causes tides on Earth?",
        "The Moon's gravity pulls the oceans, which raises the tides.",
        "Sourdough bread rises because wild yeast ferments the dough.",
    ),
    (
        "How do vaccines train immunity?",
        "Vaccines expose the immune system to a harmless antigen first.",
        "Chess openings such as the Sicilian defence favour black.",
    ),
    (
        "Why is the sky blue?",
        "Air molecules scatter short blue wavelengths of sunlight most.",
        "Copper wiring conducts electricity with very low resistance.",
    ),
]


def _cosines(model_dir, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    model = SentenceTransformer(str(model_dir), device="cpu")
    q = model.encode(rows["anchor"].tolist(), normalize_embeddings=True)
    p = model.encode(rows["positive"].tolist(), normalize_embeddings=True)
    n = model.encode(rows["negative_1"].tolist(), normalize_embeddings=True)
    return (q * p).sum(1), (q * n).sum(1)


def test_teacher_margins_reach_the_loss_a_teacher_preferring_the_negative_reverses_the_order(tmp_path):
    rows = pd.DataFrame(
        {
            "question_id": [f"q{i}" for i in range(len(PAIRS))],
            "anchor": [q for q, _, _ in PAIRS],
            "positive": [p for _, p, _ in PAIRS],
            "negative_1": [n for _, _, n in PAIRS],
            "label": [[-0.6]] * len(PAIRS),  # the teacher: the "negative" is 0.6 more relevant
        }
    )
    before_pos, before_neg = _cosines(base_model_path(None), rows)
    assert (before_pos > before_neg).all()
    finetune(
        rows,
        base_model_path(None),
        tmp_path / "m",
        TrainingSettings(epochs=15, batch_size=4, learning_rate=2e-4, loss="margin_mse", warmup_steps=0),
    )
    after_pos, after_neg = _cosines(tmp_path / "m", rows)
    assert (after_neg > after_pos).all()


def test_margin_loss_without_teacher_scores_is_a_clear_error(tmp_path):
    rows = pd.DataFrame({"question_id": ["q"], "anchor": ["a"], "positive": ["p"], "negative_1": ["n"]})
    with pytest.raises(ValueError, match="needs teacher scores"):
        finetune(rows, base_model_path(None), tmp_path / "m", TrainingSettings(loss="mnrl+margin_mse"))


def _mined_toy():
    chunks = pd.DataFrame(
        {
            "chunk_id": ["c0", "c1", "c2", "c3"],
            "doc_id": ["d0", "d1", "d2", "d3"],
            "passage": [p for _, p, _ in PAIRS[:2]] + [n for _, _, n in PAIRS[:2]],
        }
    )
    mined = pd.DataFrame(
        {
            "question_id": ["q0", "q1"],
            "question": [PAIRS[0][0], PAIRS[1][0]],
            "positive_chunk_id": ["c0", "c1"],
            "positive_score": [0.5, 0.5],
            "negative_chunk_ids": [["c2", "c3"], ["c3", "c2"]],
            "negative_scores": [[0.1, 0.0], [0.1, 0.0]],
        }
    )
    return mined, chunks


def test_hybrid_teacher_with_no_bm25_weight_gives_the_base_models_cosines_and_rows_carry_margins():
    mined, chunks = _mined_toy()
    model = SentenceTransformer(base_model_path(None), device="cpu")
    taught = hybrid_teacher_scores(mined, chunks, model, bm25_weight=0.0)
    q = model.encode(mined["question"].tolist(), normalize_embeddings=True)
    c = dict(zip(chunks["chunk_id"], model.encode(chunks["passage"].tolist(), normalize_embeddings=True), strict=True))
    assert taught["teacher_positive_score"].tolist() == pytest.approx(
        [float(q[0] @ c["c0"]), float(q[1] @ c["c1"])], abs=1e-4
    )
    assert taught["teacher_negative_scores"][0] == pytest.approx(
        [float(q[0] @ c["c2"]), float(q[0] @ c["c3"])], abs=1e-4
    )
    rows = unroll_training_rows(taught, chunks, num_negatives=2)
    expected = [taught["teacher_positive_score"][0] - s for s in taught["teacher_negative_scores"][0]]
    assert rows["label"][0] == pytest.approx(expected, abs=1e-5)


def test_hybrid_teacher_moves_scores_towards_bm25_and_rejects_a_bad_weight():
    mined, chunks = _mined_toy()
    model = SentenceTransformer(base_model_path(None), device="cpu")
    dense = hybrid_teacher_scores(mined, chunks, model, bm25_weight=0.0)
    lexical = hybrid_teacher_scores(mined, chunks, model, bm25_weight=1.0)
    # The positives share words with their questions and the negatives none: BM25 puts the positive at the top
    # of the question's range and every negative at its bottom.
    for row in lexical.itertuples():
        assert row.teacher_positive_score >= max(row.teacher_negative_scores)
    assert not np.allclose(dense["teacher_positive_score"], lexical["teacher_positive_score"]) or not np.allclose(
        np.stack(dense["teacher_negative_scores"]), np.stack(lexical["teacher_negative_scores"])
    )
    with pytest.raises(ValueError, match="bm25_weight"):
        hybrid_teacher_scores(mined, chunks, model, bm25_weight=1.5)


def test_llm_teacher_grades_each_pair_maps_grades_onto_the_base_range_and_caches_them(tmp_path):
    from embed_pipeline.core.llm import LLMSettings
    from embed_pipeline.core.teachers import llm_teacher_scores
    from embed_pipeline_tests.openai_stub import OpenAIStub

    mined, chunks = _mined_toy()
    chunks["content_hash"] = [f"h{i}" for i in range(len(chunks))]

    def answer(prompt: str):
        passage = prompt.split("<passage>")[1].split("</passage>")[0]
        if "Sourdough" in passage:
            return "no idea"  # never valid: the pair keeps the base model's score
        return '{"relevance": 3}' if "Volcanic" in passage else '{"relevance": 1}'

    with OpenAIStub(answer) as server:
        settings = LLMSettings(model="openai/teacher", api_base=server.url, num_retries=1, backoff_s=0.01)
        taught, stats = llm_teacher_scores(mined, chunks, settings, tmp_path / "cache.jsonl")
        first = taught.iloc[0]  # q0: positive c0 graded 1, negatives c2 (Volcanic) 3 and c3 (Sourdough) failed
        assert first["teacher_negative_scores"][0] == pytest.approx(0.5)  # grade 3: the top of [0.0, 0.5]
        assert first["teacher_positive_score"] == pytest.approx(0.5 / 3)
        assert first["teacher_negative_scores"][1] == pytest.approx(0.0)  # failed: base score kept
        assert stats["failed_pairs"] == 2 and stats["llm_failures"] == 2  # (q0, c3) and (q1, c3)
        asked = len(server.requests)
        llm_teacher_scores(mined, chunks, settings, tmp_path / "cache.jsonl")
        assert len(server.requests) - asked == 4  # only the two failed pairs are asked again (2 tries each)


def test_cross_encoder_teacher_learns_the_synthetic_pairs_and_scores_within_the_base_range(tmp_path):
    from embed_pipeline.core.cross_encoder import cross_encoder_teacher_scores, train_cross_encoder

    mined, chunks = _mined_toy()
    stats = train_cross_encoder(
        mined, chunks, base_model_path(None), tmp_path / "ce", epochs=30, learning_rate=1e-4, batch_size=6
    )
    assert stats["pairs"] == 6 and stats["positives"] == 2 and (tmp_path / "ce" / "config.json").is_file()
    taught = cross_encoder_teacher_scores(mined, chunks, tmp_path / "ce")
    for row in taught.itertuples():
        assert row.teacher_positive_score > max(row.teacher_negative_scores)  # it learned its training pairs
        low, high = min(row.negative_scores), row.positive_score
        assert all(low <= s <= high for s in [row.teacher_positive_score, *row.teacher_negative_scores])


def test_teacher_stage_builds_the_base_model_only_when_asked_and_chooses_the_weight_on_validation():
    mined, chunks = _mined_toy()
    built = []

    def base_encoder():
        built.append(1)
        return SentenceTransformer(base_model_path(None), device="cpu")

    unscored, info = score_with_teacher(mined, chunks, TeacherSettings(), base_encoder=base_encoder)
    assert unscored is mined and info == {"teacher": "none"} and not built
    fixed, info = score_with_teacher(
        mined, chunks, TeacherSettings(teacher="hybrid", bm25_weight=0.0), base_encoder=base_encoder
    )
    assert info["bm25_weight"] == 0.0 and info["bm25_weight_from"] == "config" and len(built) == 1
    assert "teacher_positive_score" in fixed
    validation = ValidationSet(
        queries={"v0": PAIRS[0][0], "v1": PAIRS[1][0]},
        corpus=dict(zip(chunks["chunk_id"], chunks["passage"], strict=True)),
        relevant={"v0": {"c0"}, "v1": {"c1"}},
    )
    _, chosen = score_with_teacher(
        mined, chunks, TeacherSettings(teacher="hybrid"), base_encoder=base_encoder, validation=validation
    )
    assert chosen["bm25_weight_from"] == "validation questions"
    scores = chosen["ndcg@10_by_bm25_weight"]
    assert scores[str(float(chosen["bm25_weight"]))] == max(scores.values())
