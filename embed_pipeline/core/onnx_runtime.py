"""Run an ONNX export (`core.export.export_onnx`) with onnxruntime and the `tokenizers` library only: no torch,
no transformers, so the server that imports this starts fast and fits a small container.

How the CPU is used (measured on this project's 2-core CPU, `bench/serving_levers.py`): texts are sorted by
token count and cut into model calls of at most `CPU_BATCH_TOKENS` padded positions, because small calls keep
their activations in the core's cache (int8 MiniLM, in-process: 69.5 texts/s at 8,192 positions per call, 91.8
at 512, 100.9 at 256 with the layout below); the calls run on one worker thread per core, each onnxruntime
call single-threaded (102.2 texts/s against 83.7 for one two-thread call at a time). On a GPU one
worker runs calls of `GPU_BATCH_TOKENS`."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

EXPORT_INFO = "export.json"
ONNX_FILE = "model.onnx"
OUTPUT_NAME = "sentence_embedding"
DIMENSIONS_INPUT = "dimensions"
# Most padded positions (rows x longest text) per model call.
CPU_BATCH_TOKENS = 256
GPU_BATCH_TOKENS = 16_384


def _tokenizer(onnx_dir: Path, max_length: int | None, direction: str = "right") -> Tokenizer:
    """The export's fast tokenizer (tokenizer.json) cutting to `max_length` tokens, special tokens included,
    from the end (`right`) or the start (`left`); None: no cut. It never pads: `OnnxEncoder` pads each batch."""
    path = onnx_dir / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: re-export {onnx_dir} with export_onnx (it saves the tokenizer)")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    if max_length is not None:
        tokenizer.enable_truncation(max_length=max_length, direction=direction)
    return tokenizer


def _pad_id(onnx_dir: Path, tokenizer: Tokenizer) -> int:
    """The id of the export's padding token (tokenizer_config.json's pad_token, else [PAD], else 0)."""
    config_path = onnx_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    pad = config.get("pad_token") or "[PAD]"
    pad_id = tokenizer.token_to_id(pad["content"] if isinstance(pad, dict) else pad)
    return 0 if pad_id is None else pad_id


def plan_batches(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Group texts of `lengths` tokens into model calls: sorted by length, so each call pads little, and cut
    so a call's padded size (its rows times its longest text) stays within `max_tokens` and `max_rows` rows.
    Returns each call's text indices; a text longer than `max_tokens` forms a call of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):  # ascending: text i is the call's longest
        if current and (len(current) == max_rows or (len(current) + 1) * lengths[i] > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    return [*batches, current] if current else batches


def padding_share(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The share of the positions a model computes that are padding, for texts of `lengths` tokens run in
    `batches` (each padded to its longest text)."""
    positions = sum(len(rows) * max(lengths[i] for i in rows) for rows in batches if rows)
    return 1 - sum(lengths[i] for rows in batches for i in rows) / positions if positions else 0.0


class OnnxEncoder:
    """Encode texts with an ``export_onnx`` folder through onnxruntime: the TensorRT provider for a folder
    holding a TensorRT engine (``build_tensorrt_engine``), CUDA when present, else the CPU.

    `workers` model calls run at once (default: one per core on the CPU, each single-threaded; one on a GPU);
    `on_batch(tokens, positions)` is called after each model call with its real tokens and its padded
    positions (a server's metrics)."""

    def __init__(
        self,
        onnx_dir: str | Path,
        providers: list | None = None,
        workers: int | None = None,
        on_batch: Callable[[int, int], object] | None = None,
    ) -> None:
        onnx_dir = Path(onnx_dir)
        info_path = onnx_dir / EXPORT_INFO
        if not info_path.is_file():
            raise ValueError(f"{info_path} does not exist: {onnx_dir} is not an export_onnx folder")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        self.dim: int = info["dim"]
        self.max_seq_length: int = info["max_seq_length"]
        self.prompts: dict[str, str] = info.get("prompts", {})
        self.recommendation: dict = info.get("recommendation", {})  # see `record_recommendation`
        self.verdict: dict = info.get("verdict", {})  # whether the model beats its base (`core.report.improvement`)
        self._tokenizing = threading.Lock()  # a Rust tokenizer is not to be used by two threads at once
        self._counting = _tokenizer(onnx_dir, None)
        self._cutting = {
            keep_end: _tokenizer(onnx_dir, self.max_seq_length, "left" if keep_end else "right")
            for keep_end in (False, True)
        }
        self._pad_id = _pad_id(onnx_dir, self._counting)
        self._on_batch = on_batch or (lambda tokens, positions: None)
        providers = providers or _providers(onnx_dir, info)
        on_cpu = (providers[0] if isinstance(providers[0], str) else providers[0][0]) == "CPUExecutionProvider"
        cores = len(os.sched_getaffinity(0))
        self.workers: int = workers or (cores if on_cpu else 1)
        self.max_batch_tokens: int = CPU_BATCH_TOKENS if on_cpu else GPU_BATCH_TOKENS
        self._pool: ThreadPoolExecutor | None = None  # started at the first call with work for several workers
        options = ort.SessionOptions()
        if on_cpu:
            options.intra_op_num_threads = max(1, cores // self.workers)
        disabled = []
        if info.get("fused"):
            # Fused offline (`export_onnx`); the extended passes add the int8 fusions (within noise of the basic passes
            # on this CPU), but not the skip-LayerNormalization one, which the export leaves out on purpose (-16%).
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            disabled = ["SkipLayerNormFusion"]
        self.session = ort.InferenceSession(
            str(onnx_dir / ONNX_FILE), sess_options=options, providers=providers, disabled_optimizers=disabled
        )
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
        end with `keep_end`). Texts are batched by length (`plan_batches`: at most ``batch_size`` texts and
        `max_batch_tokens` padded positions per model call), so little compute goes to padding."""
        return self.embed(texts, batch_size, keep_end, dimensions)[0]

    def embed(
        self,
        texts: list[str],
        batch_size: int = 32,
        keep_end: bool = False,
        dimensions: int | None = None,
        max_tokens: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``encode``'s embeddings and, from the same tokenization, each text's token count after truncation
        (what a server bills as usage). `max_tokens`: padded positions per model call (default: the device's)."""
        if dimensions is not None and not 0 < dimensions <= self.dim:
            raise ValueError(f"dimensions={dimensions} must lie in 1..{self.dim}")
        if dimensions is not None and dimensions < self.dim and DIMENSIONS_INPUT not in self._input_names:
            raise ValueError("this export has no 'dimensions' input; re-export it with export_onnx")
        with self._tokenizing:
            encoded = self._cutting[keep_end].encode_batch(texts)
        counts = np.array([len(e.ids) for e in encoded], dtype=np.int64)
        vectors = np.zeros((len(texts), dimensions or self.dim), dtype=np.float32)

        def run(rows: list[int]) -> None:
            width = int(counts[rows].max())
            tokens = {
                "input_ids": np.full((len(rows), width), self._pad_id, dtype=np.int64),
                "attention_mask": np.zeros((len(rows), width), dtype=np.int64),
                "token_type_ids": np.zeros((len(rows), width), dtype=np.int64),
            }
            for row, i in enumerate(rows):
                n = counts[i]
                tokens["input_ids"][row, :n] = encoded[i].ids
                tokens["attention_mask"][row, :n] = 1
                tokens["token_type_ids"][row, :n] = encoded[i].type_ids
            feed = {name: tokens[name] for name in self._input_names if name in tokens}
            if DIMENSIONS_INPUT in self._input_names:
                feed[DIMENSIONS_INPUT] = np.array(dimensions or self.dim, dtype=np.int64)
            vectors[rows] = self.session.run([OUTPUT_NAME], feed)[0]
            self._on_batch(int(counts[rows].sum()), len(rows) * width)

        batches = plan_batches(counts, max_tokens or self.max_batch_tokens, batch_size)
        if self.workers > 1 and len(batches) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="onnx-worker")
            list(self._pool.map(run, batches))  # onnxruntime releases the GIL while it computes
        else:
            for rows in batches:
                run(rows)
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
