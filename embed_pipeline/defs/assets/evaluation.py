"""The BEIR report: BM25 vs base vs fine-tuned, on held-out synthetic questions and real queries."""

import json

import dagster as dg
import pandas as pd

from embed_pipeline.config import EvaluationConfig
from embed_pipeline.core.evaluation import METRIC_NAMES, load_beir_queries
from embed_pipeline.core.model_card import append_section
from embed_pipeline.core.report import (
    HEADLINE_METRICS,
    REAL,
    SYNTHETIC,
    evaluate_systems,
    gate,
    gate_summary,
    report_markdown,
    synthetic_test_set,
)
from embed_pipeline.defs.io_manager import write_atomically
from embed_pipeline.defs.plots import metric_bars_markdown
from embed_pipeline.defs.resources import PipelineResource, TorchDeviceResource

GATE_CHECK = "fine_tuned_not_worse_than_base"


@dg.asset(
    group_name="evaluation",
    pool="gpu",
    kinds={"pytorch"},
    check_specs=[
        dg.AssetCheckSpec(
            GATE_CHECK,
            asset="beir_report",
            blocking=True,
            description="Fine-tuned >= base - tolerance on the gate metric; when it fails, no export is built.",
        )
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
    if config.gate_metric not in METRIC_NAMES:
        raise ValueError(
            f"beir_report.gate_metric {config.gate_metric!r} is not a reported metric: use one of {METRIC_NAMES}"
        )
    queries, qrels = synthetic_test_set(qa_splits)
    query_sets = {SYNTHETIC: (queries, qrels, False)}
    if pipeline.eval_beir_dir:
        real_queries, real_qrels = load_beir_queries(pipeline.eval_beir_dir)
        known = set(chunked_corpus["doc_id"])
        unknown = sorted({d for rel in real_qrels.values() for d in rel} - known)
        if unknown:
            context.log.warning(
                f"{len(unknown)} judged documents are not in the corpus (e.g. {unknown[:3]}); "
                "they count as relevant but unretrievable."
            )
        query_sets[REAL] = (real_queries, real_qrels, True)
    # Each trained Matryoshka size below the full one gets its own row.
    matryoshka = [d for d in finetuned_model.get("matryoshka_dims") or [] if d < finetuned_model["dimension"]]
    report = evaluate_systems(
        chunked_corpus,
        query_sets,
        models={
            "base": pipeline.base_model_path(),
            "fine-tuned": finetuned_model["path"],
            **{f"fine-tuned @{d}": finetuned_model["path"] for d in matryoshka},
        },
        truncate_dims={f"fine-tuned @{d}": d for d in matryoshka},
        device=compute.torch_device(),
        top_k=config.top_k,
        batch_size=config.batch_size,
        query_prompt=pipeline.query_prompt,
        passage_prompt=pipeline.passage_prompt,
    )
    verdict = gate(report, config.gate_metric, config.gate_tolerance, config.gate_query_set)
    report["gate"] = verdict
    report["model_path"] = finetuned_model["path"]
    report["eval_beir_dir"] = pipeline.eval_beir_dir
    table = report_markdown(report) + "\n\n" + gate_summary(verdict)
    stem = pipeline.artifacts("reports", f"report-{context.run_id[:8]}")
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    write_atomically(json_path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    write_atomically(md_path, lambda tmp: tmp.write_text(table + "\n"))
    report["report_json"], report["report_markdown"] = str(json_path), str(md_path)
    append_section(finetuned_model["path"], "Evaluation (embed_pipeline beir_report)", table)
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
                for name, entry in report["query_sets"].items()
            )
        ),
        **headline,
        "report_json": dg.MetadataValue.path(str(json_path)),
        "gate_passed": verdict["passed"],
    }
    yield dg.Output(report, metadata=metadata)
    yield dg.AssetCheckResult(
        check_name=GATE_CHECK,
        passed=verdict["passed"],
        severity=dg.AssetCheckSeverity.ERROR,
        description=gate_summary(verdict),
        metadata={k: v for k, v in verdict.items() if k != "passed"},
    )
