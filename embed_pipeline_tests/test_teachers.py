"""Teachers: building and choosing them, their scores of candidate lists, an embedding API as one, and the
student learning their scores."""

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sentence_transformers import SentenceTransformer

from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.document_pairs import pseudo_queries
from embed_pipeline.core.llm import LLMSettings
from embed_pipeline.core.mining import unroll_taught_rows
from embed_pipeline.core.settings import TeacherSettings, TrainingSettings
from embed_pipeline.core.teachers import (
    TeacherContext,
    build_teacher,
    choose_teacher,
    parse_teacher,
    score_candidate_lists,
)
from embed_pipeline.core.teachers.api import ApiEncoder
from embed_pipeline.core.teachers.scoring import CandidateLists
from embed_pipeline.core.training import ValidationSet, finetune, interpolate_weights
from embed_pipeline_tests.openai_stub import OpenAIStub

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


@pytest.mark.parametrize("loss", ["kl", "margin_mse"])
def test_a_teacher_that_prefers_the_negative_reverses_the_students_order(tmp_path, loss):
    rows = pd.DataFrame(
        {
            "question_id": [f"q{i}" for i in range(len(PAIRS))],
            "anchor": [q for q, _, _ in PAIRS],
            "positive": [p for _, p, _ in PAIRS],
            "negative_1": [n for _, _, n in PAIRS],
            "negative_2": [PAIRS[(i + 1) % len(PAIRS)][2] for i in range(len(PAIRS))],
            # The teacher's scores of (positive, negative_1, negative_2), then "positive not trusted".
            "label": [[0.2, 0.8, 0.1, 0.0]] * len(PAIRS),
        }
    )
    before_pos, before_neg = _cosines(base_model_path(None), rows)
    assert (before_pos > before_neg).all()
    settings = TrainingSettings(
        epochs=15, batch_size=4, learning_rate=2e-4, loss=loss, warmup_steps=0, temperature=0.05, mixing_weights=[1.0]
    )
    finetune(rows, base_model_path(None), tmp_path / "m", settings)
    after_pos, after_neg = _cosines(tmp_path / "m", rows)
    assert (after_neg > after_pos).all()


def test_teacher_losses_without_teacher_scores_are_a_clear_error(tmp_path):
    rows = pd.DataFrame({"question_id": ["q"], "anchor": ["a"], "positive": ["p"], "negative_1": ["n"]})
    with pytest.raises(ValueError, match="needs teacher scores"):
        finetune(rows, base_model_path(None), tmp_path / "m", TrainingSettings(loss="kl+mnrl"))


def test_mixing_weight_0_gives_the_base_weights_exactly_and_1_the_trained_ones(tmp_path):
    base = SentenceTransformer(base_model_path(None), device="cpu").state_dict()
    tuned = {k: v + 1.0 if v.is_floating_point() else v for k, v in base.items()}
    for weight, expected in ((0.0, base), (1.0, tuned)):
        mixed = interpolate_weights(base, tuned, weight)
        assert all(mixed[k].equal(expected[k]) for k in base)
    half = interpolate_weights(base, tuned, 0.5)
    name = next(k for k, v in base.items() if v.is_floating_point())
    assert np.allclose(half[name].numpy(), base[name].numpy() + 0.5)
    with pytest.raises(ValueError, match="within"):
        interpolate_weights(base, tuned, 1.5)
    rows = pd.DataFrame(
        {
            "question_id": [f"q{i}" for i in range(len(PAIRS))],
            "anchor": [q for q, _, _ in PAIRS],
            "positive": [p for _, p, _ in PAIRS],
            "negative_1": [n for _, _, n in PAIRS],
        }
    )
    validation = ValidationSet(
        queries={f"v{i}": q for i, (q, _, _) in enumerate(PAIRS)},
        corpus={f"c{i}": p for i, (_, p, _) in enumerate(PAIRS)},
        relevant={f"v{i}": {f"c{i}"} for i in range(len(PAIRS))},
    )
    settings = TrainingSettings(epochs=1, batch_size=4, learning_rate=1e-3, mixing_weights=[0.0])
    stats = finetune(rows, base_model_path(None), tmp_path / "m", settings, validation=validation)
    saved = SentenceTransformer(str(tmp_path / "m"), device="cpu").state_dict()
    assert stats["mixing_weight"] == 0.0 and all(saved[k].equal(base[k]) for k in base)
    assert stats["validation_vs_base"]["delta"] == 0.0


def _toy_chunks() -> pd.DataFrame:
    passages = [p for _, p, _ in PAIRS] + [n for _, _, n in PAIRS]
    return pd.DataFrame(
        {
            "chunk_id": [f"d{i}#c" for i in range(len(passages))],
            "doc_id": [f"d{i}" for i in range(len(passages))],
            "title": [""] * len(passages),
            "heading": [""] * len(passages),
            "text": passages,
            "passage": passages,
        }
    )


def _context(tmp_path: Path) -> TeacherContext:
    return TeacherContext(
        base_model=base_model_path(None),
        base_cache=tmp_path / "base",
        passage_cache=lambda identity: tmp_path / hashlib.sha256(identity.encode()).hexdigest()[:8],
    )


def test_candidate_lists_keep_a_trusted_positive_first_and_give_pseudo_queries_other_documents(tmp_path):
    chunks = _toy_chunks()
    mined = pd.DataFrame(
        {
            "question_id": ["q0", "q1"],
            "question": [PAIRS[0][0], PAIRS[1][0]],
            "source": ["llm", "llm"],
            "positive_chunk_id": ["d0#c", "d1#c"],
            "negative_chunk_ids": [["d4#c", "d5#c"], ["d5#c", "d4#c"]],
        }
    )
    pseudo = pd.DataFrame(
        {"question_id": ["span:d2"], "question": ["harmless antigen"], "doc_id": ["d2"], "source": ["span"]}
    )
    context = _context(tmp_path)
    teacher = build_teacher(parse_teacher("bm25@0.5+base@0.5"), context)
    student = build_teacher(parse_teacher("base"), context)
    scored = score_candidate_lists(mined, pseudo, chunks, teacher, student, 1, CandidateLists(1, 1))
    rows = scored.rows.set_index("question_id")
    assert scored.list_size == 4 and scored.dropped_short_lists == 0
    assert rows.loc["q0", "candidate_chunk_ids"][:2] == ["d0#c", "d4#c"]  # positive, then the mined negative
    assert len(set(rows.loc["q0", "candidate_chunk_ids"])) == 4 and rows.loc["q0", "trusted"]
    own = rows.loc["span:d2"]
    assert not own["trusted"] and "d2#c" not in own["candidate_chunk_ids"]  # its own text is not a candidate
    assert own["teacher_scores"] == sorted(own["teacher_scores"], reverse=True)  # best by the teacher first
    taught = unroll_taught_rows(scored.rows, chunks)
    assert list(taught["label"].iloc[0]) == [*rows.loc["q0", "teacher_scores"], 1.0]
    assert taught.set_index("question_id").loc["span:d2", "label"][-1] == 0.0


def test_pseudo_queries_come_from_a_toy_document(tmp_path):
    chunks = pd.DataFrame(
        {
            "chunk_id": ["guide#1", "guide#2"],
            "doc_id": ["guide", "guide"],
            "title": ["Rotating the payment provider keys", "Rotating the payment provider keys"],
            "heading": ["## Before you start the rotation", "## Before you start the rotation"],
            "text": [
                "Keys expire every ninety days and the provider warns a week before. Create the new key in the "
                "console first. Store it in the vault under the billing path.",
                "Restart the containers one at a time so that payments never stop during the rotation.",
            ],
            "passage": ["p1", "p2"],
        }
    )
    queries = pseudo_queries(chunks, per_chunk=2)
    by_source = queries.groupby("source")["question"].agg(list).to_dict()
    assert by_source["title"] == ["Rotating the payment provider keys"]
    assert by_source["heading"] == ["## Before you start the rotation"]
    assert len(by_source["sentence"]) == 2 and all(s in chunks["text"].str.cat(sep=" ") for s in by_source["sentence"])
    assert len(by_source["span"]) == 2
    for span in by_source["span"]:
        assert 6 <= len(span.split()) <= 16 and span in " ".join(chunks["text"])
    assert len(pseudo_queries(chunks, per_chunk=2, limit=3)) == 3
    assert pseudo_queries(chunks, per_chunk=2).equals(queries)  # the same queries every run
    with pytest.raises(ValueError, match="unknown pseudo-query source"):
        pseudo_queries(chunks, sources=["cloze"])


def test_the_teacher_is_the_best_candidate_on_validation_and_bm25_or_the_base_never_teach_by_themselves(tmp_path):
    chunks = _toy_chunks()
    # Each query is relevant to a passage it shares no meaning with: only a teacher that knows the pairing (an
    # embedding API answering from a table) ranks them; BM25 and the base model cannot.
    pairing = {"code alpha": 0, "code beta": 5, "code gamma": 2}
    corpus = dict(zip(chunks["chunk_id"], chunks["passage"], strict=True))
    validation = ValidationSet(
        queries={f"v{i}": q for i, q in enumerate(pairing)},
        corpus=corpus,
        relevant={f"v{i}": {f"d{j}#c"} for i, j in enumerate(pairing.values())},
    )
    row_of = {p: i for i, p in enumerate(chunks["passage"])}

    def oracle(texts: list[str]) -> list[list[float]]:
        slot = {**{q: j for q, j in pairing.items()}, **row_of}
        return [[1.0 if k == slot.get(t, -1) else 0.01 for k in range(len(chunks))] for t in texts]

    with OpenAIStub(embed=oracle) as server:
        context = _context(tmp_path)
        context.api, context.api_cache = LLMSettings(api_base=server.url), tmp_path / "api.jsonl"
        settings = TeacherSettings(candidates=["bm25", "bm25+base", "api:openai/oracle"])
        choice = choose_teacher(settings, context, validation)
    table = {row["teacher"]: row for row in choice.table()}
    assert set(table) >= {"base", "bm25", "api:openai/oracle"} and any(n.startswith("bm25@") for n in table)
    assert table["api:openai/oracle"]["validation_ndcg@10"] == 1.0 > table["base"]["validation_ndcg@10"]
    assert choice.teacher == "api:openai/oracle" and table["api:openai/oracle"]["chosen"]
    # BM25 and the base's own fusion are scored for reference but do not teach by themselves.
    references = choose_teacher(TeacherSettings(candidates=["bm25", "bm25+base"]), _context(tmp_path), validation)
    assert references.teacher is None and "no teacher beyond BM25 and the base model" in references.reason
    named = choose_teacher(TeacherSettings(teacher="bm25", candidates=[]), _context(tmp_path), validation)
    assert named.teacher == "bm25"  # named, it teaches
    missing = choose_teacher(TeacherSettings(candidates=["embeddinggemma-300m"]), _context(tmp_path), validation)
    row = {r["teacher"]: r for r in missing.table()}["embeddinggemma-300m"]
    assert row["validation_ndcg@10"] is not None or row["note"].startswith("unavailable: the offline teacher")


def test_teacher_names_parse_and_bad_ones_say_why():
    assert parse_teacher("bm25@0.3+embeddinggemma-300m@0.7").text == "bm25@0.3+embeddinggemma-300m@0.7"
    assert parse_teacher("api:openai/text-embedding-3-small").kind == "api"
    assert parse_teacher("offline:nomic-embed-text-v1.5").kind == "offline"
    assert parse_teacher("BAAI/bge-small-en-v1.5").kind == "bi-encoder"
    for bad, why in (("bm25@x+base", "not a number"), ("bm25@0.5+base", "every member"), ("api:", "name the model")):
        with pytest.raises(ValueError, match=why):
            parse_teacher(bad)
    with pytest.raises(ValueError, match="no offline model"):
        TeacherSettings(teacher="offline:nope")


def _embed(texts: list[str]) -> list[list[float]]:
    return [[float(b) - 127.5 for b in hashlib.sha256(t.encode()).digest()[:8]] for t in texts]


_KILLED_API_RUN = """
import sys
from embed_pipeline.core.llm import LLMSettings
from embed_pipeline.core.teachers.api import ApiEncoder
settings = LLMSettings(model="openai/teacher-embed", api_base=sys.argv[1], api_key_env="TEACHER_KEY", concurrency=1)
ApiEncoder(settings, sys.argv[2], batch_size=2).encode_document([f"passage {i}" for i in range(10)])
"""


def test_the_api_teacher_is_batched_cached_resumed_after_a_kill_and_keeps_its_key_out_of_artifacts(tmp_path):
    key = "sk-test-4f2a9c-never-stored"
    answered: list[list[str]] = []
    hold, first_run = threading.Event(), [True]

    def embed(texts):
        if first_run[0] and len(answered) >= 3:
            hold.wait(30)  # the first run waits here for its fourth batch until it is killed
            return 503
        answered.append(texts)
        return _embed(texts)

    cache = tmp_path / "cache" / "embedding_responses.jsonl"
    texts = [f"passage {i}" for i in range(10)]
    env = {**os.environ, "TEACHER_KEY": key, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with OpenAIStub(embed=embed) as server:
        child = subprocess.Popen([sys.executable, "-c", _KILLED_API_RUN, server.url, str(cache)], env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (len(answered) < 3 or len(cache.read_text().splitlines()) < 6):
            time.sleep(0.05)
        child.kill()
        child.wait()
        hold.set()
        first_run[0] = False
        assert len(answered) == 3 and all(len(batch) == 2 for batch in answered)
        before = [t for batch in answered for t in batch]
        os.environ["TEACHER_KEY"] = key
        try:
            settings = LLMSettings(model="openai/teacher-embed", api_base=server.url, api_key_env="TEACHER_KEY")
            encoder = ApiEncoder(settings, cache, batch_size=2)
            vectors = encoder.encode_document(texts)
            again = ApiEncoder(settings, cache, batch_size=2).encode_document(texts)
        finally:
            del os.environ["TEACHER_KEY"]
        after = [t for batch in answered[3:] for t in batch]
        assert sorted(before + after) == sorted(texts) and not set(before) & set(after)  # nothing asked twice
        assert len(answered) == 5  # the rest in two more requests; the second encoder asked nothing
        assert np.allclose(again, vectors) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
        expected = np.asarray(_embed(["passage 7"])[0], dtype=np.float32)
        assert np.allclose(vectors[7], expected / np.linalg.norm(expected), atol=1e-6)
        assert set(server.authorizations) == {f"Bearer {key}"}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key not in path.read_text(errors="ignore"), path


def test_an_api_teacher_ranks_like_its_vectors_and_names_a_missing_key(tmp_path):
    chunks = _toy_chunks()
    with OpenAIStub(embed=_embed) as server:
        context = _context(tmp_path)
        context.api, context.api_cache = LLMSettings(api_base=server.url), tmp_path / "api.jsonl"
        teacher = build_teacher(parse_teacher("api:openai/teacher-embed"), context)
        teacher.index(chunks["passage"].tolist())
        top, scores = teacher.search(["Which enzyme breaks down lactose?"], k=3)
        query = np.asarray(_embed(["Which enzyme breaks down lactose?"])[0])
        vectors = np.asarray(_embed(chunks["passage"].tolist()))
        cosines = vectors @ query / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query)
        assert list(top[0]) == list(np.argsort(-cosines)[:3])
        assert np.allclose(scores[0], np.sort(cosines)[::-1][:3], atol=1e-5)
    context = _context(tmp_path)
    context.api, context.api_cache = LLMSettings(api_key_env="NO_SUCH_TEACHER_KEY"), tmp_path / "api.jsonl"
    from embed_pipeline.core.teachers import TeacherUnavailable

    with pytest.raises(TeacherUnavailable, match="NO_SUCH_TEACHER_KEY"):
        build_teacher(parse_teacher("api:openai/teacher-embed"), context)
