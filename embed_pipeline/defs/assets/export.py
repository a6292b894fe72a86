"""Exports of the fine-tuned model (pooling, Matryoshka truncation and L2 normalisation inside the graph):
ONNX fp32, ONNX int8 for fast CPU serving, and a TensorRT engine on CUDA hosts, each checked against PyTorch."""

import json
import time
from pathlib import Path

import dagster as dg
import pandas as pd

from embed_pipeline.config import ExportConfig, Int8ExportConfig, TensorRTConfig
from embed_pipeline.core.export import EXPORT_INFO, export_int8, export_onnx, parity
from embed_pipeline.core.report import export_check_queries
from embed_pipeline.core.tensorrt import build_tensorrt_engine, tensorrt_unavailable_reason
from embed_pipeline.defs.metadata import count_table, records_table
from embed_pipeline.defs.partitions import corpus_versions
from embed_pipeline.defs.resources import PipelineResource

PARITY_CHECK = "matches_pytorch"
INT8_PARITY_CHECK = "int8_close_to_pytorch"
INT8_RETRIEVAL_CHECK = "int8_retrieval_matches_fp32"
TENSORRT_PARITY_CHECK = "tensorrt_close_to_pytorch"
SHORT_TEXTS = 256
# Every export: one per corpus version, in the export group, on the accelerator's pool.
EXPORT_STEP = {"partitions_def": corpus_versions, "group_name": "export", "pool": "gpu"}


def _samples(chunked_corpus: pd.DataFrame) -> list[str]:
    """Texts the exports are compared on: real passages, a short query and one longer than the model's limit."""
    return chunked_corpus["passage"].head(16).tolist() + ["short query?", "a " * 400]


def _short_texts(qa_splits: pd.DataFrame) -> list[str]:
    """Short texts the int8 export's attention layers are chosen on: synthetic questions of the training and
    validation splits (at most `SHORT_TEXTS`), never the test questions or real queries its retrieval is
    checked on."""
    return qa_splits.loc[qa_splits["split"] != "test", "question"].head(SHORT_TEXTS).tolist()


@dg.asset(
    **EXPORT_STEP,
    kinds={"onnx"},
    deps=["beir_report"],  # built only after the report's blocking gate passed
    check_specs=[
        dg.AssetCheckSpec(
            PARITY_CHECK,
            asset="onnx_model",
            partitions_def=corpus_versions,  # each verdict belongs to its corpus version
            description="ONNX embeddings' cosine to PyTorch's >= min_cosine.",
        )
    ],
)
def onnx_model(
    context: dg.AssetExecutionContext,
    config: ExportConfig,
    pipeline: PipelineResource,
    finetuned_model: dict,
    chunked_corpus: pd.DataFrame,
):
    """model.onnx plus tokenizer files, checked against the PyTorch checkpoint on sample passages."""
    started = time.perf_counter()
    model_dir = pipeline.local_copy(finetuned_model["path"])
    out_dir = pipeline.version_artifacts(context.partition_key, "models", f"onnx-{context.run_id[:8]}")
    onnx_path = export_onnx(model_dir, out_dir, opset=config.opset, fuse=config.fuse)
    samples = _samples(chunked_corpus)
    close = parity(model_dir, out_dir, samples)
    fusions = json.loads((out_dir / EXPORT_INFO).read_text(encoding="utf-8"))["fused"]
    address = pipeline.publish(out_dir)
    yield dg.Output(
        {"path": address, "onnx_file": f"{address}/{onnx_path.name}", **close},
        metadata={
            "onnx_file": dg.MetadataValue.path(f"{address}/{onnx_path.name}"),
            "size_mb": round(onnx_path.stat().st_size / 2**20, 1),
            **close,
            "fused_operators": count_table(fusions, "operator", "fused"),
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    yield dg.AssetCheckResult(
        check_name=PARITY_CHECK,
        passed=close["min_cosine"] >= config.min_cosine,
        metadata={**close, "threshold": config.min_cosine, "texts": len(samples)},
    )


def _attention_trials(attention: dict) -> dict:
    """The attention choice's trials as a table: the layers quantized, the short texts' lowest cosine, accepted."""
    if not attention.get("trials"):
        return {}
    rows = [
        {"quantized": ", ".join(t["quantized"]) or "none", "min_cosine": t["min_cosine"], "accepted": t["accepted"]}
        for t in attention["trials"]
    ]
    return {
        "attention_floor": attention["floor"],
        "attention_trials": records_table(rows),
    }


@dg.asset(
    **EXPORT_STEP,
    kinds={"onnx"},
    check_specs=[
        dg.AssetCheckSpec(
            INT8_PARITY_CHECK,
            asset="onnx_int8_model",
            partitions_def=corpus_versions,
            description="int8 embeddings' cosine to PyTorch's >= min_cosine.",
        ),
        dg.AssetCheckSpec(
            INT8_RETRIEVAL_CHECK,
            asset="onnx_int8_model",
            partitions_def=corpus_versions,
            description="int8 nDCG@10 within max_ndcg_drop of the fp32 export's, on the real queries when given, "
            "else on every held-out synthetic question; when it fails the export is marked not recommended.",
        ),
    ],
)
def onnx_int8_model(
    context: dg.AssetExecutionContext,
    config: Int8ExportConfig,
    pipeline: PipelineResource,
    finetuned_model: dict,
    onnx_model: dict,
    chunked_corpus: pd.DataFrame,
    qa_splits: pd.DataFrame,
):
    """Dynamic int8 quantization of the fp32 export (about 4x smaller, faster on CPU), with the same layout
    so `embed-pipeline serve` loads either; checked against PyTorch and against fp32 retrieval on every query
    there is (the real queries when given, else all held-out synthetic questions). An int8 export that fails
    a check is still written but marked not recommended (in its export.json, this asset's metadata, the
    check's warning and the CLI's summary; the server logs it at start-up): serve the fp32 export instead."""
    started = time.perf_counter()
    fp32_dir = pipeline.local_copy(onnx_model["path"])
    out_dir = pipeline.version_artifacts(context.partition_key, "models", f"onnx-int8-{context.run_id[:8]}")
    int8 = export_int8(
        fp32_dir,
        out_dir,
        pipeline.local_copy(finetuned_model["path"]),
        chunked_corpus,
        export_check_queries(qa_splits, pipeline.eval_beir_dir, pipeline.seed_queries()),
        _samples(chunked_corpus),
        config.settings(),
        short_texts=_short_texts(qa_splits),
    )
    recommendation = int8.recommendation
    if not recommendation["recommended"]:
        context.log.warning(f"int8 export not recommended ({recommendation['reason']}): serve the fp32 export")
    address = pipeline.publish(out_dir)
    checked = {"retrieval_check_queries": int8.queries, "retrieval_check_query_set": int8.query_set}
    yield dg.Output(
        {
            "path": address,
            "onnx_file": f"{address}/{int8.onnx_file.name}",
            **int8.parity,
            "ndcg@10_drop_vs_fp32": int8.ndcg_drop,
            **checked,
            **recommendation,
        },
        metadata={
            "recommended": recommendation["recommended"],
            **({"not_recommended_because": recommendation["reason"]} if not recommendation["recommended"] else {}),
            "onnx_file": dg.MetadataValue.path(f"{address}/{int8.onnx_file.name}"),
            "size_mb": round(int8.onnx_file.stat().st_size / 2**20, 1),
            "fp32_size_mb": round(Path(fp32_dir, Path(onnx_model["onnx_file"]).name).stat().st_size / 2**20, 1),
            **int8.parity,
            "ndcg@10_fp32": int8.ndcg_fp32,
            "ndcg@10_int8": int8.ndcg_int8,
            **checked,
            "attention_layers_quantized": f"{len(int8.attention['quantized'])} of "
            f"{len(int8.attention['quantized']) + len(int8.attention['kept_fp32'])}",
            **_attention_trials(int8.attention),
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    # Warnings, not errors: the export stays usable and marked; nothing downstream depends on it.
    yield dg.AssetCheckResult(
        check_name=INT8_PARITY_CHECK,
        passed=int8.parity_passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"min_cosine": int8.parity["min_cosine"], "threshold": config.min_cosine},
    )
    yield dg.AssetCheckResult(
        check_name=INT8_RETRIEVAL_CHECK,
        passed=int8.retrieval_passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"on {int8.queries} queries ({int8.query_set}); failed: the int8 export is marked not recommended",
        metadata={
            "ndcg@10_drop": int8.ndcg_drop,
            "threshold": config.max_ndcg_drop,
            "queries": int8.queries,
            "query_set": int8.query_set,
        },
    )


@dg.asset(
    **EXPORT_STEP,
    kinds={"tensorrt"},
    deps=["beir_report"],  # built only after the report's blocking gate passed
    output_required=False,  # not built, and saying why, on hosts without CUDA and TensorRT
)
def tensorrt_engine(
    context: dg.AssetExecutionContext,
    config: TensorRTConfig,
    pipeline: PipelineResource,
    finetuned_model: dict,
    chunked_corpus: pd.DataFrame,
):
    """A TensorRT engine of the fine-tuned model (with its plain ONNX graph; `embed-pipeline serve` loads the
    folder with onnxruntime's TensorRT provider). Without CUDA and TensorRT nothing is materialized: the step
    succeeds and records why, as an observation on the asset and a warning in the run's log."""
    reason = tensorrt_unavailable_reason()
    if reason:
        context.log.warning(f"tensorrt_engine not built: {reason}")
        context.log_event(dg.AssetObservation(asset_key=context.asset_key, metadata={"built": False, "reason": reason}))
        return
    started = time.perf_counter()
    out_dir = pipeline.version_artifacts(context.partition_key, "models", f"tensorrt-{context.run_id[:8]}")
    model_dir = pipeline.local_copy(finetuned_model["path"])
    build_tensorrt_engine(model_dir, out_dir, fp16=config.fp16, max_batch=config.max_batch)
    samples = _samples(chunked_corpus)
    close = parity(model_dir, out_dir, samples)
    engines = list((out_dir / "trt_engines").glob("*.engine"))
    address = pipeline.publish(out_dir)
    yield dg.Output(
        {"path": address, **close, "min_cosine_threshold": config.min_cosine, "texts": len(samples)},
        metadata={
            "path": dg.MetadataValue.path(address),
            "engine_mb": round(sum(e.stat().st_size for e in engines) / 2**20, 1),
            "fp16": config.fp16,
            "max_batch": config.max_batch,
            **close,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )


@dg.asset_check(asset=tensorrt_engine, partitions_def=corpus_versions, name=TENSORRT_PARITY_CHECK)
def tensorrt_close_to_pytorch(tensorrt_engine: dict) -> dg.AssetCheckResult:
    """TensorRT embeddings' cosine to PyTorch's >= min_cosine (measured by the asset). A separate check, not a
    check spec, so that a host without TensorRT skips it along with the asset instead of failing it."""
    return dg.AssetCheckResult(
        passed=tensorrt_engine["min_cosine"] >= tensorrt_engine["min_cosine_threshold"],
        metadata={k: tensorrt_engine[k] for k in ("min_cosine", "max_abs_difference", "min_cosine_threshold", "texts")},
    )
