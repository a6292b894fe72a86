"""Quality filters for synthetic questions that need no LLM: lexical overlap, complexity, round-trip
consistency and near-duplicates.

Each filter returns the questions it keeps and a frame of the ones it dropped with a reason, so the
asset can report how many each filter removed, with examples.
"""

from __future__ import annotations

import logging
from typing import Literal

import pandas as pd

from embed_pipeline.core.evaluation import bm25_search, dense_search
from embed_pipeline.core.settings import GENERATION

log = logging.getLogger(__name__)

DROPPED_COLUMNS = ["question_id", "question", "filter", "reason"]


def _dropped(questions: pd.DataFrame, mask: pd.Series, name: str, reasons: pd.Series) -> pd.DataFrame:
    out = questions.loc[mask, ["question_id", "question"]].copy()
    out["filter"], out["reason"] = name, reasons[mask]
    return out[DROPPED_COLUMNS]


def roundtrip_filter(
    questions: pd.DataFrame,
    chunks: pd.DataFrame,
    top_k: int = 10,
    method: Literal["bm25", "base", "either"] = "bm25",
    model=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep a question only if one of its positive chunks ranks in the top `top_k` for it.

    A question its own passage cannot retrieve is usually too generic ("What is the purpose of the
    study?") or not answered by the passage. `method="base"` ranks with `model` (the base bi-encoder)
    instead of BM25; "either" keeps a question that BM25 or the base model finds, so the kept questions
    (and the validation questions among them) favour neither retriever.
    """
    if questions.empty:
        return questions, pd.DataFrame(columns=DROPPED_COLUMNS)
    queries = dict(zip(questions["question_id"], questions["question"], strict=True))
    ids, passages = chunks["chunk_id"].tolist(), chunks["passage"].tolist()
    if method not in ("bm25", "base", "either"):
        raise ValueError(f"roundtrip method must be 'bm25', 'base' or 'either', got {method!r}")
    if method != "bm25" and model is None:
        raise ValueError(f"roundtrip method {method!r} needs the base model")
    runs = []
    if method in ("bm25", "either"):
        runs.append(bm25_search(ids, passages, queries, top_k=top_k))
    if method in ("base", "either"):
        runs.append(dense_search(model, ids, passages, queries, top_k=top_k))

    def rank(qid: str, positives) -> int | None:
        hits = [
            i
            for results in runs
            for i, (cid, _) in enumerate(sorted(results.get(qid, {}).items(), key=lambda kv: -kv[1]), 1)
            if cid in set(positives)
        ]
        return min(hits) if hits else None

    ranks = pd.Series(
        [rank(q, p) for q, p in zip(questions["question_id"], questions["positive_chunk_ids"], strict=True)],
        index=questions.index,
        dtype="object",
    )
    failed = ranks.isna()
    reasons = pd.Series(f"source passage not in the {method} top {top_k}", index=questions.index)
    return questions[~failed], _dropped(questions, failed, "roundtrip", reasons)


def near_duplicate_filter(questions: pd.DataFrame, model, threshold: float = 0.9) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop a question whose cosine similarity to an earlier kept question exceeds `threshold`."""
    from sentence_transformers.util import paraphrase_mining_embeddings

    if len(questions) < 2:
        return questions, pd.DataFrame(columns=DROPPED_COLUMNS)
    embeddings = model.encode_query(questions["question"].tolist(), convert_to_tensor=True, normalize_embeddings=True)
    pairs = paraphrase_mining_embeddings(embeddings, top_k=10, max_pairs=len(questions) * 10)
    dropped: dict[int, str] = {}
    for score, i, j in sorted((p for p in pairs if p[0] > threshold), key=lambda p: (min(p[1], p[2]), max(p[1], p[2]))):
        first, later = sorted((i, j))
        if first not in dropped and later not in dropped:
            dropped[later] = f"cosine {score:.3f} to: {questions['question'].iloc[first]}"
    mask = pd.Series([i in dropped for i in range(len(questions))], index=questions.index)
    reasons = pd.Series([dropped.get(i, "") for i in range(len(questions))], index=questions.index)
    return questions[~mask], _dropped(questions, mask, "near_duplicate", reasons)


def overlap_filter(questions: pd.DataFrame, max_overlap: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop the most copy-like queries: those whose `overlap` (share of content words found in their passage)
    exceeds `max_overlap`. Real users' queries reuse few of a passage's words."""
    high = questions["overlap"] > max_overlap
    reasons = "overlap " + questions["overlap"].round(2).astype(str) + f" > {max_overlap}"
    return questions[~high], _dropped(questions, high, "overlap", reasons)


def complexity_filter(questions: pd.DataFrame, min_complexity: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop questions whose complexity (1-5, stated by the model or estimated) is below `min_complexity`."""
    low = questions["complexity"] < min_complexity
    reasons = "complexity " + questions["complexity"].astype(str) + f" < {min_complexity}"
    return questions[~low], _dropped(questions, low, "complexity", reasons)


def filter_questions(
    questions: pd.DataFrame,
    chunks: pd.DataFrame,
    model,
    roundtrip: Literal["bm25", "base", "either", "none"] = GENERATION.roundtrip,
    roundtrip_top_k: int = GENERATION.roundtrip_top_k,
    dedup_threshold: float | None = GENERATION.dedup_threshold,
    min_complexity: int = GENERATION.min_complexity,
    max_overlap: float | None = GENERATION.max_overlap,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the overlap, complexity, round-trip and near-duplicate filters in that order; returns (kept,
    dropped with filter and reason)."""
    dropped = []
    if max_overlap is not None:
        questions, out = overlap_filter(questions, max_overlap)
        dropped.append(out)
    if min_complexity > 1:
        questions, out = complexity_filter(questions, min_complexity)
        dropped.append(out)
    if roundtrip != "none":
        questions, out = roundtrip_filter(questions, chunks, top_k=roundtrip_top_k, method=roundtrip, model=model)
        dropped.append(out)
    if dedup_threshold is not None:
        questions, out = near_duplicate_filter(questions, model, threshold=dedup_threshold)
        dropped.append(out)
    frames = [d for d in dropped if not d.empty]
    return questions, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DROPPED_COLUMNS)
