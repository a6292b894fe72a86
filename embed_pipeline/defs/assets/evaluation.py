"""The BEIR report: BM25 vs base vs fine-tuned, on held-out synthetic questions and real queries."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
from transformers import AutoTokenizer

from embed_pipeline.config import EvaluationConfig
from embed_pipeline.core.atomic import write_atomically
from embed_pipeline.core.evaluation import METRIC_NAMES, judgment_coverage, judgments_note, load_beir_queries
from embed_pipeline.core.html_report import report_html
from embed_pipeline.core.model_card import append_section
from embed_pipeline.core.plots import delta_bars_markdown, metric_bars_markdown, realism_histograms_markdown
from embed_pipeline.core.realism import query_realism, realism_markdown
from embed_pipeline.core.report import (
    HEADLINE_METRICS,
    REAL,
    SYNTHETIC,
    evaluate_on_beir,
    evaluate_systems,
    gate,
    gate_summary,
    real_query_set,
    regression_markdown,
    report_markdown,
    synthetic_test_set,
)
from embed_pipeline.defs.metadata import records_table
from embed_pipeline.defs.partitions import corpus_versions
from embed_pipeline.defs.resources import GENERAL_OOD, PipelineResource, TorchDeviceResource

GATE_CHECK = "fine_tuned_not_worse_than_base"
REGRESSION_CHECK = "no_out_of_domain_regression"
REPORT_GATES = (GATE_CHECK, REGRESSION_CHECK)  # blocking: when one fails, no export is built


@dg.asset(
    partitions_def=corpus_versions,
    group_name="evaluation",
    pool="gpu",
    kinds={"pytorch"},
    check_specs=[
        dg.AssetCheckSpec(
            GATE_CHECK,
            asset="beir_report",
            partitions_def=corpus_versions,  # each verdict belongs to its corpus version
            blocking=True,
            description="Fine-tuned >= base - tolerance on the gate metric; when it fails, no export is built.",
        ),
        dg.AssetCheckSpec(
            REGRESSION_CHECK,
            asset="beir_report",
            partitions_def=corpus_versions,  # each verdict belongs to its corpus version
            blocking=True,
            description="On an out-of-domain collection, fine-tuned >= base - regression_tolerance; else no export.",
        ),
    ],
)
def beir_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    pipeline: PipelineResource,
    compute: TorchDeviceResource,
    chunked_corpus: pd.DataFrame,
    qa_splits: pd.DataFrame,
    finetuned_model: dict,
):
    """nDCG, Recall, MAP, Precision @1/5/10/100 and MRR@10 for every system on every query set, and the
    blocking gate: a fine-tuned model worse than base is reported but never exported."""
    folder = GENERAL_OOD if config.regression_beir == "bundled" else Path(config.regression_beir or ".")
    if config.regression_beir and not (folder / "corpus.jsonl").is_file():  # found out before the long scoring
        raise ValueError(f"beir_report.regression_beir: {folder} has no corpus.jsonl (a BEIR folder, or 'bundled')")
    if config.gate_metric not in METRIC_NAMES:
        raise ValueError(
            f"beir_report.gate_metric {config.gate_metric!r} is not a reported metric: use one of {METRIC_NAMES}"
        )
    model_dir = str(pipeline.local_copy(finetuned_model["path"]))
    queries, qrels = synthetic_test_set(qa_splits)
    query_sets = {SYNTHETIC: (queries, qrels, False)}
    seeds = pipeline.seed_queries()
    excluded: list[str] = []
    if pipeline.eval_beir_dir:
        judgments = judgment_coverage(
            pipeline.eval_beir_dir, load_beir_queries(pipeline.eval_beir_dir)[1], set(chunked_corpus["doc_id"])
        )
        if note := judgments_note(judgments):
            context.log.warning(note)
        real_queries, real_qrels, excluded = real_query_set(pipeline.eval_beir_dir, seeds)
        if excluded:
            context.log.info(f"{len(excluded)} real queries are also seed queries (query_examples): not scored")
        query_sets[REAL] = (real_queries, real_qrels, True)
    # Each trained Matryoshka size below the full one gets its own row.
    matryoshka = [d for d in finetuned_model.get("matryoshka_dims") or [] if d < finetuned_model["dimension"]]
    report = evaluate_systems(
        chunked_corpus,
        query_sets,
        models={
            "base": pipeline.base_model_path(),
            "fine-tuned": model_dir,
            **{f"fine-tuned @{d}": model_dir for d in matryoshka},
        },
        truncate_dims={f"fine-tuned @{d}": d for d in matryoshka},
        hybrids={
            f"hybrid ({'base' if model == 'base' else 'tuned'})": (model, fusion["bm25_weight"])
            for model, fusion in (finetuned_model.get("fusion") or {}).items()
            if fusion
        },
        ignore_identical_ids=config.ignore_identical_ids,
        document_caches={
            "base": pipeline.embeddings_cache(context.partition_key, pipeline.base_model_path()),
            "fine-tuned": pipeline.embeddings_cache(context.partition_key, model_dir),
        },
        device=compute.torch_device(),
        top_k=config.top_k,
        batch_size=config.batch_size,
        query_prompt=pipeline.query_prompt,
        passage_prompt=pipeline.passage_prompt,
    )
    if excluded:
        report["query_sets"][REAL]["excluded_seed_queries"] = excluded
    if pipeline.eval_beir_dir:
        report["query_sets"][REAL]["judgments"] = judgments
    real = (real_queries, real_qrels) if pipeline.eval_beir_dir else (None, None)
    report["query_realism"] = query_realism(qa_splits, chunked_corpus, *real, seed_queries=[s.text for s in seeds])
    verdict = gate(report, config.gate_metric, config.gate_tolerance, config.gate_query_set)
    report["gate"] = verdict
    regression = None
    if config.regression_beir:
        ood = evaluate_on_beir(
            folder,
            {"base": pipeline.base_model_path(), "fine-tuned": model_dir},
            AutoTokenizer.from_pretrained(pipeline.base_model_path()),
            device=compute.torch_device(),
            batch_size=config.batch_size,
            query_prompt=pipeline.query_prompt,
            passage_prompt=pipeline.passage_prompt,
        )
        regression = {
            **gate(ood, config.gate_metric, config.regression_tolerance, REAL),
            "query_set": f"out-of-domain {folder.name}",
        }
        report["regression"] = {"collection": str(folder), **ood["query_sets"][REAL], "gate": regression}
    report["model_path"] = finetuned_model["path"]
    report["eval_beir_dir"] = pipeline.eval_beir_dir
    table = report_markdown(report) + "\n\n" + gate_summary(verdict)
    if regression:
        table += "\n\n" + regression_markdown(report["regression"])
    stem = pipeline.version_artifacts(context.partition_key, "reports", f"report-{context.run_id[:8]}")
    json_path, md_path, html_path = stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".html")
    write_atomically(json_path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    write_atomically(md_path, lambda tmp: tmp.write_text(table + "\n"))
    html = report_html(report, f"Evaluation report, run {context.run_id[:8]}", finetuned_model.get("dimension"))
    write_atomically(html_path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    report["report_json"], report["report_markdown"], report["report_html"] = (
        pipeline.publish(path) for path in (json_path, md_path, html_path)
    )
    append_section(model_dir, "Evaluation (embed_pipeline beir_report)", table)
    pipeline.publish(Path(model_dir, "README.md"))  # the model card, now with this evaluation
    headline = {
        f"{name}/{system}/{metric}": entry["systems"][system][metric]
        for name, entry in report["query_sets"].items()
        for system in entry["systems"]
        for metric in ("nDCG@10", "Recall@10")
    }
    metadata = {
        "table": dg.MetadataValue.md(table),
        "plot": dg.MetadataValue.md(
            "\n\n".join(
                metric_bars_markdown(entry["systems"], HEADLINE_METRICS, name)
                + "\n\n"
                + delta_bars_markdown(entry["fine_tuned_minus_base"], name)
                for name, entry in report["query_sets"].items()
            )
        ),
        "fine_tuned_minus_base": records_table(
            [
                {
                    "query_set": name,
                    "metric": metric,
                    "delta": c["delta"],
                    "ci95_low": c["ci95"][0] if c["ci95"] else None,
                    "ci95_high": c["ci95"][1] if c["ci95"] else None,
                    "wilcoxon_p": c["wilcoxon_p"],
                }
                for name, entry in report["query_sets"].items()
                for metric, c in entry["fine_tuned_minus_base"].items()
            ]
        ),
        **headline,
        "query_realism": dg.MetadataValue.md(
            realism_markdown(report["query_realism"])
            + "\n\n"
            + realism_histograms_markdown(report["query_realism"]["profiles"])
        ),
        "report_json": dg.MetadataValue.path(report["report_json"]),
        "gate_passed": verdict["passed"],
    }
    yield dg.Output(report, metadata=metadata)
    for check, outcome in ((GATE_CHECK, verdict), (REGRESSION_CHECK, regression)):
        yield dg.AssetCheckResult(
            check_name=check,
            passed=outcome["passed"] if outcome else True,
            severity=dg.AssetCheckSeverity.ERROR,
            description=gate_summary(outcome) if outcome else "regression_beir is off",
            metadata={k: v for k, v in outcome.items() if k != "passed"} if outcome else {},
        )
