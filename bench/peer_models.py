"""Standard transformer ONNX folders of a sentence-transformers model, for the peer embedding systems.

infinity-emb's ``optimum`` engine and fastembed do not load a sentence-transformers folder or the
pipeline's pooled export: they want the plain transformer graph (inputs ``input_ids``,
``attention_mask``, ``token_type_ids``; output ``last_hidden_state``, as ``optimum-cli export onnx
--task feature-extraction`` writes it) beside ``config.json`` and the tokenizer files, and pool and
normalise themselves. Runs in the project's venv (torch, transformers, onnxruntime); nothing here is
imported by the pipeline.

    python bench/peer_models.py MODEL_DIR OUT_DIR   # writes OUT_DIR/fp32 and OUT_DIR/int8

Both peers truncate at the limits these folders declare, so they are set to the model's
``max_seq_length`` (see ``standard_onnx``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

FP32_FILE = "model.onnx"
# infinity's optimum engine prefers, on CPU, an .onnx file with "quantize" in its name.
INT8_FILE = "model_quantized.onnx"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
INT8_OPERATORS = ["MatMul", "Gather"]


class _LastHiddenState(torch.nn.Module):
    """A Hugging Face encoder that returns only its ``last_hidden_state``."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state


def _max_seq_length(model_dir: Path) -> int:
    """sentence-transformers' ``max_seq_length`` (sentence_bert_config.json, else the tokenizer's limit)."""
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        value = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
        if value:
            return int(value)
    return int(AutoTokenizer.from_pretrained(model_dir).model_max_length)


def _fresh_dir(out_dir: Path, source: Path) -> None:
    """Empty (or create) ``out_dir``: infinity picks among every .onnx file it finds there, and
    fastembed reads any special_tokens_map.json. Refuses to empty ``source``."""
    if out_dir.resolve() == source.resolve():
        raise ValueError(f"out_dir {out_dir} is the source folder")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)


def standard_onnx(model_dir: Path, out_dir: Path, opset: int = 17) -> Path:
    """Export the transformer of the sentence-transformers folder ``model_dir`` to ``out_dir/model.onnx``
    (fp32, dynamic batch and sequence axes) with ``config.json`` and the tokenizer files; return the file.
    ``out_dir`` is emptied first.

    Truncation is aligned with sentence-transformers: ``tokenizer_config.json`` gets ``model_max_length``
    and ``max_length`` = ``max_seq_length`` (fastembed truncates at the smaller of the two), and
    ``config.json`` gets ``max_position_embeddings`` = ``max_seq_length`` (infinity's optimum engine
    truncates there; the graph's position table keeps its size). Pooling and normalisation are not
    in the graph: tell the peer (infinity ``--pooling-method mean``, fastembed ``PoolingType.MEAN``).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    max_len = _max_seq_length(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # Eager attention traces to plain MatMul/Softmax, which onnxruntime's optimizer (used by infinity) fuses.
    transformer = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    sample = tokenizer(
        ["a short text", "a somewhat longer text to pad the other one"],
        padding=True,
        return_tensors="pt",
        return_token_type_ids=True,
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {0: "batch", 1: "sequence"}
    _fresh_dir(out_dir, model_dir)
    onnx_path = out_dir / FP32_FILE
    with torch.no_grad():
        torch.onnx.export(
            _LastHiddenState(transformer),
            tuple(sample[name] for name in names),
            str(onnx_path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={name: axes for name in [*names, "last_hidden_state"]},
            opset_version=opset,
            dynamo=False,
        )

    config = transformer.config.to_dict()
    config["max_position_embeddings"] = min(max_len, config.get("max_position_embeddings", max_len))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out_dir / name)
    tok_config_path = out_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text(encoding="utf-8"))
    tok_config["model_max_length"] = tok_config["max_length"] = max_len
    tok_config_path.write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    return onnx_path


def standard_onnx_int8(fp32_dir: Path, out_dir: Path) -> Path:
    """Dynamic int8 quantization of a ``standard_onnx`` folder into ``out_dir/model_quantized.onnx`` (weights
    of MatMul and Gather int8 per channel, activations quantized at run time), with the same config and
    tokenizer files; return the file. ``out_dir`` is emptied first."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_dir, out_dir = Path(fp32_dir), Path(out_dir)
    _fresh_dir(out_dir, fp32_dir)
    for item in fp32_dir.iterdir():
        if item.is_file() and item.suffix != ".onnx":
            shutil.copy2(item, out_dir / item.name)
    onnx_path = out_dir / INT8_FILE
    quantize_dynamic(
        str(fp32_dir / FP32_FILE),
        str(onnx_path),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=False,
        op_types_to_quantize=INT8_OPERATORS,
    )
    return onnx_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="sentence-transformers folder")
    parser.add_argument("out_dir", type=Path, help="writes OUT_DIR/fp32 and OUT_DIR/int8")
    args = parser.parse_args()
    print(standard_onnx(args.model_dir, args.out_dir / "fp32"))
    print(standard_onnx_int8(args.out_dir / "fp32", args.out_dir / "int8"))


if __name__ == "__main__":
    main()
