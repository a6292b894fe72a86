"""TensorRT engines for a fine-tuned model, built through onnxruntime's TensorRT provider.

An engine folder is an unfused fp32 ONNX export (standard operators only, which TensorRT parses) plus the
serialised engines onnxruntime's TensorRT provider builds for it, for one shape profile that covers a
single short text up to ``max_batch`` texts of max_seq_length tokens. ``OnnxEncoder``, and so the server,
loads such a folder with the TensorRT provider and those engines, so nothing is built at start-up.
Needs a CUDA GPU, onnxruntime-gpu with its TensorRT provider and the TensorRT libraries (the ``gpu`` extra).

Example::

    if tensorrt_unavailable_reason() is None:
        build_tensorrt_engine("models/finetuned", "models/tensorrt")
        OnnxEncoder("models/tensorrt").encode(["how do I rotate a key?"])
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort

from embed_pipeline.core.atomic import staging_dir
from embed_pipeline.core.export import export_onnx
from embed_pipeline.core.onnx_runtime import EXPORT_INFO, OnnxEncoder

__all__ = ["build_tensorrt_engine", "tensorrt_unavailable_reason"]

ENGINE_DIR = "trt_engines"


def tensorrt_unavailable_reason() -> str | None:
    """Why no TensorRT engine can be built on this machine, or None when one can."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is visible to this process"
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no TensorrtExecutionProvider: install the gpu extra (pip install 'embed-pipeline[gpu]')"
    try:
        import tensorrt  # noqa: F401  (the libraries onnxruntime's provider loads)
    except ImportError:
        return "the tensorrt package is not installed: pip install 'embed-pipeline[gpu]'"
    return None


def build_tensorrt_engine(
    model_dir: str | Path, out_dir: str | Path, fp16: bool = True, max_batch: int = 64, opset: int = 17
) -> Path:
    """Export ``model_dir`` (a sentence-transformers folder) to ``out_dir`` and build its TensorRT engines
    there; return ``out_dir``. Raises RuntimeError naming the missing piece when TensorRT cannot run here."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise RuntimeError(f"cannot build a TensorRT engine: {reason}")
    import tensorrt

    out_dir = Path(out_dir)
    with staging_dir(out_dir) as staging:
        export_onnx(model_dir, staging, opset=opset, fuse=False)
        info_path = staging / EXPORT_INFO
        info = json.loads(info_path.read_text(encoding="utf-8"))
        info["tensorrt"] = {
            "fp16": fp16,
            "max_batch": max_batch,
            "engine_dir": ENGINE_DIR,
            "tensorrt_version": tensorrt.__version__,
        }
        info_path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        # onnxruntime builds and caches the engines on the first run; the cache key uses the model's file
        # name, not its folder, so the engines stay valid when the staging folder is renamed into place.
        OnnxEncoder(staging).encode(["warm-up"])
        if not any((staging / ENGINE_DIR).glob("*.engine")):
            raise RuntimeError(
                f"onnxruntime's TensorRT provider wrote no engine to {staging / ENGINE_DIR}; see its log above"
            )
    return out_dir
