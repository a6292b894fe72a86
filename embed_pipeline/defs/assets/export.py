"""ONNX export of the fine-tuned model, pooling and L2 normalisation inside the graph."""

import time

import dagster as dg
import pandas as pd

from embed_pipeline.config import ExportConfig
from embed_pipeline.core.export import export_onnx, max_abs_difference
from embed_pipeline.defs.resources import PipelineResource

PARITY_CHECK = "matches_pytorch"


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
    samples = chunked_corpus["passage"].head(16).tolist() + ["short query?", "a " * 400]
    diff = max_abs_difference(finetuned_model["path"], out_dir, samples)
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
