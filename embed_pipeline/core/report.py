"""The evaluation report: BM25, base and fine-tuned models on the held-out synthetic questions and,
when given, on real queries with human relevance labels."""

from __future__ import annotations

import logging
import time

import pandas as pd

from embed_pipeline.core.evaluation import (
    Qrels,
    bm25_search,
    collapse_to_documents,
    dense_search,
    markdown_table,
    retrieval_metrics,
)

log = logging.getLogger(__name__)

HEADLINE_METRICS = ["nDCG@10", "Recall@10", "MRR@10", "Recall@100"]
SYNTHETIC = "synthetic_test"
REAL = "real_queries"


def synthetic_test_set(questions: pd.DataFrame) -> tuple[dict[str, str], Qrels]:
    """Queries and chunk-level qrels from the held-out questions (every supporting chunk is relevant)."""
    test = questions[questions["split"] == "test"]
    queries = dict(zip(test["question_id"], test["question"], strict=True))
    qrels = {
        qid: {c: 1 for c in positives}
        for qid, positives in zip(test["question_id"], test["positive_chunk_ids"], strict=True)
    }
    return queries, qrels


def evaluate_systems(
    chunks: pd.DataFrame,
    query_sets: dict[str, tuple[dict[str, str], Qrels, bool]],
    models: dict[str, str],
    device: str = "cpu",
    top_k: int = 100,
    batch_size: int = 64,
    query_prompt: str | None = None,
    passage_prompt: str | None = None,
) -> dict:
    """Score BM25 and each model on each query set.

    `query_sets` maps a name to (queries, qrels, qrels_on_documents); document-level qrels are scored by
    each document's best chunk. `models` maps a system name to a model id or folder, each loaded with
    the given prompts (when set).
    Returns {"query_sets": {name: {"n_queries", "systems": {system: metrics}}}, "timings_s": {...}}.
    """
    from embed_pipeline.core.device import load_bi_encoder

    ids, passages = chunks["chunk_id"].tolist(), chunks["passage"].tolist()
    chunk_to_doc = dict(zip(chunks["chunk_id"], chunks["doc_id"], strict=True))
    report: dict = {
        "query_sets": {},
        "timings_s": {},
        "corpus": {"chunks": len(ids), "documents": int(chunks["doc_id"].nunique())},
    }

    # All query sets go through one search per system, so the corpus is encoded once per model.
    merged = {(name, qid): text for name, (queries, _, _) in query_sets.items() for qid, text in queries.items()}
    keys = {f"{i}": key for i, key in enumerate(merged)}

    def score(system: str, search) -> None:
        started = time.perf_counter()
        results = search({k: merged[key] for k, key in keys.items()})
        for name, (_, qrels, on_documents) in query_sets.items():
            own = {keys[k][1]: hits for k, hits in results.items() if keys[k][0] == name}
            if on_documents:
                own = collapse_to_documents(own, chunk_to_doc)
            entry = report["query_sets"].setdefault(name, {"n_queries": len(qrels), "systems": {}})
            entry["systems"][system] = retrieval_metrics(qrels, own)
        report["timings_s"][system] = round(time.perf_counter() - started, 1)
        log.info("%s scored in %.1f s", system, report["timings_s"][system])

    score("BM25", lambda queries: bm25_search(ids, passages, queries, top_k=top_k))
    for system, path in models.items():
        model = load_bi_encoder(path, device, query_prompt, passage_prompt)
        score(
            system, lambda queries, m=model: dense_search(m, ids, passages, queries, top_k=top_k, batch_size=batch_size)
        )
        del model
    return report


def report_markdown(report: dict, metrics: list[str] = HEADLINE_METRICS) -> str:
    """One table per query set, systems as rows."""
    parts = []
    for name, entry in report["query_sets"].items():
        parts.append(f"**{name}** ({entry['n_queries']} queries)\n\n{markdown_table(entry['systems'], metrics)}")
    return "\n\n".join(parts)
