"""ONNX exports of the fine-tuned model (pooling and L2 normalisation inside the graph): fp32, and int8
for fast CPU serving, each checked against PyTorch."""

import time
from pathlib import Path

import dagster as dg
import pandas as pd

from embed_pipeline.config import ExportConfig, Int8ExportConfig
from embed_pipeline.core.export import export_onnx, parity, quantize_int8
from embed_pipeline.core.report import SYNTHETIC, evaluate_systems, synthetic_test_set
from embed_pipeline.defs.resources import PipelineResource

PARITY_CHECK = "matches_pytorch"
INT8_PARITY_CHECK = "int8_close_to_pytorch"
INT8_RETRIEVAL_CHECK = "int8_retrieval_matches_fp32"


def _samples(chunked_corpus: pd.DataFrame) -> list[str]:
    """Texts the exports are compared on: real passages, a short query and one longer than the model's limit."""
    return chunked_corpus["passage"].head(16).tolist() + ["short query?", "a " * 400]


@dg.asset(
    group_name="export",
    pool="gpu",
    kinds={"onnx"},
    deps=["beir_report"],  # built only after the report's blocking gate passed
    check_specs=[
        dg.AssetCheckSpec(
            PARITY_CHECK, asset="onnx_model", description="ONNX embeddings equal PyTorch's within the tolerance."
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
    out_dir = pipeline.artifacts("models", f"onnx-{context.run_id[:8]}")
    onnx_path = export_onnx(finetuned_model["path"], out_dir, opset=config.opset)
    samples = _samples(chunked_corpus)
    diff = parity(finetuned_model["path"], out_dir, samples)["max_abs_difference"]
    yield dg.Output(
        {"path": str(out_dir), "onnx_file": str(onnx_path), "max_abs_difference": diff},
        metadata={
            "onnx_file": dg.MetadataValue.path(str(onnx_path)),
            "size_mb": round(onnx_path.stat().st_size / 2**20, 1),
            "max_abs_difference": diff,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    yield dg.AssetCheckResult(
        check_name=PARITY_CHECK,
        passed=diff <= config.parity_tolerance,
        metadata={"max_abs_difference": diff, "tolerance": config.parity_tolerance, "texts": len(samples)},
    )


@dg.asset(
    group_name="export",
    pool="gpu",
    kinds={"onnx"},
    check_specs=[
        dg.AssetCheckSpec(
            INT8_PARITY_CHECK,
            asset="onnx_int8_model",
            description="int8 embeddings' cosine to PyTorch's >= min_cosine.",
        ),
        dg.AssetCheckSpec(
            INT8_RETRIEVAL_CHECK,
            asset="onnx_int8_model",
            description="int8 nDCG@10 on the held-out questions within max_ndcg_drop of the fp32 export's.",
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
    so `embed-pipeline serve` loads either; checked against PyTorch and against fp32 retrieval."""
    started = time.perf_counter()
    out_dir = pipeline.artifacts("models", f"onnx-int8-{context.run_id[:8]}")
    onnx_path = quantize_int8(onnx_model["path"], out_dir)
    close = parity(finetuned_model["path"], out_dir, _samples(chunked_corpus))
    queries, qrels = synthetic_test_set(qa_splits)
    scored = evaluate_systems(
        chunked_corpus, {SYNTHETIC: (queries, qrels, False)}, {"fp32": onnx_model["path"], "int8": str(out_dir)}
    )["query_sets"][SYNTHETIC]["systems"]
    drop = round(scored["fp32"]["nDCG@10"] - scored["int8"]["nDCG@10"], 4)
    yield dg.Output(
        {"path": str(out_dir), "onnx_file": str(onnx_path), **close, "ndcg@10_drop_vs_fp32": drop},
        metadata={
            "onnx_file": dg.MetadataValue.path(str(onnx_path)),
            "size_mb": round(onnx_path.stat().st_size / 2**20, 1),
            "fp32_size_mb": round(Path(onnx_model["onnx_file"]).stat().st_size / 2**20, 1),
            **close,
            "ndcg@10_fp32": scored["fp32"]["nDCG@10"],
            "ndcg@10_int8": scored["int8"]["nDCG@10"],
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    yield dg.AssetCheckResult(
        check_name=INT8_PARITY_CHECK,
        passed=close["min_cosine"] >= config.min_cosine,
        metadata={"min_cosine": close["min_cosine"], "threshold": config.min_cosine},
    )
    yield dg.AssetCheckResult(
        check_name=INT8_RETRIEVAL_CHECK,
        passed=drop <= config.max_ndcg_drop,
        metadata={"ndcg@10_drop": drop, "threshold": config.max_ndcg_drop, "queries": len(queries)},
    )
