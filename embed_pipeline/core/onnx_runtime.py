"""Run an ONNX export (`core.export.export_onnx`) with onnxruntime and the `tokenizers` library only: no torch,
no transformers, so the server that imports this starts fast and fits a small container."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

EXPORT_INFO = "export.json"
ONNX_FILE = "model.onnx"
OUTPUT_NAME = "sentence_embedding"
DIMENSIONS_INPUT = "dimensions"


def _tokenizer(onnx_dir: Path, max_length: int | None, direction: str = "right") -> Tokenizer:
    """The export's fast tokenizer (tokenizer.json) cutting to `max_length` tokens, special tokens included,
    from the end (`right`) or the start (`left`), and padding a batch to its longest text; None: neither."""
    path = onnx_dir / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: re-export {onnx_dir} with export_onnx (it saves the tokenizer)")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    if max_length is not None:
        tokenizer.enable_truncation(max_length=max_length, direction=direction)
        config_path = onnx_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        pad = config.get("pad_token") or "[PAD]"
        pad = pad["content"] if isinstance(pad, dict) else pad
        pad_id = tokenizer.token_to_id(pad)
        tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token=pad)
    return tokenizer


class OnnxEncoder:
    """Encode texts with an ``export_onnx`` folder through onnxruntime: the TensorRT provider for a folder
    holding a TensorRT engine (``build_tensorrt_engine``), CUDA when present, else the CPU."""

    def __init__(self, onnx_dir: str | Path, providers: list | None = None) -> None:
        onnx_dir = Path(onnx_dir)
        info_path = onnx_dir / EXPORT_INFO
        if not info_path.is_file():
            raise ValueError(f"{info_path} does not exist: {onnx_dir} is not an export_onnx folder")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        self.dim: int = info["dim"]
        self.max_seq_length: int = info["max_seq_length"]
        self.prompts: dict[str, str] = info.get("prompts", {})
        self.recommendation: dict = info.get("recommendation", {})  # see `record_recommendation`
        self._tokenizing = threading.Lock()  # a Rust tokenizer is not to be used by two threads at once
        self._counting = _tokenizer(onnx_dir, None)
        self._cutting = {
            keep_end: _tokenizer(onnx_dir, self.max_seq_length, "left" if keep_end else "right")
            for keep_end in (False, True)
        }
        providers = providers or _providers(onnx_dir, info)
        options = ort.SessionOptions()
        if info.get("fused"):  # optimized offline; onnxruntime's own extended passes would re-fuse the residuals
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.session = ort.InferenceSession(str(onnx_dir / ONNX_FILE), sess_options=options, providers=providers)
        self._input_names = [i.name for i in self.session.get_inputs()]

    def token_counts(self, texts: list[str]) -> list[int]:
        """Tokens of each text (special tokens included) before truncation to max_seq_length."""
        with self._tokenizing:
            encoded = self._counting.encode_batch(texts)
        return [len(e.ids) for e in encoded]

    def encode(
        self, texts: list[str], batch_size: int = 32, keep_end: bool = False, dimensions: int | None = None
    ) -> np.ndarray:
        """Return float32 unit-length embeddings, one row per text, of the first ``dimensions`` components
        (default: all), truncating to max_seq_length (dropping the start of an over-long text instead of its
        end with `keep_end`). Texts are batched by length, so little compute goes to padding."""
        return self.embed(texts, batch_size, keep_end, dimensions)[0]

    def embed(
        self, texts: list[str], batch_size: int = 32, keep_end: bool = False, dimensions: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``encode``'s embeddings and, from the same tokenization, each text's token count after truncation
        (what a server bills as usage)."""
        if dimensions is not None and not 0 < dimensions <= self.dim:
            raise ValueError(f"dimensions={dimensions} must lie in 1..{self.dim}")
        if dimensions is not None and dimensions < self.dim and DIMENSIONS_INPUT not in self._input_names:
            raise ValueError("this export has no 'dimensions' input; re-export it with export_onnx")
        tokenizer = self._cutting[keep_end]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = np.zeros((len(texts), dimensions or self.dim), dtype=np.float32)
        counts = np.zeros(len(texts), dtype=np.int64)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            with self._tokenizing:
                encoded = tokenizer.encode_batch([texts[i] for i in rows])
            tokens = {
                "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
            }
            feed = {name: tokens[name] for name in self._input_names if name in tokens}
            if DIMENSIONS_INPUT in self._input_names:
                feed[DIMENSIONS_INPUT] = np.array(dimensions or self.dim, dtype=np.int64)
            vectors[rows] = self.session.run([OUTPUT_NAME], feed)[0]
            counts[rows] = tokens["attention_mask"].sum(axis=1)
        return vectors, counts


def _providers(onnx_dir: Path, info: dict) -> list:
    """onnxruntime execution providers for an export, fastest first: TensorRT (with the folder's prebuilt
    engines and their shape profile) when the folder holds them, CUDA when present, then the CPU."""
    available = ort.get_available_providers()
    providers: list = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    trt = info.get("tensorrt")
    if trt and "TensorrtExecutionProvider" in available:
        providers.insert(0, ("TensorrtExecutionProvider", tensorrt_options(onnx_dir, info)))
    elif trt:
        logging.getLogger(__name__).warning(
            "%s holds a TensorRT engine but this onnxruntime has no TensorRT provider (install the gpu extra on "
            "a CUDA host); running the ONNX model on %s instead",
            onnx_dir,
            providers[0],
        )
    return providers


def tensorrt_options(onnx_dir: Path, info: dict) -> dict[str, str | bool]:
    """TensorRT provider options: engines cached in the folder, one shape profile from a single short text
    to ``max_batch`` texts of max_seq_length tokens (so no shape triggers a rebuild), fp16 when recorded."""
    trt, length = info["tensorrt"], info["max_seq_length"]
    token_inputs = [name for name in info["inputs"] if name != DIMENSIONS_INPUT]

    def shapes(batch: int, tokens: int) -> str:
        return ",".join(f"{name}:{batch}x{tokens}" for name in token_inputs)

    return {
        "trt_fp16_enable": bool(trt["fp16"]),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(Path(onnx_dir).resolve() / trt["engine_dir"]),
        "trt_timing_cache_enable": True,
        "trt_profile_min_shapes": shapes(1, 1),
        "trt_profile_opt_shapes": shapes(max(1, trt["max_batch"] // 4), max(1, length // 2)),
        "trt_profile_max_shapes": shapes(trt["max_batch"], length),
    }
