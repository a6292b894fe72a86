"""Benchmark: texts/s and latency of PyTorch `encode` against the server over the fp32 and int8 exports.

The same workload for every system: requests of `--texts-per-request` SciFact passages (the bundled
sample's abstracts), sent by 1, 8 and 32 concurrent clients, `--requests` requests per setting after a
warm-up. PyTorch runs `SentenceTransformer.encode` in the clients' threads; the servers are
`embed-pipeline serve` subprocesses (dynamic batching on) called over HTTP. Retrieval quality of the two
exports is compared on the sample's 150 real claims (`evaluate_on_beir`). Writes
bench/results/serving_speed.{json,md}.

    python bench/serving_speed.py                       # the offline all-MiniLM-L6-v2, ~12 min on 2 cores
    python bench/serving_speed.py --model artifacts/models/finetuned-RUN
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.export import export_onnx, quantize_int8
from embed_pipeline.defs.resources import SAMPLE_CORPUS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CONCURRENCY = (1, 8, 32)
PYTORCH, FP32, INT8 = "PyTorch encode (sentence-transformers)", "server, ONNX fp32", "server, ONNX int8"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(onnx_dir: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """`embed-pipeline serve` on `onnx_dir` (with extra `flags`) on a free port, once it is ready."""
    port = _free_port()
    cli = Path(sys.executable).parent / "embed-pipeline"
    process = subprocess.Popen(
        [str(cli), "serve", "--model", str(onnx_dir), "--port", str(port), "--max-batch", "256", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    sys.exit(f"server on {onnx_dir} did not become ready")


def measure(call, requests: list[list[str]], concurrency: int, repeats: int) -> dict:
    """Run `call(texts)` for every request with `concurrency` clients, `repeats` times; the median run's
    texts/s and the latency percentiles over all runs (this machine's speed varies by 10-20% run to run)."""
    call(requests[0])  # warm-up
    latencies: list[float] = []
    rates: list[float] = []

    def timed(texts: list[str]) -> None:
        began = time.perf_counter()
        call(texts)
        latencies.append(time.perf_counter() - began)

    for _ in range(repeats):
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(timed, requests))
        rates.append(sum(len(r) for r in requests) / (time.perf_counter() - started))
    ms = np.array(latencies) * 1000
    return {
        "texts_per_s": round(float(np.median(rates)), 1),
        "texts_per_s_runs": [round(r, 1) for r in rates],
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="sentence-transformers folder (default: the offline all-MiniLM-L6-v2).")
    parser.add_argument("--requests", type=int, default=48, help="Requests per system and concurrency.")
    parser.add_argument("--texts-per-request", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="Runs per setting; the median is reported.")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from embed_pipeline.core.report import REAL, evaluate_on_beir

    model_path = base_model_path(args.model)
    passages = [json.loads(line)["text"] for line in (SAMPLE_CORPUS / "corpus.jsonl").open()]
    n = args.texts_per_request
    requests = [passages[(i * n) % len(passages) :][:n] for i in range(args.requests)]
    work = Path(tempfile.mkdtemp(prefix="serving_speed."))
    fp32, int8 = work / "fp32", work / "int8"
    export_onnx(model_path, fp32)
    quantize_int8(fp32, int8)

    rows: dict[str, dict[int, dict]] = {}
    model = SentenceTransformer(model_path, device="cpu")
    rows[PYTORCH] = {
        c: measure(lambda texts, m=model: m.encode(texts, batch_size=32), requests, c, args.repeats)
        for c in CONCURRENCY
    }
    for name, folder in ((FP32, fp32), (INT8, int8)):
        process, url = start_server(folder)
        try:
            with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=64)) as client:

                def call(texts: list[str], client=client, url=url) -> None:
                    client.post(f"{url}/v1/embeddings", json={"input": texts}).raise_for_status()

                rows[name] = {c: measure(call, requests, c, args.repeats) for c in CONCURRENCY}
        finally:
            process.terminate()
            process.wait(timeout=30)

    quality = evaluate_on_beir(
        SAMPLE_CORPUS,
        {"fp32": str(fp32), "int8": str(int8)},
        AutoTokenizer.from_pretrained(model_path),
    )["query_sets"][REAL]["systems"]
    meta = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "date": time.strftime("%Y-%m-%d"),
        "model": model_path,
        "texts_per_request": n,
        "requests": args.requests,
        "repeats": args.repeats,
        "fp32_mb": round((fp32 / "model.onnx").stat().st_size / 2**20, 1),
        "int8_mb": round((int8 / "model.onnx").stat().st_size / 2**20, 1),
        "fused_operators": json.loads((fp32 / "export.json").read_text())["fused"],
        "ndcg@10": {k: round(v["nDCG@10"], 4) for k, v in quality.items() if k in ("fp32", "int8")},
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving_speed.json").write_text(json.dumps(meta, indent=2))
    (RESULTS / "serving_speed.md").write_text(markdown(meta))
    print(markdown(meta))


def markdown(meta: dict) -> str:
    header = " | ".join(f"c={c}: texts/s, p50, p99 ms" for c in CONCURRENCY)
    lines = [
        f"`{meta['command']}` on {meta['machine']}, {meta['date']}: {meta['requests']} requests of "
        f"{meta['texts_per_request']} SciFact abstracts per system and concurrency c, {meta['repeats']} runs each "
        "(texts/s: the median run; latency percentiles over all runs).",
        "",
        f"| system | {header} |",
        "|---|" + "---:|" * len(CONCURRENCY),
    ]
    for name, by_c in meta["rows"].items():
        cells = " | ".join(f"{r['texts_per_s']}, {r['p50_ms']}, {r['p99_ms']}" for r in by_c.values())
        lines.append(f"| {name} | {cells} |")
    q = meta["ndcg@10"]
    baseline, int8 = meta["rows"][PYTORCH], meta["rows"][INT8]
    ratios = ", ".join(f"c={c} {int8[c]['texts_per_s'] / baseline[c]['texts_per_s']:.2f}x" for c in baseline)
    lines += [
        "",
        f"int8 server / PyTorch encode, texts/s: {ratios}.",
        "",
        f"Exports: fp32 {meta['fp32_mb']} MB, int8 {meta['int8_mb']} MB, fused operators "
        f"{', '.join(f'{op} {n}' for op, n in meta['fused_operators'].items()) or 'none'}; "
        "nDCG@10 on the sample's 150 real claims: "
        f"fp32 {q['fp32']}, int8 {q['int8']} ({q['int8'] - q['fp32']:+.4f}).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
