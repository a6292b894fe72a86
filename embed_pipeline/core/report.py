"""The evaluation report: BM25, base and fine-tuned models on the held-out synthetic questions and,
when given, on real queries with human relevance labels."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from embed_pipeline.core.atomic import write_atomically
from embed_pipeline.core.encoders import ENDPOINT_TIMEOUT_S
from embed_pipeline.core.evaluation import (
    Qrels,
    Results,
    bm25_search,
    collapse_to_documents,
    dense_search,
    drop_identical_ids,
    judgment_coverage,
    judgments_note,
    load_beir_queries,
    markdown_table,
    per_query_scores,
    reciprocal_rank_fusion,
    retrieval_metrics,
    score_fusion,
)
from embed_pipeline.core.realism import realism_markdown
from embed_pipeline.core.settings import EVALUATION, ChunkingSettings

log = logging.getLogger(__name__)

HEADLINE_METRICS = ["nDCG@10", "Recall@10", "MRR@10", "Recall@100"]
REPORT_SCHEMA_VERSION = 1  # bumped whenever a key of the report JSON changes meaning or disappears
SYNTHETIC = "synthetic_test"
REAL = "real_queries"


def synthetic_test_set(questions: pd.DataFrame, splits: tuple[str, ...] = ("test",)) -> tuple[dict[str, str], Qrels]:
    """Queries and chunk-level qrels from the held-out questions of `splits` (every supporting chunk is relevant)."""
    test = questions[questions["split"].isin(splits)]
    queries = dict(zip(test["question_id"], test["question"], strict=True))
    qrels = {
        qid: {c: 1 for c in positives}
        for qid, positives in zip(test["question_id"], test["positive_chunk_ids"], strict=True)
    }
    return queries, qrels


def real_query_set(beir_dir: str | Path, seeds: list | None = None) -> tuple[dict[str, str], Qrels, list[str]]:
    """A BEIR folder's test queries and qrels, less the seed queries (`query_examples`: they shaped the training
    queries, so scoring them would flatter the model): (queries, qrels, excluded seed ids)."""
    from embed_pipeline.core.query_examples import without_seeds

    queries, qrels = load_beir_queries(beir_dir)
    queries, excluded = without_seeds(queries, seeds or [])
    return queries, {q: rel for q, rel in qrels.items() if q in queries}, excluded


def export_check_queries(
    questions: pd.DataFrame, beir_dir: str | Path | None, seeds: list | None = None
) -> tuple[str, tuple[dict[str, str], Qrels, bool]]:
    """The queries an export's retrieval is checked on, as many as there are: the real queries when given,
    else every held-out synthetic question (test and validation). (name, (queries, qrels, qrels on documents))."""
    if beir_dir:
        queries, qrels, _ = real_query_set(beir_dir, seeds)
        return REAL, (queries, qrels, True)
    queries, qrels = synthetic_test_set(questions, ("test", "validation"))
    return "synthetic_test_and_validation", (queries, qrels, False)


def evaluate_systems(
    chunks: pd.DataFrame,
    query_sets: dict[str, tuple[dict[str, str], Qrels, bool]],
    models: dict[str, str],
    device: str = "cpu",
    top_k: int = EVALUATION.top_k,
    batch_size: int = EVALUATION.batch_size,
    query_prompt: str | None = None,
    passage_prompt: str | None = None,
    api_key_env: str | None = None,
    endpoint_timeout_s: float = ENDPOINT_TIMEOUT_S,
    truncate_dims: dict[str, int] | None = None,
    hybrids: dict[str, tuple[str, float]] | None = None,
    ignore_identical_ids: bool | None = None,
    document_caches: dict[str, str | Path] | None = None,
    searchers: dict[str, Callable[[dict[str, str]], Results]] | None = None,
) -> dict:
    """Score BM25 and each model on each query set.

    `query_sets` maps a name to (queries, qrels, qrels_on_documents); document-level qrels are scored by
    each document's best chunk. `models` maps a system name to a model id or folder, an ONNX export or an
    endpoint URL (see `load_encoder`), each used with the given prompts (when set); `truncate_dims` maps a
    system to the Matryoshka size its embeddings are cut to. The RRF row fuses BM25 with the first model
    that is not "base"; `hybrids` adds rows fusing BM25 with a model by `score_fusion`, {row: (model system,
    BM25 weight)}, the weight chosen on validation questions. `ignore_identical_ids` leaves out a retrieved
    document whose id is the query's id (BEIR's rule); None: on for a document-level query set whose query ids
    are also document ids (ArguAna), stated per query set in the report. `document_caches` maps a system to the
    folder of its `CachedDocuments` (passages encoded by an earlier stage are not encoded again). `searchers`
    adds systems that rank the chunks themselves, {row: search(queries) -> chunk-level Results} (the teacher).
    Returns {"query_sets": {name: {"n_queries", "systems": {system: metrics}}}, "timings_s": {...}}.
    """
    from embed_pipeline.core.encoders import CachedDocuments, load_encoder

    ids, passages = chunks["chunk_id"].tolist(), chunks["passage"].tolist()
    chunk_to_doc = dict(zip(chunks["chunk_id"], chunks["doc_id"], strict=True))
    report: dict = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "query_sets": {},
        "timings_s": {},
        "corpus": {"chunks": len(ids), "documents": int(chunks["doc_id"].nunique())},
    }

    # All query sets go through one search per system, so the corpus is encoded once per model.
    merged = {(name, qid): text for name, (queries, _, _) in query_sets.items() for qid, text in queries.items()}
    keys = {f"{i}": key for i, key in enumerate(merged)}

    runs: dict[str, Results] = {}  # chunk-level results of each system, merged query keys
    per_query: dict[str, dict[str, dict[str, dict[str, float]]]] = {}  # set -> system -> metric -> query -> score
    ranked: dict[str, dict[str, Results]] = {}  # query set -> system -> its scored ranking
    documents = set(chunk_to_doc.values())
    for name, (queries, qrels, on_documents) in query_sets.items():
        shared = sum(qid in documents for qid in queries) if on_documents else 0
        ignore = bool(shared) if ignore_identical_ids is None else ignore_identical_ids
        report["query_sets"][name] = {
            "n_queries": len(qrels),
            "systems": {},
            "ignore_identical_ids": ignore,
            "query_ids_also_document_ids": shared,
        }

    def score(system: str, search) -> None:
        started = time.perf_counter()
        runs[system] = search({k: merged[key] for k, key in keys.items()})
        for name, (_, qrels, on_documents) in query_sets.items():
            own = {keys[k][1]: hits for k, hits in runs[system].items() if keys[k][0] == name}
            if on_documents:
                own = collapse_to_documents(own, chunk_to_doc)
            entry = report["query_sets"][name]
            ignore = entry["ignore_identical_ids"]
            entry["systems"][system] = retrieval_metrics(qrels, own, ignore_identical_ids=ignore)
            per_query.setdefault(name, {})[system] = {
                metric: per_query_scores(qrels, own, metric, ignore_identical_ids=ignore) for metric in HEADLINE_METRICS
            }
            ranked.setdefault(name, {})[system] = own
        report["timings_s"][system] = round(time.perf_counter() - started, 1)
        log.info("%s scored in %.1f s", system, report["timings_s"][system])

    score("BM25", lambda queries: bm25_search(ids, passages, queries, top_k=top_k))
    for system, path in models.items():
        model = load_encoder(
            path,
            device,
            query_prompt,
            passage_prompt,
            api_key_env,
            (truncate_dims or {}).get(system),
            endpoint_timeout_s,
        )
        if system in (document_caches or {}):
            model = CachedDocuments(model, document_caches[system])
        score(
            system, lambda queries, m=model: dense_search(m, ids, passages, queries, top_k=top_k, batch_size=batch_size)
        )
        del model
    for system, search in (searchers or {}).items():
        score(system, search)
    tuned = [s for s in models if s != "base"]
    if tuned:
        hybrid = f"hybrid (RRF: BM25 + {tuned[0]})"
        score(hybrid, lambda _: reciprocal_rank_fusion([runs["BM25"], runs[tuned[0]]], top_k=top_k))
    for row, (system, weight) in (hybrids or {}).items():
        score(row, lambda _, s=system, w=weight: score_fusion([runs["BM25"], runs[s]], [w, 1 - w], top_k=top_k))
        report.setdefault("hybrid_weights", {})[row] = {"model": system, "bm25_weight": weight}
    if "base" in models:
        text_of = {**dict(zip(ids, passages, strict=True)), **chunks.groupby("doc_id")["passage"].first().to_dict()}
        for name, systems in per_query.items():
            report["query_sets"][name]["vs_base"] = {
                system: paired_comparison(systems["base"]["nDCG@10"], systems[system]["nDCG@10"])
                for system in systems
                if system != "base"
            }
            if tuned:
                report["query_sets"][name]["fine_tuned_minus_base"] = {
                    metric: paired_comparison(systems["base"][metric], systems[tuned[0]][metric], metric=metric)
                    for metric in HEADLINE_METRICS
                }
                queries, qrels, _ = query_sets[name]
                base, other = ranked[name]["base"], ranked[name][tuned[0]]
                if report["query_sets"][name]["ignore_identical_ids"]:
                    base, other = drop_identical_ids(base), drop_identical_ids(other)
                report["query_sets"][name]["largest_losses"] = largest_losses(queries, qrels, base, other, text_of)
    return report


def largest_losses(
    queries: dict[str, str],
    qrels: Qrels,
    base: Results,
    tuned: Results,
    text_of: dict[str, str],
    n: int = 5,
    shown: int = 3,
) -> list[dict]:
    """Failure analysis: the `n` queries whose nDCG@10 dropped most from base to the fine-tuned model,
    each with the relevant ids and both models' top `shown` hits (id, relevant or not, start of its text)."""
    base_ndcg, tuned_ndcg = per_query_scores(qrels, base), per_query_scores(qrels, tuned)
    lost = sorted((q for q in qrels if tuned_ndcg[q] < base_ndcg[q]), key=lambda q: tuned_ndcg[q] - base_ndcg[q])

    def top(run: Results, q: str) -> list[dict]:
        hits = sorted(run.get(q, {}).items(), key=lambda item: -item[1])[:shown]
        return [{"id": d, "relevant": qrels[q].get(d, 0) > 0, "text": text_of.get(d, "")[:200]} for d, _ in hits]

    return [
        {
            "query_id": q,
            "query": queries[q],
            "base_ndcg@10": round(base_ndcg[q], 4),
            "fine_tuned_ndcg@10": round(tuned_ndcg[q], 4),
            "relevant": sorted(d for d, grade in qrels[q].items() if grade > 0),
            "base_top": top(base, q),
            "fine_tuned_top": top(tuned, q),
        }
        for q in lost[:n]
    ]


def evaluate_on_beir(
    beir_dir: str | Path,
    models: dict[str, str],
    tokenizer,
    chunking: ChunkingSettings = ChunkingSettings(),
    split: str = "test",
    **options,
):
    """Score `models` on a BEIR folder the way real queries are scored in the pipeline: its documents
    chunked (`chunk_documents` with `tokenizer` and the `chunking` settings), each document ranked by its
    best chunk, BM25 and the hybrid beside. `options` go to `evaluate_systems`. Errors name the folder; what of
    the judgments cannot be scored is under the query set's "judgments" (`judgment_coverage`)."""
    from embed_pipeline.core.chunking import chunk_documents
    from embed_pipeline.core.documents import load_documents

    corpus = Path(beir_dir, "corpus.jsonl")
    if not corpus.is_file():
        raise ValueError(f"BEIR folder {beir_dir} has no corpus.jsonl")
    queries, qrels = load_beir_queries(beir_dir, split)
    documents = load_documents(corpus).documents
    coverage = judgment_coverage(beir_dir, qrels, set(documents["doc_id"]), split)
    chunks = chunk_documents(documents, tokenizer, chunking)
    report = evaluate_systems(chunks, {REAL: (queries, qrels, True)}, models, **options)
    report["query_sets"][REAL]["judgments"] = coverage
    report["beir"], report["split"] = str(Path(beir_dir).resolve()), split
    return report


def paired_comparison(base: dict[str, float], other: dict[str, float], seed: int = 42, metric: str = "nDCG@10") -> dict:
    """Per-query `metric` of a system against base: mean difference, relative change, a 95% bootstrap
    confidence interval of the difference (10,000 resamples of the queries), the Wilcoxon signed-rank
    p-value, and wins/losses/ties. An interval that contains 0 means no demonstrated difference."""
    import numpy as np
    from scipy import stats

    deltas = np.array([other[q] - base[q] for q in base])
    mean_base = float(np.mean(list(base.values())))
    result = {
        "metric": metric,
        "delta": round(float(deltas.mean()), 4),
        "relative": round(float(deltas.mean()) / mean_base, 4) if mean_base else None,
        "wins": int((deltas > 0).sum()),
        "losses": int((deltas < 0).sum()),
        "ties": int((deltas == 0).sum()),
        "ci95": None,
        "wilcoxon_p": None,
    }
    if len(deltas) >= 2 and np.any(deltas != deltas[0]):
        ci = stats.bootstrap(
            (deltas,), np.mean, n_resamples=10_000, rng=np.random.default_rng(seed)
        ).confidence_interval
        result["ci95"] = [round(float(ci.low), 4), round(float(ci.high), 4)]
    if np.any(deltas != 0):
        result["wilcoxon_p"] = round(float(stats.wilcoxon(deltas).pvalue), 4)
    return result


def gate(report: dict, metric: str = "nDCG@10", tolerance: float = 0.01, query_set: str = "auto") -> dict:
    """The ship/no-ship verdict: the fine-tuned model passes when its `metric` on `query_set` is at least
    base's minus `tolerance` (absolute). "auto" judges on the real queries when the report has them (the
    users' own questions outrank synthetic ones), else on the held-out synthetic questions."""
    sets = report["query_sets"]
    name = (REAL if REAL in sets else SYNTHETIC) if query_set == "auto" else query_set
    if name not in sets:
        raise ValueError(f"gate query set {name!r} is not in the report (it has {sorted(sets)})")
    systems = sets[name]["systems"]
    if metric not in systems["base"]:
        raise ValueError(f"gate metric {metric!r} is not reported; choose one of {sorted(systems['base'])}")
    base, tuned = systems["base"][metric], systems["fine-tuned"][metric]
    return {
        "passed": tuned >= base - tolerance,
        "query_set": name,
        "metric": metric,
        "base": round(base, 4),
        "fine-tuned": round(tuned, 4),
        "delta": round(tuned - base, 4),
        "tolerance": tolerance,
    }


NO_GAIN = "no gain: the base model serves as well"
"""How an export whose model is not measurably better than its base is marked (export.json's verdict)."""


def improvement(report: dict, validation_vs_base: dict | None = None, metric: str = "nDCG@10") -> dict:
    """Whether the fine-tuned model is measurably better than its base: the 95% bootstrap CI of fine-tuned − base
    on the real queries when the report has them, else on the validation questions (`validation_vs_base`, from
    training), lies wholly above zero. Without either there is nothing to show a gain on."""
    sets = report["query_sets"]
    if REAL in sets and metric in sets[REAL].get("fine_tuned_minus_base", {}):
        name, comparison = REAL, sets[REAL]["fine_tuned_minus_base"][metric]
    elif validation_vs_base is not None:
        name, comparison = "validation questions", validation_vs_base
    else:
        name, comparison = None, None
    ci = comparison.get("ci95") if comparison else None
    improved = bool(ci and ci[0] > 0)
    return {
        "improved": improved,
        "query_set": name,
        "metric": metric,
        "delta": comparison["delta"] if comparison else None,
        "ci95": ci,
        "verdict": "gain" if improved else NO_GAIN,
    }


def improvement_summary(verdict: dict) -> str:
    """The improvement verdict in plain words."""
    if verdict["query_set"] is None:
        return f"No gain shown: there are no real queries or validation questions to compare with the base. {NO_GAIN}."
    interval = f"95% CI [{verdict['ci95'][0]:+.4f}, {verdict['ci95'][1]:+.4f}]" if verdict["ci95"] else "no CI"
    where = f"{verdict['metric']} {verdict['delta']:+.4f}, {interval}, on the {verdict['query_set']}"
    if verdict["improved"]:
        return f"Gain: the fine-tuned model is better than its base ({where})."
    return (
        f"No gain: the fine-tuned model is not measurably better than its base ({where}; the interval includes "
        f"zero or lies below it). The base model serves as well."
    )


TRAINING_FACTS = ("teacher", "loss", "train_queries_by_source", "mixing_weight")
"""What the report repeats of the training: who taught, how, on how many queries of each source, the mix."""


def training_summary(training: dict) -> str:
    """One line on what the fine-tuned model was trained on, for the report."""
    sources = training.get("train_queries_by_source") or {}
    counts = ", ".join(f"{source} {n:,}" for source, n in sorted(sources.items(), key=lambda item: -item[1]))
    teacher = training.get("teacher") or "none (contrastive training on the generated questions)"
    mixing = training.get("mixing_weight")
    return (
        f"Trained on {sum(sources.values()):,} queries ({counts}); teacher: {teacher}; loss {training.get('loss')}; "
        f"WiSE-FT weight {mixing if mixing is not None else '-'} ((1 - w) x base + w x trained, chosen on validation)."
    )


VERDICT_FILE = "verdict.json"
"""The improvement verdict, written into the model folder by the report; exports copy it into export.json."""


def write_verdict(model_dir: str | Path, verdict: dict) -> Path:
    """`verdict` (`improvement`) as the model folder's VERDICT_FILE, with its sentence; returns the file."""
    path = Path(model_dir) / VERDICT_FILE
    text = json.dumps({**verdict, "summary": improvement_summary(verdict)}, indent=2) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def gate_summary(verdict: dict) -> str:
    """One line saying whether the model ships and why."""
    word = "passed" if verdict["passed"] else "FAILED"
    return (
        f"Gate {word}: fine-tuned {verdict['metric']} {verdict['fine-tuned']:.4f} vs base {verdict['base']:.4f} "
        f"({verdict['delta']:+.4f}, tolerance {verdict['tolerance']}) on {verdict['query_set']}"
    )


def report_markdown(report: dict, metrics: list[str] = HEADLINE_METRICS) -> str:
    """One table per query set, systems as rows, then each system's paired difference from base."""
    parts = []
    for name, entry in report["query_sets"].items():
        parts.append(f"**{name}** ({entry['n_queries']} queries)\n\n{markdown_table(entry['systems'], metrics)}")
        if entry.get("ignore_identical_ids"):
            parts.append(
                f"A retrieved document whose id is the query's own id is ignored (BEIR's rule; "
                f"{entry['query_ids_also_document_ids']} query ids are also document ids)."
            )
        for row, fusion in report.get("hybrid_weights", {}).items():
            if row in entry["systems"]:
                w = fusion["bm25_weight"]
                parts.append(
                    f"- {row}: {w:.1f} × BM25 + {1 - w:.1f} × {fusion['model']} "
                    "(min-max normalised scores; weight chosen on the synthetic validation questions)"
                )
        if entry.get("excluded_seed_queries"):
            parts.append(seeds_note(entry["excluded_seed_queries"]))
        if entry.get("judgments") and (note := judgments_note(entry["judgments"])):
            parts.append(f"Judgments: {note}.")
        parts += [f"- {comparison_text(system, c)}" for system, c in entry.get("vs_base", {}).items()]
        if entry.get("fine_tuned_minus_base"):
            parts.append(f"fine-tuned − base per metric: {deltas_text(entry['fine_tuned_minus_base'])}")
        if entry.get("largest_losses"):
            parts.append(f"Largest losses against base ({name}):")
            parts.append("\n".join(_loss_line(loss) for loss in entry["largest_losses"]))
    if report.get("query_realism"):
        parts.append(f"**query realism**\n\n{realism_markdown(report['query_realism'])}")
    return "\n\n".join(parts)


def comparison_text(system: str, c: dict) -> str:
    """One paired comparison (`paired_comparison`) in words: difference, interval, test, wins and losses."""
    ci = f"95% CI [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]" if c["ci95"] else "no CI (identical)"
    p = f"Wilcoxon p = {c['wilcoxon_p']:.3g}" if c["wilcoxon_p"] is not None else "no p-value"
    relative = f" ({c['relative']:+.1%})" if c["relative"] is not None else ""
    return (
        f"{system} − base, {c['metric']}: {c['delta']:+.4f}{relative}, {ci}, {p}; "
        f"queries better/worse/tied: {c['wins']}/{c['losses']}/{c['ties']}"
    )


def deltas_text(comparisons: dict[str, dict]) -> str:
    """Fine-tuned minus base for each metric with its 95% interval, on one line."""
    return "; ".join(
        f"{metric} {c['delta']:+.4f}" + (f" [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]" if c["ci95"] else "")
        for metric, c in comparisons.items()
    )


def seeds_note(excluded: list[str]) -> str:
    """Why some real queries are missing from the scores."""
    return (
        f"{len(excluded)} real queries are also seed queries (query_examples) and are not scored: they shaped the "
        f"training queries (ids: {', '.join(excluded[:10])}{', …' if len(excluded) > 10 else ''})."
    )


def regression_markdown(regression: dict) -> str:
    """The out-of-domain check: its table and verdict."""
    table = markdown_table(regression["systems"], HEADLINE_METRICS)
    return (
        f"**out-of-domain regression check** ({regression['n_queries']} queries, {regression['collection']})\n\n"
        f"{table}\n\n{gate_summary(regression['gate'])}"
    )


def _loss_line(loss: dict) -> str:
    hits = "; ".join(
        f"{'✓' if h['relevant'] else '✗'} {h['id']}: {' '.join(h['text'][:80].split())}…"
        for h in loss["fine_tuned_top"]
    )
    return (
        f"- {loss['query']!r} nDCG@10 {loss['base_ndcg@10']:.2f} → {loss['fine_tuned_ndcg@10']:.2f}; "
        f"relevant {', '.join(loss['relevant'])}; fine-tuned top: {hits}"
    )
