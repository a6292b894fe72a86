"""The BEIR report: BM25 vs base vs fine-tuned (and the teacher), on held-out synthetic questions and real
queries."""

from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import pandas as pd

from embed_pipeline.config import EvaluationConfig
from embed_pipeline.core.evaluation_stage import evaluate_and_gate
from embed_pipeline.core.model_card import append_section
from embed_pipeline.core.plots import delta_bars_markdown, metric_bars_markdown, realism_histograms_markdown
from embed_pipeline.core.realism import realism_markdown
from embed_pipeline.core.report import HEADLINE_METRICS, gate_summary, improvement_summary, write_verdict
from embed_pipeline.core.settings import TeacherSettings
from embed_pipeline.core.teachers import build_teacher, parse_teacher
from embed_pipeline.core.teachers.models import searcher
from embed_pipeline.defs.metadata import records_table
from embed_pipeline.defs.partitions import corpus_versions
from embed_pipeline.defs.resources import PipelineResource, TorchDeviceResource

GATE_CHECK = "fine_tuned_not_worse_than_base"
REGRESSION_CHECK = "no_out_of_domain_regression"
REPORT_GATES = (GATE_CHECK, REGRESSION_CHECK)  # blocking: when one fails, no export is built
IMPROVEMENT_CHECK = "improves_on_its_base"  # a warning: the model ships, marked "no gain" where it shows none


def _teacher_row(stack: ExitStack, context, pipeline, teacher: dict, chunks: pd.DataFrame, device: str, top_k: int):
    """(teacher name, chunk searcher) for the report's teacher row, from the passage vectors the teacher steps
    kept; None without a teacher or for one that only reranks."""
    if not teacher["build"]:
        return None
    reach = TeacherSettings(**teacher["settings"])
    teachers = stack.enter_context(pipeline.teacher_context(context.partition_key, context.run_id, device, reach))
    model = build_teacher(parse_teacher(teacher["build"]), teachers)
    found = searcher(model, chunks["chunk_id"].tolist(), chunks["passage"].tolist(), top_k)
    return (teacher["teacher"], found) if found else None


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
        dg.AssetCheckSpec(
            IMPROVEMENT_CHECK,
            asset="beir_report",
            partitions_def=corpus_versions,
            description="The 95% CI of fine-tuned − base nDCG@10 lies above zero (real queries when given, else "
            "validation); when not, the exports are marked 'no gain: the base model serves as well'.",
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
    teacher: dict,
):
    """nDCG, Recall, MAP, Precision @1/5/10/100 and MRR@10 for every system on every query set, and the
    blocking gate: a fine-tuned model worse than base is reported but never exported (`evaluate_and_gate`)."""
    model_dir = str(pipeline.local_copy(finetuned_model["path"]))
    device = compute.torch_device()
    with ExitStack() as stack:
        result = evaluate_and_gate(
            chunked_corpus,
            qa_splits,
            {**finetuned_model, "path": model_dir},
            pipeline.base_model_path(),
            config.settings(),
            eval_beir_dir=pipeline.eval_beir_dir,
            seeds=pipeline.seed_queries(),
            device=device,
            query_prompt=pipeline.query_prompt,
            passage_prompt=pipeline.passage_prompt,
            document_caches={
                "base": pipeline.embeddings_cache(context.partition_key, pipeline.base_model_path()),
                "fine-tuned": pipeline.embeddings_cache(context.partition_key, model_dir),
            },
            teacher=_teacher_row(stack, context, pipeline, teacher, chunked_corpus, device, config.top_k),
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
    pipeline.publish(write_verdict(model_dir, result.improvement))  # the exports carry it into export.json
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
        "improves_on_base": result.improvement["improved"],
    }
    yield dg.Output(report, metadata=metadata)
    gain = result.improvement
    yield dg.AssetCheckResult(
        check_name=IMPROVEMENT_CHECK,
        passed=gain["improved"],
        severity=dg.AssetCheckSeverity.WARN,
        description=improvement_summary(gain),
        metadata={k: v for k, v in gain.items() if k not in ("improved", "ci95") and v is not None}
        | ({"ci95_low": gain["ci95"][0], "ci95_high": gain["ci95"][1]} if gain["ci95"] else {}),
    )
    for check, outcome in ((GATE_CHECK, verdict), (REGRESSION_CHECK, regression)):
        yield dg.AssetCheckResult(
            check_name=check,
            passed=outcome["passed"] if outcome else True,
            severity=dg.AssetCheckSeverity.ERROR,
            description=gate_summary(outcome) if outcome else "regression_beir is off",
            metadata={k: v for k, v in outcome.items() if k != "passed"} if outcome else {},
        )
