"""Dynamic int8 quantization of an ONNX export, with attention quantized layer by layer where short texts allow it.

The projections, feed-forward layers and embedding tables are always quantized (weights int8 per channel,
activations at run time). A fused attention layer's QKV projection can be quantized too (onnxruntime's
`QAttention`): 79 → 111 texts/s on MiniLM (`bench/serving_levers.py`), but all six layers at once cost
short texts up to 0.014 cosine to the fp32 export. So with `short_texts`, `quantize_int8` measures each
attention layer's cost on them and keeps in fp32 the costliest layers until the short texts' lowest cosine to
the fp32 export is within `max_cosine_loss` of the export with all attention in fp32; every trial is recorded
in export.json. The int8 graph also computes GELU by its tanh approximation (`FastGelu`): 97.0 → 101.6
texts/s, with the same cosines to fp32 (0.9879 against 0.9878 at the lowest of the sample's 150 claims).

Example::

    quantize_int8("models/onnx", "models/onnx-int8", short_texts=questions)  # choose attention layers
    json.loads(Path("models/onnx-int8/export.json").read_text())["quantization"]["attention"]
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from embed_pipeline.core.atomic import staging_dir
from embed_pipeline.core.onnx_runtime import EXPORT_INFO, ONNX_FILE, OnnxEncoder
from embed_pipeline.core.settings import INT8_EXPORT

# Quantized to int8: the projections and feed-forward layers, and the (fused) embedding tables.
INT8_OPERATORS = ["MatMul", "EmbedLayerNormalization", "Gather"]
ATTENTION = "Attention"  # onnxruntime's fused attention; quantized it becomes QAttention


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


@dataclass(frozen=True)
class AttentionTrial:
    """One measured set of quantized attention layers: the short texts' lowest cosine to the fp32 export."""

    quantized: list[str]
    min_cosine: float
    accepted: bool


@dataclass(frozen=True)
class AttentionChoice:
    """The attention layers quantized, those kept in fp32, the short texts' lowest cosine to the fp32 export with
    that choice, the floor it had to reach, every trial on the way and each layer's cost measured alone."""

    quantized: list[str]
    kept_fp32: list[str]
    min_cosine: float
    floor: float
    texts: int
    trials: list[AttentionTrial] = field(default_factory=list)
    alone: dict[str, float] = field(default_factory=dict)  # each layer's lowest cosine when quantized alone


def short_text_cosines(reference: np.ndarray, onnx_dir: Path, texts: list[str]) -> np.ndarray:
    """Cosine of each text's embedding by the export in `onnx_dir` to its `reference` (fp32) embedding."""
    return (reference * OnnxEncoder(onnx_dir).encode(texts)).sum(axis=1)


def attention_parity(min_cosine: float, floor: float) -> bool:
    """The parity check on quantized attention: the short texts' lowest cosine must reach the floor."""
    return min_cosine >= floor


def quantize_int8(
    onnx_dir: str | Path,
    out_dir: str | Path,
    short_texts: list[str] | None = None,
    max_cosine_loss: float = INT8_EXPORT.attention_max_cosine_loss,
) -> Path:
    """Dynamic int8 quantization of an ``export_onnx`` folder into ``out_dir`` (same layout, so ``OnnxEncoder``
    and the server load it unchanged): the weights of ``INT8_OPERATORS`` int8 per channel (per-tensor loses
    about 0.07 cosine on MiniLM), activations quantized at run time. Attention stays fp32 without
    `short_texts`; with them, the layers whose quantization the texts allow are quantized too
    (`choose_attention`). On CPUs without VNNI the weights use 7 bits (``reduce_range``) so the u8 x s8
    products cannot saturate. ``export.json`` records the method and the attention choice."""
    onnx_dir, out_dir = Path(onnx_dir), Path(out_dir)
    info = json.loads((onnx_dir / EXPORT_INFO).read_text(encoding="utf-8"))
    source = onnx_dir / ONNX_FILE
    reduce_range = not cpu_has_vnni()
    graph = onnx.load(str(source), load_external_data=False).graph
    layers = [node.name for node in graph.node if node.op_type == ATTENTION]
    with staging_dir(out_dir) as staging:
        for item in onnx_dir.iterdir():
            if item.is_file() and item.name != ONNX_FILE:
                shutil.copy2(item, staging / item.name)

        written: list[str] | None = None  # the attention layers of the candidate now in the staging folder

        def quantize(attention: list[str]) -> Path:
            """Quantize into the staging folder with the `attention` layers quantized, the others fp32 (unless that
            candidate is the one already there)."""
            nonlocal written
            if attention != written:
                _quantize_dynamic(source, staging / ONNX_FILE, attention, layers, reduce_range)
                written = list(attention)
            return staging

        choice = None
        if short_texts and layers:
            reference = OnnxEncoder(onnx_dir).encode(short_texts)
            choice = choose_attention(quantize, reference, short_texts, layers, max_cosine_loss)
        quantize(choice.quantized if choice else [])
        info["quantization"] = {
            "method": "dynamic int8",
            "per_channel": True,
            "reduce_range": reduce_range,
            "gelu": "FastGelu (tanh approximation)",
            "operators": INT8_OPERATORS + ([ATTENTION] if choice and choice.quantized else []),
            "attention": asdict(choice) if choice else {"quantized": [], "kept_fp32": layers},
        }
        info["source_onnx"] = str(onnx_dir.resolve())
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out_dir / ONNX_FILE


def choose_attention(
    quantize, reference: np.ndarray, texts: list[str], layers: list[str], max_cosine_loss: float
) -> AttentionChoice:
    """The attention layers to quantize: all of them if the short texts' lowest cosine to their fp32 `reference`
    stays within `max_cosine_loss` of the all-fp32-attention export's; else, measuring each layer alone, the
    costliest layers go back to fp32 one at a time until it does. `quantize(layers)` writes a candidate and
    returns its folder."""

    def lowest(quantized: list[str]) -> float:
        return round(float(short_text_cosines(reference, quantize(quantized), texts).min()), 5)

    floor = round(lowest([]) - max_cosine_loss, 5)
    trials: list[AttentionTrial] = []

    def trial(quantized: list[str]) -> bool:
        cosine = lowest(quantized)
        trials.append(AttentionTrial(list(quantized), cosine, attention_parity(cosine, floor)))
        return trials[-1].accepted

    quantized, alone = list(layers), {}
    if not trial(quantized):
        alone = {layer: lowest([layer]) for layer in layers}
        for layer in sorted(layers, key=alone.__getitem__):  # lowest cosine alone = costliest first
            quantized.remove(layer)
            if not quantized or trial(quantized):
                break
    accepted = trials[-1] if trials[-1].accepted else None
    return AttentionChoice(
        quantized=accepted.quantized if accepted else [],
        kept_fp32=[layer for layer in layers if not accepted or layer not in accepted.quantized],
        min_cosine=accepted.min_cosine if accepted else round(floor + max_cosine_loss, 5),
        floor=floor,
        texts=len(texts),
        trials=trials,
        alone=alone,
    )


def _quantize_dynamic(source: Path, target: Path, attention: list[str], layers: list[str], reduce_range: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=reduce_range,
        op_types_to_quantize=INT8_OPERATORS + [ATTENTION],
        nodes_to_exclude=[layer for layer in layers if layer not in attention],
        # Fused (contrib) operators defeat shape inference; their outputs are float32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    model = onnx.load(str(target))
    for node in model.graph.node:
        if node.op_type == "BiasGelu":  # same inputs (x, bias) and domain: GELU(x + bias), tanh-approximated
            node.op_type = "FastGelu"
    onnx.save(model, str(target))
