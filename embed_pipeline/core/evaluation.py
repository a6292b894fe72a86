"""Retrieval evaluation: BEIR metrics, BM25 and dense baselines, BEIR query loading, report tables.

Metrics come from BEIR (pytrec_eval underneath), BM25 from ``bm25s``, dense top-k from ``faiss``;
nothing here re-implements a metric.

Example::

    queries, qrels = load_beir_queries("data/scifact", split="test")
    results = dense_search(model, corpus_ids, corpus_texts, queries, top_k=100)
    metrics = retrieval_metrics(qrels, results)  # {"nDCG@10": 0.6451, ..., "MRR@10": ...}
    print(markdown_table({"base": metrics}, ["nDCG@10", "Recall@100"]))
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import bm25s
import faiss
import numpy as np
import Stemmer
from beir.retrieval.evaluation import EvaluateRetrieval

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "KS",
    "METRIC_NAMES",
    "Qrels",
    "Results",
    "bm25_scorer",
    "bm25_search",
    "choose_fusion_weight",
    "collapse_to_documents",
    "dense_search",
    "drop_identical_ids",
    "fusion_on_validation",
    "judgment_coverage",
    "judgments_note",
    "saved_fusion",
    "load_beir_queries",
    "markdown_table",
    "per_query_scores",
    "reciprocal_rank_fusion",
    "retrieval_metrics",
    "score_fusion",
]

# bm25s pins its logger to DEBUG at import; hand the level back to the application's config.
logging.getLogger("bm25s").setLevel(logging.NOTSET)

KS = (1, 5, 10, 100)
METRIC_NAMES = [f"{m}@{k}" for m in ("nDCG", "Recall", "MAP", "P") for k in KS] + ["MRR@10"]
"""Every metric `retrieval_metrics` reports with the default cut-offs."""

Qrels = dict[str, dict[str, int]]
"""query id -> {document id: graded relevance}; relevance > 0 means relevant."""
Results = dict[str, dict[str, float]]
"""query id -> {document id: score}; higher is better."""

_QRELS_HEADER = ["query-id", "corpus-id", "score"]
_QRELS_FORMAT = "query-id<TAB>corpus-id<TAB>score"
_QUERY_HINT = "each line must be a JSON object with non-empty string fields '_id' and 'text'"


def drop_identical_ids(results: Results) -> Results:
    """``results`` without any document whose id equals its query's id, as BEIR and MTEB score collections
    whose queries are themselves documents (ArguAna: a query argument retrieves itself first)."""
    return {qid: {doc: s for doc, s in hits.items() if doc != qid} for qid, hits in results.items()}


def retrieval_metrics(
    qrels: Qrels, results: Results, ks: tuple[int, ...] = KS, ignore_identical_ids: bool = False
) -> dict[str, float]:
    """Score ``results`` against ``qrels``: ``nDCG@k``, ``Recall@k``, ``MAP@k``, ``P@k`` and ``MRR@10``.

    Averages run over every query in ``qrels``; a query with no results counts as 0 (pytrec_eval
    silently drops queries absent from the run, so they are added with an empty ranking). Queries
    not in ``qrels`` are ignored. nDCG uses the graded relevance as a linear gain. With
    ``ignore_identical_ids``, a retrieved document whose id is the query's id is left out (`drop_identical_ids`).
    """
    if not qrels:
        raise ValueError("qrels is empty: there is no query to evaluate")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    if ignore_identical_ids:
        results = drop_identical_ids(results)
    # pytrec_eval rejects numpy scores; also copy so BEIR never touches the caller's dicts.
    run = {qid: {doc: float(s) for doc, s in results.get(qid, {}).items()} for qid in qrels}
    k_values = sorted(set(ks))
    ndcg, _map, recall, precision = EvaluateRetrieval.evaluate(qrels, run, k_values, ignore_identical_ids=False)
    mrr = EvaluateRetrieval.evaluate_custom(qrels, run, [10], metric="mrr")
    metrics: dict[str, float] = {}
    for k in k_values:
        metrics[f"nDCG@{k}"] = ndcg[f"NDCG@{k}"]
        metrics[f"Recall@{k}"] = recall[f"Recall@{k}"]
        metrics[f"MAP@{k}"] = _map[f"MAP@{k}"]
        metrics[f"P@{k}"] = precision[f"P@{k}"]
    metrics["MRR@10"] = mrr["MRR@10"]
    return metrics


PER_QUERY_MEASURES = {"nDCG": "ndcg_cut", "Recall": "recall", "P": "P", "MAP": "map_cut", "MRR": "recip_rank"}
"""The reported metrics scored per query, by their pytrec_eval measures (MRR@k: reciprocal rank in the top k)."""


def per_query_scores(
    qrels: Qrels, results: Results, metric: str = "nDCG@10", ignore_identical_ids: bool = False
) -> dict[str, float]:
    """``metric`` (e.g. nDCG@10, Recall@100, MRR@10) of each query in ``qrels`` (pytrec_eval, as
    `retrieval_metrics` averages them); a query without results scores 0."""
    import pytrec_eval

    name, _, cut = metric.partition("@")
    if name not in PER_QUERY_MEASURES or not cut.isdigit():
        raise ValueError(f"metric {metric!r} is not one of {list(PER_QUERY_MEASURES)} @k")
    k, measure = int(cut), PER_QUERY_MEASURES[name]
    if ignore_identical_ids:
        results = drop_identical_ids(results)
    run = {}
    for qid in qrels:
        ranked = sorted(((doc, float(s)) for doc, s in results.get(qid, {}).items()), key=lambda item: -item[1])
        run[qid] = dict(ranked[:k] if measure == "recip_rank" else ranked) or {"\0none": 0.0}
    requested = measure if measure == "recip_rank" else f"{measure}.{k}"  # recip_rank: the run is cut to k
    scores = pytrec_eval.RelevanceEvaluator(qrels, {requested}).evaluate(run)
    return {qid: scores.get(qid, {}).get(requested.replace(".", "_"), 0.0) for qid in qrels}


def reciprocal_rank_fusion(runs: list[Results], k: int = 60, top_k: int = 100) -> Results:
    """Fuse rankings by reciprocal rank (Cormack et al., 2009): score(d) = sum over runs of 1 / (k + rank)."""
    fused: Results = {}
    for qid in set().union(*runs):
        scores: dict[str, float] = {}
        for run in runs:
            ranked = sorted(run.get(qid, {}).items(), key=lambda item: -item[1])
            for rank, (doc, _) in enumerate(ranked, start=1):
                scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
        fused[qid] = dict(sorted(scores.items(), key=lambda item: -item[1])[:top_k])
    return fused


def score_fusion(runs: list[Results], weights: list[float], top_k: int = 100) -> Results:
    """Fuse rankings by a weighted sum of min-max normalised scores (the convex combination of Bruch et al.,
    2023, which beats RRF once its weight is tuned): each run's scores for a query are scaled to [0, 1] over
    the documents it returned, and a document a run did not return gets 0 from it."""
    if len(runs) != len(weights):
        raise ValueError(f"{len(runs)} runs but {len(weights)} weights")
    fused: Results = {}
    for qid in set().union(*runs):
        scores: dict[str, float] = {}
        for run, weight in zip(runs, weights, strict=True):
            hits = run.get(qid, {})
            if not hits or weight == 0:
                continue
            low, high = min(hits.values()), max(hits.values())
            for doc, score in hits.items():
                normalised = (score - low) / (high - low) if high > low else 1.0
                scores[doc] = scores.get(doc, 0.0) + weight * normalised
        fused[qid] = dict(sorted(scores.items(), key=lambda item: -item[1])[:top_k])
    return fused


FUSION_GRID = tuple(round(0.1 * i, 1) for i in range(11))
"""BM25 weights `choose_fusion_weight` tries (the dense run gets 1 - weight)."""


def choose_fusion_weight(
    bm25: Results, dense: Results, qrels: Qrels, grid: tuple[float, ...] = FUSION_GRID
) -> tuple[float, dict[float, float]]:
    """The BM25 weight of `score_fusion` (dense gets 1 - weight) with the best nDCG@10 on ``qrels``, meant to be
    validation questions, never the test queries. Returns (weight, nDCG@10 of each weight tried); ties go
    to the weight closest to an even mix."""
    tried = {w: retrieval_metrics(qrels, score_fusion([bm25, dense], [w, 1 - w]), ks=(10,))["nDCG@10"] for w in grid}
    best = max(tried, key=lambda w: (round(tried[w], 6), -abs(w - 0.5)))
    return best, tried


def fusion_on_validation(
    model: SentenceTransformer,
    queries: dict[str, str],
    corpus: dict[str, str],
    relevant: dict[str, set[str]],
    batch_size: int = 64,
) -> dict:
    """The hybrid of BM25 and `model` for a collection: the BM25 weight chosen on validation questions
    (`choose_fusion_weight`), with the nDCG@10 of every weight tried, BM25's and the model's alone."""
    ids, texts = list(corpus), list(corpus.values())
    qrels = {q: dict.fromkeys(docs, 1) for q, docs in relevant.items()}
    bm25 = bm25_search(ids, texts, queries)
    dense = dense_search(model, ids, texts, queries, batch_size=batch_size)
    weight, tried = choose_fusion_weight(bm25, dense, qrels)
    return {
        "method": "min-max normalised score fusion",
        "bm25_weight": weight,
        "validation_ndcg@10": round(tried[weight], 4),
        "validation_ndcg@10_by_weight": {f"{w:.1f}": round(v, 4) for w, v in tried.items()},
        "validation_questions": len(queries),
    }


FUSION_FILE = "fusion.json"
"""The fine-tuned model's hybrid setting, saved in its folder (and copied into an ONNX export's export.json)."""


def saved_fusion(model: str | Path) -> dict | None:
    """The hybrid setting saved with a model folder (`FUSION_FILE`) or an ONNX export (`export.json`'s
    "hybrid"), or None (a hub id, an endpoint, a model trained without validation questions)."""
    folder = Path(model)
    for name, key in ((FUSION_FILE, None), ("export.json", "hybrid")):
        path = folder / name
        if path.is_file():
            info = json.loads(path.read_text(encoding="utf-8"))
            return info.get(key) if key else info
    return None


def bm25_scorer(corpus: list[str]):
    """A function from queries to their BM25 score of every passage (a queries x passages matrix), with the
    tokenisation `bm25_search` uses (English stopwords, Snowball stemmer)."""
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(corpus, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)

    def scores(queries: list[str]) -> np.ndarray:
        tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
        return np.stack([retriever.get_scores(query) for query in tokens]).astype(np.float32)

    return scores


def bm25_search(corpus_ids: list[str], corpus_texts: list[str], queries: dict[str, str], top_k: int = 100) -> Results:
    """Rank the corpus for each query with BM25 (English stopwords, Snowball stemmer).

    Documents sharing no term with a query score 0 and are left out rather than listed in
    arbitrary order.
    """
    _check_corpus(corpus_ids, corpus_texts)
    if not queries:
        return {}
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(corpus_texts, stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    query_tokens = bm25s.tokenize(
        list(queries.values()), stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
    )
    docs, scores = retriever.retrieve(query_tokens, k=min(top_k, len(corpus_ids)), show_progress=False)
    results: Results = {}
    for qid, row_docs, row_scores in zip(queries, docs, scores, strict=True):
        results[qid] = {corpus_ids[d]: float(s) for d, s in zip(row_docs, row_scores, strict=True) if s > 0}
    return results


def dense_search(
    model: SentenceTransformer,
    corpus_ids: list[str],
    corpus_texts: list[str],
    queries: dict[str, str],
    top_k: int = 100,
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> Results:
    """Rank the corpus for each query by cosine similarity of ``model`` embeddings (exact faiss search).

    Queries go through ``encode_query`` and passages through ``encode_document``, so the model's
    "query" / "document" prompts (see ``load_bi_encoder``) are applied. Uses every visible GPU when faiss
    has GPU support, else the CPU.
    """
    _check_corpus(corpus_ids, corpus_texts)
    if not queries:
        return {}
    encode = {
        "batch_size": batch_size,
        "normalize_embeddings": True,
        "convert_to_numpy": True,
        "show_progress_bar": show_progress_bar,
    }
    doc_emb = model.encode_document(corpus_texts, **encode)
    query_emb = model.encode_query(list(queries.values()), **encode)
    doc_emb = np.ascontiguousarray(doc_emb, dtype=np.float32)
    query_emb = np.ascontiguousarray(query_emb, dtype=np.float32)

    index = faiss.IndexFlatIP(doc_emb.shape[1])
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(doc_emb)
    scores, idx = index.search(query_emb, min(top_k, len(corpus_ids)))
    return {
        qid: {corpus_ids[i]: float(s) for i, s in zip(row_idx, row_scores, strict=True) if i >= 0}
        for qid, row_idx, row_scores in zip(queries, idx, scores, strict=True)
    }


def collapse_to_documents(results: Results, chunk_to_doc: dict[str, str]) -> Results:
    """Turn chunk-level results into document-level ones, scoring each document by its best chunk.

    Needed when the index holds chunks but the qrels (e.g. real BEIR labels) name documents.
    Each query's documents come out sorted by score, best first.
    """
    collapsed: Results = {}
    for qid, hits in results.items():
        best: dict[str, float] = {}
        for chunk_id, score in hits.items():
            try:
                doc_id = chunk_to_doc[chunk_id]
            except KeyError:
                raise ValueError(f"chunk id {chunk_id!r} (query {qid!r}) is missing from chunk_to_doc") from None
            if doc_id not in best or score > best[doc_id]:
                best[doc_id] = score
        collapsed[qid] = dict(sorted(best.items(), key=lambda item: item[1], reverse=True))
    return collapsed


def load_beir_queries(beir_dir: str | Path, split: str = "test") -> tuple[dict[str, str], Qrels]:
    """Read a BEIR folder's ``queries.jsonl`` and ``qrels/{split}.tsv``; return (queries, qrels).

    Ids stay opaque strings (``a.b/c:1`` survives). Only queries named in the qrels are returned.
    Every malformed input raises ``ValueError`` naming the file and line.
    """
    folder = Path(beir_dir)
    if not folder.is_dir():
        raise ValueError(f"BEIR folder {folder} does not exist")
    queries_path = folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for path in (queries_path, qrels_path):
        if not path.is_file():
            raise ValueError(f"{path} does not exist (a BEIR folder needs queries.jsonl and qrels/{split}.tsv)")

    all_queries = _read_queries(queries_path)
    qrels: Qrels = {}
    with qrels_path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if lineno == 1:
                if line.split("\t") != _QRELS_HEADER:
                    raise ValueError(f"{qrels_path}:1: expected the header {_QRELS_FORMAT!r}, got {line!r}")
                continue
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 3 or not fields[0] or not fields[1]:
                raise ValueError(f"{qrels_path}:{lineno}: expected {_QRELS_FORMAT!r}, got {line!r}")
            qid, doc_id, raw_score = fields
            try:
                score = int(raw_score)
            except ValueError:
                raise ValueError(f"{qrels_path}:{lineno}: score must be an integer, got {raw_score!r}") from None
            if qid not in all_queries:
                raise ValueError(f"{qrels_path}:{lineno}: query {qid!r} is not in {queries_path}")
            qrels.setdefault(qid, {})[doc_id] = score
    if not qrels:
        raise ValueError(f"{qrels_path} has no judgements")
    return {qid: all_queries[qid] for qid in qrels}, qrels


def judgment_coverage(beir_dir: str | Path, qrels: Qrels, documents: set[str], split: str = "test") -> dict:
    """What of a BEIR folder's judgments cannot be scored, so it is reported rather than silently scored as
    misses: judgments naming a document that is not in ``documents`` (relevant but never retrievable) and
    queries of ``queries.jsonl`` without any judgment (left out of the scores), each with a few example ids.
    ValueError naming the qrels file when no relevant judgment names a known document: every system would
    score 0, so the qrels and the corpus do not belong together."""
    qrels_path = Path(beir_dir, "qrels", f"{split}.tsv")
    unknown = {doc for judged in qrels.values() for doc in judged} - documents
    relevant = [doc for judged in qrels.values() for doc, grade in judged.items() if grade > 0]
    if not relevant:
        raise ValueError(f"{qrels_path}: no judgment marks a document relevant (score > 0): nothing can be scored")
    if not any(doc in documents for doc in relevant):
        raise ValueError(
            f"{qrels_path}: none of its {len(relevant)} relevant judgments names a document of the corpus (judged "
            f"e.g. {', '.join(sorted(set(relevant))[:3])}; corpus ids e.g. {', '.join(sorted(documents)[:3])}): "
            "check that the qrels and corpus.jsonl belong to the same collection"
        )
    unjudged = sorted(set(_read_queries(Path(beir_dir, "queries.jsonl"))) - set(qrels))
    return {
        "qrels": str(qrels_path),
        "judgments": sum(len(judged) for judged in qrels.values()),
        "unknown_document_judgments": sum(doc in unknown for judged in qrels.values() for doc in judged),
        "unknown_documents": len(unknown),
        "unknown_document_examples": sorted(unknown)[:5],
        "queries_without_judgments": len(unjudged),
        "unjudged_query_examples": unjudged[:5],
    }


def judgments_note(coverage: dict) -> str:
    """One line on what `judgment_coverage` found, or "" when every judgment can be scored."""
    notes = []
    if coverage["unknown_document_judgments"]:
        notes.append(
            f"{coverage['unknown_document_judgments']} of {coverage['judgments']} judgments name "
            f"{coverage['unknown_documents']} documents that are not in the corpus (e.g. "
            f"{', '.join(coverage['unknown_document_examples'])}): they count as relevant but are never retrieved"
        )
    if coverage["queries_without_judgments"]:
        notes.append(
            f"{coverage['queries_without_judgments']} queries of queries.jsonl have no judgment in this file and "
            f"are not scored (e.g. {', '.join(coverage['unjudged_query_examples'])})"
        )
    return f"{coverage['qrels']}: " + "; ".join(notes) if notes else ""


def markdown_table(rows: dict[str, dict[str, float]], metrics: list[str]) -> str:
    """Render ``{system: {metric: value}}`` as a GitHub-markdown table with 4 decimals.

    A metric a system lacks is shown as ``-``.
    """
    lines = [
        "| system | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for name, values in rows.items():
        cells = [f"{values[m]:.4f}" if m in values else "-" for m in metrics]
        escaped = name.replace("|", r"\|")
        lines.append(f"| {escaped} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _check_corpus(corpus_ids: list[str], corpus_texts: list[str]) -> None:
    if len(corpus_ids) != len(corpus_texts):
        raise ValueError(f"corpus_ids has {len(corpus_ids)} entries but corpus_texts has {len(corpus_texts)}")
    if not corpus_ids:
        raise ValueError("the corpus is empty")


def _read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            fields = record if isinstance(record, dict) else {}
            qid, text = fields.get("_id"), fields.get("text")
            if not isinstance(qid, str) or not qid:
                raise ValueError(f"{path}:{lineno}: {_QUERY_HINT}; '_id' is missing or not a string")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}:{lineno}: {_QUERY_HINT}; 'text' is missing or empty")
            if qid in queries:
                raise ValueError(f"{path}:{lineno}: duplicate query id {qid!r}")
            queries[qid] = text
    return queries
