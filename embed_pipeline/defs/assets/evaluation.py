"""The BEIR report: BM25 vs base vs fine-tuned, on held-out synthetic questions and real queries."""

from pathlib import Path

import dagster as dg
import pandas as pd

from embed_pipeline.config import EvaluationConfig
from embed_pipeline.core.evaluation_stage import evaluate_and_gate
from embed_pipeline.core.model_card import append_section
from embed_pipeline.core.plots import delta_bars_markdown, metric_bars_markdown, realism_histograms_markdown
from embed_pipeline.core.realism import realism_markdown
from embed_pipeline.core.report import HEADLINE_METRICS, gate_summary
from embed_pipeline.defs.metadata import records_table
from embed_pipeline.defs.partitions import corpus_versions
from embed_pipeline.defs.resources import PipelineResource, TorchDeviceResource

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
    blocking gate: a fine-tuned model worse than base is reported but never exported (`evaluate_and_gate`)."""
    model_dir = str(pipeline.local_copy(finetuned_model["path"]))
    result = evaluate_and_gate(
        chunked_corpus,
        qa_splits,
        {**finetuned_model, "path": model_dir},
        pipeline.base_model_path(),
        config.settings(),
        eval_beir_dir=pipeline.eval_beir_dir,
        seeds=pipeline.seed_queries(),
        device=compute.torch_device(),
        query_prompt=pipeline.query_prompt,
        passage_prompt=pipeline.passage_prompt,
        document_caches={
            "base": pipeline.embeddings_cache(context.partition_key, pipeline.base_model_path()),
            "fine-tuned": pipeline.embeddings_cache(context.partition_key, model_dir),
        },
    )
    for note in result.notes:
        context.log.warning(note)
    report, table, verdict, regression = result.data, result.markdown, result.gate, result.regression
    report["model_path"] = finetuned_model["path"]
    stem = pipeline.version_artifacts(context.partition_key, "reports", f"report-{context.run_id[:8]}")
    written = result.write(stem, f"Evaluation report, run {context.run_id[:8]}", finetuned_model.get("dimension"))
    report["report_json"], report["report_markdown"], report["report_html"] = map(pipeline.publish, written)
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
