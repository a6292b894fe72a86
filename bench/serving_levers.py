"""Benchmark: what each serving lever does to in-process throughput (`OnnxEncoder`, no HTTP), one lever at a time
from the shipped configuration, on the same checkpoint and texts.

Levers: padded positions per model call; the thread layout (one two-thread call at a time, or one single-threaded
worker per core); onnxruntime's graph passes; which attention layers are quantized; GELU exact (`BiasGelu`) or
tanh-approximated (`FastGelu`). Workload: `--requests` requests of 8 abstracts of the bundled sample encoded one
after another, `--repeats` runs, the median reported. Writes bench/results/serving_levers.{json,md}.

    python bench/serving_levers.py --model artifacts/.../models/finetuned-RUN   # ~6 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.export import export_onnx
from embed_pipeline.core.onnx_runtime import CPU_BATCH_TOKENS, ONNX_FILE, OnnxEncoder
from embed_pipeline.core.quantization import quantize_int8
from embed_pipeline.defs.resources import SAMPLE_CORPUS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LEVEL = ort.GraphOptimizationLevel
# (name, level, optimizers turned off): the shipped passes first.
PASSES = (
    ("extended without skip-LayerNorm fusion (shipped)", LEVEL.ORT_ENABLE_EXTENDED, ["SkipLayerNormFusion"]),
    ("basic", LEVEL.ORT_ENABLE_BASIC, []),
    ("extended", LEVEL.ORT_ENABLE_EXTENDED, []),
    ("all", LEVEL.ORT_ENABLE_ALL, []),
)


def encoder(folder: Path, workers: int | None = None, passes: tuple = PASSES[0]) -> OnnxEncoder:
    """An `OnnxEncoder` on `folder` with `workers` and the graph `passes` (name, level, optimizers turned off)."""
    model = OnnxEncoder(folder, workers=workers)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, len(os.sched_getaffinity(0)) // model.workers)
    options.graph_optimization_level = passes[1]
    model.session = ort.InferenceSession(
        str(folder / ONNX_FILE), sess_options=options, providers=["CPUExecutionProvider"], disabled_optimizers=passes[2]
    )
    return model


def texts_per_s(model: OnnxEncoder, requests: list[list[str]], repeats: int, max_tokens: int = CPU_BATCH_TOKENS):
    """Median texts/s over `repeats` runs of encoding `requests` one after another."""
    model.embed(requests[0], max_tokens=max_tokens)
    rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        for texts in requests:
            model.embed(texts, max_tokens=max_tokens)
        rates.append(sum(map(len, requests)) / (time.perf_counter() - began))
    return round(float(np.median(rates)), 1)


def with_exact_gelu(folder: Path, out: Path) -> Path:
    """A copy of an int8 export whose GELU is exact (`BiasGelu`) again."""
    shutil.copytree(folder, out)
    model = onnx.load(str(out / ONNX_FILE))
    for node in model.graph.node:
        if node.op_type == "FastGelu":
            node.op_type = "BiasGelu"
    onnx.save(model, str(out / ONNX_FILE))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="sentence-transformers folder (default: the offline all-MiniLM-L6-v2).")
    parser.add_argument("--requests", type=int, default=32, help="Requests of 8 abstracts per measurement.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    corpus = [json.loads(line) for line in (SAMPLE_CORPUS / "corpus.jsonl").open()]
    passages = [d["text"] for d in corpus]
    titles = [d["title"] for d in corpus if d.get("title")]
    requests = [passages[(i * 8) % len(passages) :][:8] for i in range(args.requests)]
    work = Path(tempfile.mkdtemp(prefix="serving_levers."))
    fp32 = work / "fp32"
    export_onnx(base_model_path(args.model), fp32)
    quantize_int8(fp32, work / "int8", short_texts=titles)  # shipped: attention chosen on the corpus's titles
    quantize_int8(fp32, work / "int8-no-attention")
    quantize_int8(fp32, work / "int8-all-attention", short_texts=titles, max_cosine_loss=1.0)
    int8 = work / "int8"
    chosen = json.loads((int8 / "export.json").read_text())["quantization"]["attention"]

    rows: list[dict] = []

    def row(lever: str, setting: str, value: float) -> None:
        rows.append({"lever": lever, "setting": setting, "texts_per_s": value})
        print(f"{lever:24s} {setting:60s} {value:7.1f}", flush=True)

    for tokens in (8192, 2048, 512, 256):
        row(
            "positions per call",
            f"{tokens}, one two-thread call at a time",
            texts_per_s(encoder(int8, 1), requests, args.repeats, tokens),
        )
    for tokens in (512, 256, 128):
        row(
            "positions per call",
            f"{tokens}, one single-threaded worker per core",
            texts_per_s(encoder(int8), requests, args.repeats, tokens),
        )
    row("thread layout", "one two-thread call at a time", texts_per_s(encoder(int8, 1), requests, args.repeats))
    row(
        "thread layout",
        "one single-threaded worker per core (shipped)",
        texts_per_s(encoder(int8), requests, args.repeats),
    )
    for passes in PASSES:
        row("graph passes", passes[0], texts_per_s(encoder(int8, passes=passes), requests, args.repeats))
    quantized = f"{len(chosen['quantized'])} of {len(chosen['quantized']) + len(chosen['kept_fp32'])} (shipped)"
    for setting, folder in (
        ("none", work / "int8-no-attention"),
        (quantized, int8),
        ("all", work / "int8-all-attention"),
    ):
        row("attention quantized", setting, texts_per_s(encoder(folder), requests, args.repeats))
    exact = with_exact_gelu(int8, work / "int8-exact-gelu")
    row("GELU", "exact (BiasGelu)", texts_per_s(encoder(exact), requests, args.repeats))
    row("GELU", "tanh approximation (FastGelu, shipped)", texts_per_s(encoder(int8), requests, args.repeats))
    for tokens in (8192, 256):
        row(
            "fp32 positions per call",
            f"{tokens}, shipped layout",
            texts_per_s(encoder(fp32), requests, args.repeats, tokens),
        )

    meta = {
        "command": "python " + " ".join(sys.argv),
        "commit": commit.strip(),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "date": time.strftime("%Y-%m-%d"),
        "requests": args.requests,
        "repeats": args.repeats,
        "attention_chosen": chosen,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving_levers.json").write_text(json.dumps(meta, indent=2) + "\n")
    lines = [
        f"`{meta['command']}` at commit {meta['commit']} on {meta['machine']}, {meta['date']}: in-process "
        f"`OnnxEncoder`, {args.requests} requests of 8 abstracts encoded one after another, median of "
        f"{args.repeats} runs; int8 export unless the lever says fp32; every other setting as shipped.",
        "",
        "| lever | setting | texts/s |",
        "|---|---|---:|",
        *(f"| {r['lever']} | {r['setting']} | {r['texts_per_s']} |" for r in rows),
    ]
    (RESULTS / "serving_levers.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
