"""ONNX export of a sentence-transformers model with mean pooling and L2 normalisation in the graph.

sentence-transformers' own ONNX backend exports only the transformer, leaving pooling to the
caller; here the graph maps token ids straight to the normalised sentence embedding, so any ONNX
runtime serves the same vectors as PyTorch.

Example::

    onnx_path = export_onnx("models/finetuned", "models/finetuned-onnx")
    encoder = OnnxEncoder("models/finetuned-onnx")
    vectors = encoder.encode(["how do I rotate a key?"])  # float32, unit length
    assert parity("models/finetuned", "models/finetuned-onnx", texts)["max_abs_difference"] < 1e-4
    quantize_int8("models/finetuned-onnx", "models/finetuned-onnx-int8")  # ~4x smaller, faster on CPU
"""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

__all__ = ["OnnxEncoder", "PooledEncoder", "export_onnx", "parity", "quantize_int8"]

EXPORT_INFO = "export.json"
ONNX_FILE = "model.onnx"
OUTPUT_NAME = "sentence_embedding"

# sentence-transformers <5 wrote one boolean per pooling mode; >=5 writes "pooling_mode".
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


class PooledEncoder(torch.nn.Module):
    """A Hugging Face encoder followed by attention-mask mean pooling and L2 normalisation.

    Mirrors sentence-transformers' ``Transformer -> Pooling(mean) -> Normalize`` so the exported
    graph returns the vectors the PyTorch model does.
    """

    def __init__(self, transformer: PreTrainedModel) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        tokens = self.transformer(**inputs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        summed = (tokens * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(summed / counts, p=2, dim=1)


def export_onnx(model_dir: str | Path, out_dir: str | Path, opset: int = 17) -> Path:
    """Export the sentence-transformers folder ``model_dir`` to ``out_dir/model.onnx``.

    Writes ``model.onnx`` (inputs ``input_ids``, ``attention_mask`` and, when the model takes
    them, ``token_type_ids``; output ``sentence_embedding``, dynamic batch and sequence axes), the
    tokenizer files, and ``export.json`` (source, opset, dim, max_seq_length). ``out_dir`` is built
    in a temporary sibling folder and renamed into place, so readers never see a half-written
    export. The output is always L2-normalised, even for a model without a ``Normalize`` module,
    because the pipeline only ever serves normalised vectors. Raises ``ValueError`` for a model
    whose modules this export cannot reproduce (non-mean pooling, Dense layers, ...).
    """
    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    max_seq_length = _check_supported(model_dir)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.model_max_length = max_seq_length
    transformer = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    encoder = PooledEncoder(transformer).eval()

    input_names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(transformer.forward).parameters:
        input_names.append("token_type_ids")
    # Two texts of different lengths, so the trace sees padding and a batch larger than one.
    sample = tokenizer(
        ["a short text", "a somewhat longer text to pad the other one"],
        padding=True,
        return_tensors="pt",
        return_token_type_ids="token_type_ids" in input_names,
    )
    args = tuple(sample[name] for name in input_names)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    dynamic_axes[OUTPUT_NAME] = {0: "batch"}

    with _staging(out_dir) as staging:
        with torch.no_grad():
            dim = int(encoder(*args).shape[1])
            torch.onnx.export(
                encoder,
                args,
                str(staging / ONNX_FILE),
                input_names=input_names,
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
            )
        onnx.checker.check_model(str(staging / ONNX_FILE))
        tokenizer.save_pretrained(staging)
        info = {
            "source_model": str(model_dir.resolve()),
            "opset": opset,
            "dim": dim,
            "max_seq_length": max_seq_length,
            "inputs": input_names,
            "output": OUTPUT_NAME,
            "normalized": True,
            "prompts": _prompts(model_dir),
        }
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out_dir / ONNX_FILE


class OnnxEncoder:
    """Encode texts with an ``export_onnx`` folder through onnxruntime (CUDA when available)."""

    def __init__(self, onnx_dir: str | Path, providers: list[str] | None = None) -> None:
        onnx_dir = Path(onnx_dir)
        info_path = onnx_dir / EXPORT_INFO
        if not info_path.is_file():
            raise ValueError(f"{info_path} does not exist: {onnx_dir} is not an export_onnx folder")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        self.dim: int = info["dim"]
        self.max_seq_length: int = info["max_seq_length"]
        self.prompts: dict[str, str] = info.get("prompts", {})
        self._tokenizing = threading.Lock()  # HF fast tokenizers fail ("Already borrowed") when shared by threads
        self.tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
        self._left_tokenizer = AutoTokenizer.from_pretrained(onnx_dir, truncation_side="left")
        if providers is None:
            providers = ["CPUExecutionProvider"]
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(onnx_dir / ONNX_FILE), providers=providers)
        self._input_names = [i.name for i in self.session.get_inputs()]

    def token_counts(self, texts: list[str], truncated: bool = False) -> list[int]:
        """Tokens of each text (special tokens included), before or after truncation to max_seq_length."""
        with self._tokenizing:
            encoded = self.tokenizer(texts, truncation=truncated, max_length=self.max_seq_length if truncated else None)
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: list[str], batch_size: int = 32, keep_end: bool = False) -> np.ndarray:
        """Return float32 unit-length embeddings, one row per text, truncating to max_seq_length (dropping
        the start of an over-long text instead of its end with `keep_end`)."""
        tokenizer = self._left_tokenizer if keep_end else self.tokenizer
        batches = []
        for start in range(0, len(texts), batch_size):
            with self._tokenizing:
                tokens = tokenizer(
                    texts[start : start + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_seq_length,
                    return_tensors="np",
                    return_token_type_ids="token_type_ids" in self._input_names,
                )
            feed = {name: tokens[name].astype(np.int64) for name in self._input_names}
            batches.append(self.session.run([OUTPUT_NAME], feed)[0])
        if not batches:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(batches).astype(np.float32, copy=False)


def parity(model_dir: str | Path, onnx_dir: str | Path, texts: list[str]) -> dict[str, float]:
    """How close an export's embeddings of ``texts`` are to PyTorch's (sentence-transformers):
    the largest element-wise gap and the lowest cosine similarity."""
    # Imported here: serving needs OnnxEncoder only, not sentence-transformers' import time.
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dir), device="cpu").encode(
        texts, normalize_embeddings=True, convert_to_numpy=True
    )
    exported = OnnxEncoder(onnx_dir).encode(texts)
    return {
        "max_abs_difference": float(np.abs(reference - exported).max()),
        "min_cosine": float((reference * exported).sum(axis=1).min()),
    }


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def quantize_int8(onnx_dir: str | Path, out_dir: str | Path) -> Path:
    """Dynamic int8 quantization of an ``export_onnx`` folder into ``out_dir`` (same layout, so
    ``OnnxEncoder`` and the server load it unchanged): weights int8 per channel (per-tensor loses
    about 0.07 cosine on MiniLM), activations quantized at run time. On CPUs without VNNI the weights use
    7 bits (``reduce_range``) so the u8 x s8 products cannot saturate. ``export.json`` records it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    info = json.loads((onnx_dir / EXPORT_INFO).read_text(encoding="utf-8"))
    with _staging(out_dir) as staging:
        for item in onnx_dir.iterdir():
            if item.is_file() and item.name not in (ONNX_FILE, EXPORT_INFO):
                shutil.copy2(item, staging / item.name)
        reduce_range = not cpu_has_vnni()
        quantize_dynamic(
            str(onnx_dir / ONNX_FILE),
            str(staging / ONNX_FILE),
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
        )
        info["quantization"] = {"method": "dynamic int8", "per_channel": True, "reduce_range": reduce_range}
        info["source_onnx"] = str(onnx_dir.resolve())
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out_dir / ONNX_FILE


def _prompts(model_dir: Path) -> dict[str, str]:
    """The model's non-empty query/document prompts (sentence-transformers config), for servers and
    evaluators of the export to apply by input type."""
    config = model_dir / "config_sentence_transformers.json"
    prompts = json.loads(config.read_text(encoding="utf-8")).get("prompts", {}) if config.is_file() else {}
    return {kind: text for kind, text in prompts.items() if kind in ("query", "document") and text}


def _check_supported(model_dir: Path) -> int:
    """Refuse models the wrapper would export wrongly; return the max sequence length."""
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        raise ValueError(f"{modules_path} does not exist: {model_dir} is not a sentence-transformers folder")
    modules = json.loads(modules_path.read_text(encoding="utf-8"))
    # Type paths moved between sentence-transformers releases; the class name is stable.
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise ValueError(
            f"{modules_path}: modules {kinds} are not supported; export handles "
            "Transformer -> Pooling(mean) [-> Normalize] only"
        )

    pooling_path = model_dir / modules[1]["path"] / "config.json"
    pooling = json.loads(pooling_path.read_text(encoding="utf-8"))
    mode = pooling.get("pooling_mode")
    if mode is None:
        mode = [name for key, name in _LEGACY_POOLING_KEYS.items() if pooling.get(key)]
    if mode not in ("mean", ["mean"]):
        raise ValueError(f"{pooling_path}: pooling mode {mode!r} is not supported; only 'mean' is")
    if pooling.get("include_prompt", True) is False:
        raise ValueError(f"{pooling_path}: include_prompt=false (prompt tokens left out of pooling) is not supported")

    st_config_path = model_dir / "sentence_bert_config.json"
    st_config = {}
    if st_config_path.is_file():
        st_config = json.loads(st_config_path.read_text(encoding="utf-8"))
    if st_config.get("do_lower_case"):
        raise ValueError(f"{st_config_path}: do_lower_case=true is not supported")
    if st_config.get("transformer_task", "feature-extraction") != "feature-extraction":
        raise ValueError(f"{st_config_path}: transformer_task {st_config['transformer_task']!r} is not supported")
    if "max_seq_length" in st_config:
        return int(st_config["max_seq_length"])
    # sentence-transformers >=6 keeps the limit in the tokenizer config instead; an unset one
    # reads as a huge sentinel, so cap it at the model's position embeddings.
    limit = AutoTokenizer.from_pretrained(model_dir).model_max_length
    positions = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None)
    return int(min(limit, positions) if positions else limit)


@contextlib.contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` to build an export in: renamed into place when the block
    succeeds, removed when it fails, so readers never see a half-written export."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the export is meant to be shared
    try:
        yield staging
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_dir(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``, swapping out an existing ``target`` with two renames."""
    if not target.exists():
        staging.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    old.rmdir()
    target.rename(old)
    staging.rename(target)
    shutil.rmtree(old)
