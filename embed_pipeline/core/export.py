"""ONNX export of a sentence-transformers model with mean pooling, Matryoshka truncation and L2
normalisation in the graph.

sentence-transformers' own ONNX backend exports only the transformer, leaving pooling to the
caller; here the graph maps token ids straight to the normalised sentence embedding, so any ONNX
runtime serves the same vectors as PyTorch. A scalar input ``dimensions`` (the full size, or less
for Matryoshka-trained models) keeps the first ``dimensions`` components before normalising. Attention is traced in its
plain (eager) form, which onnxruntime's transformer optimizer fuses into its Attention,
SkipLayerNormalization and BiasGelu kernels: about 1.5x faster on CPU in fp32 and 1.7x in int8.

Example::

    onnx_path = export_onnx("models/finetuned", "models/finetuned-onnx")
    encoder = OnnxEncoder("models/finetuned-onnx")
    vectors = encoder.encode(["how do I rotate a key?"], dimensions=128)  # float32, unit length
    assert parity("models/finetuned", "models/finetuned-onnx", texts)["min_cosine"] > 0.9999
    quantize_int8("models/finetuned-onnx", "models/finetuned-onnx-int8")  # ~4x smaller, faster on CPU
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel

from embed_pipeline.core.atomic import staging_dir, write_atomically
from embed_pipeline.core.onnx_runtime import DIMENSIONS_INPUT, EXPORT_INFO, ONNX_FILE, OUTPUT_NAME, OnnxEncoder
from embed_pipeline.core.quantization import quantize_int8
from embed_pipeline.core.settings import INT8_EXPORT, Int8ExportSettings

__all__ = ["EXPORT_INFO", "OnnxEncoder", "PooledEncoder", "export_int8", "export_onnx", "parity", "quantize_int8"]

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
    """A Hugging Face encoder followed by attention-mask mean pooling, truncation to the first
    ``dimensions`` components and L2 normalisation.

    Mirrors sentence-transformers' ``Transformer -> Pooling(mean) -> Normalize`` (and ``truncate_dim``)
    so the exported graph returns the vectors the PyTorch model does.
    """

    def __init__(self, transformer: PreTrainedModel) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        dimensions: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        tokens = self.transformer(**inputs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        summed = (tokens * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize((summed / counts)[:, :dimensions], p=2, dim=1)


def export_onnx(model_dir: str | Path, out_dir: str | Path, opset: int = 17, fuse: bool = True) -> Path:
    """Export the sentence-transformers folder ``model_dir`` to ``out_dir/model.onnx``.

    Writes ``model.onnx`` (inputs ``input_ids``, ``attention_mask``, the int64 scalar ``dimensions``
    and, when the model takes them, ``token_type_ids``; output ``sentence_embedding``, dynamic
    batch and sequence axes), the tokenizer files, and ``export.json`` (source, opset, dim,
    max_seq_length, prompts, fusions). With ``fuse`` the graph is rewritten with onnxruntime's fused
    transformer kernels (onnxruntime-only operators: leave it off for other runtimes, e.g. TensorRT).
    ``out_dir`` is built in a temporary sibling folder and renamed into place, so readers never see a
    half-written export. The output is always L2-normalised, even for a model without a ``Normalize``
    module, because the pipeline only ever serves normalised vectors. Raises ``ValueError`` for a model
    whose modules this export cannot reproduce (non-mean pooling, Dense layers, ...).
    """
    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    max_seq_length = _check_supported(model_dir)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.model_max_length = max_seq_length
    # Eager attention traces to plain MatMul/Softmax, which the optimizer fuses; the SDPA trace does not fuse.
    transformer = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    encoder = PooledEncoder(transformer).eval()

    token_inputs = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(transformer.forward).parameters:
        token_inputs.append("token_type_ids")
    # Two texts of different lengths, so the trace sees padding and a batch larger than one.
    sample = tokenizer(
        ["a short text", "a somewhat longer text to pad the other one"],
        padding=True,
        return_tensors="pt",
        return_token_type_ids="token_type_ids" in token_inputs,
    )
    dim = int(transformer.config.hidden_size)
    # Positional order of PooledEncoder.forward: ids, mask, dimensions, [token types].
    input_names = [*token_inputs[:2], DIMENSIONS_INPUT, *token_inputs[2:]]
    args = tuple(torch.tensor(dim) if name == DIMENSIONS_INPUT else sample[name] for name in input_names)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in token_inputs}
    dynamic_axes[OUTPUT_NAME] = {0: "batch", 1: "dimensions"}

    from embed_pipeline.core.evaluation import saved_fusion

    with staging_dir(out_dir) as staging:
        onnx_path = staging / ONNX_FILE
        with torch.no_grad():
            torch.onnx.export(
                encoder,
                args,
                str(onnx_path),
                input_names=input_names,
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
            )
        fusions = _fuse(onnx_path, transformer.config) if fuse else {}
        onnx.checker.check_model(str(onnx_path))
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
            "fused": fusions,
            "hybrid": saved_fusion(model_dir),  # the BM25 fusion chosen for this model, for `eval` and users
            **_model_records(model_dir),  # how it was trained (teacher, mixing weight) and the report's verdict
        }
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out_dir / ONNX_FILE


def _fuse(onnx_path: Path, config: PretrainedConfig) -> dict[str, int]:
    """Rewrite the graph in place with onnxruntime's fused BERT-family kernels; return the fusions made.

    Only matched subgraphs are replaced, so an architecture the optimizer does not know keeps its
    plain operators (and the parity checks still compare every export with PyTorch)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = getattr(config, "num_attention_heads", None), getattr(config, "hidden_size", None)
    if not heads or not hidden:
        return {}
    options = FusionOptions("bert")
    # Residual adds stay apart from LayerNormalization: onnxruntime's CPU SkipLayerNormalization kernel made
    # the int8 MiniLM about 9% slower on this project's 2-core CPU (median of 5x5 runs, 8 abstracts).
    options.enable_skip_layer_norm = False
    optimized = optimize_model(
        str(onnx_path),
        model_type="bert",
        num_heads=heads,
        hidden_size=hidden,
        opt_level=1,
        use_gpu=False,
        optimization_options=options,
    )
    optimized.save_model_to_file(str(onnx_path))
    return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


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


def record_recommendation(export_dir: str | Path, recommended: bool, reason: str = "") -> dict:
    """Write into an export's export.json whether it is recommended for serving and, when not, why (e.g. a
    quantized export whose retrieval fell below fp32's); the server warns at start-up when it is not."""
    path = Path(export_dir) / EXPORT_INFO
    info = json.loads(path.read_text(encoding="utf-8"))
    info["recommendation"] = {"recommended": recommended, "reason": reason}
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8"))
    return info["recommendation"]


def _model_records(model_dir: Path) -> dict:
    """What the model folder says of itself for export.json: `training` (teacher, licence, WiSE-FT weight) and
    `verdict` (whether it beats its base: "gain", or "no gain: the base model serves as well")."""
    from embed_pipeline.core.report import VERDICT_FILE
    from embed_pipeline.core.training import TRAINING_FILE

    records = {}
    for key, name in (("training", TRAINING_FILE), ("verdict", VERDICT_FILE)):
        path = model_dir / name
        if path.is_file():
            records[key] = json.loads(path.read_text(encoding="utf-8"))
    return records


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


@dataclass(frozen=True)
class Int8Export:
    """A checked int8 export: its closeness to PyTorch on sample texts, its retrieval against the fp32 export's on
    the check's queries, and whether it is recommended for serving (both checks within `Int8ExportSettings`)."""

    onnx_file: Path
    parity: dict
    query_set: str
    queries: int
    ndcg_fp32: float
    ndcg_int8: float
    parity_passed: bool
    retrieval_passed: bool
    recommendation: dict
    attention: dict  # the attention layers quantized and kept fp32, with the trials (`quantization.AttentionChoice`)

    @property
    def ndcg_drop(self) -> float:
        return round(self.ndcg_fp32 - self.ndcg_int8, 4)


def export_int8(
    fp32_dir: Path,
    out_dir: Path,
    model_dir: Path,
    chunks: pd.DataFrame,
    check_queries: tuple[str, tuple],
    samples: list[str],
    settings: Int8ExportSettings = INT8_EXPORT,
    short_texts: list[str] | None = None,
) -> Int8Export:
    """The int8 stage: quantize the fp32 export (`quantize_int8`, its attention layers too where `short_texts`,
    e.g. the synthetic training questions, allow it when `settings.quantize_attention`), compare it with PyTorch on
    `samples` and
    with the fp32 export's retrieval on `check_queries` (name, (queries, qrels, qrels on documents): see
    `core.report.export_check_queries`), and record in its export.json whether it is recommended (a failed
    check marks it not recommended, with the reason; it never blocks)."""
    from embed_pipeline.core.report import evaluate_systems

    attention_texts = short_texts if settings.quantize_attention else None
    onnx_file = quantize_int8(fp32_dir, out_dir, attention_texts, settings.attention_max_cosine_loss)
    close = parity(model_dir, out_dir, samples)
    name, query_set = check_queries
    scored = evaluate_systems(chunks, {name: query_set}, {"fp32": str(fp32_dir), "int8": str(out_dir)})
    entry = scored["query_sets"][name]
    ndcg_fp32, ndcg_int8 = entry["systems"]["fp32"]["nDCG@10"], entry["systems"]["int8"]["nDCG@10"]
    drop = round(ndcg_fp32 - ndcg_int8, 4)
    failed = []
    if close["min_cosine"] < settings.min_cosine:
        failed.append(f"min cosine to PyTorch {close['min_cosine']:.4f} < {settings.min_cosine}")
    if drop > settings.max_ndcg_drop:
        budget, queries = settings.max_ndcg_drop, entry["n_queries"]
        failed.append(f"nDCG@10 {drop:.4f} below fp32's (budget {budget}) on {queries} queries ({name})")
    recommendation = record_recommendation(out_dir, not failed, "; ".join(failed))
    return Int8Export(
        onnx_file=onnx_file,
        parity=close,
        query_set=name,
        queries=entry["n_queries"],
        ndcg_fp32=ndcg_fp32,
        ndcg_int8=ndcg_int8,
        parity_passed=close["min_cosine"] >= settings.min_cosine,
        retrieval_passed=drop <= settings.max_ndcg_drop,
        recommendation=recommendation,
        attention=json.loads((out_dir / EXPORT_INFO).read_text(encoding="utf-8"))["quantization"]["attention"],
    )
