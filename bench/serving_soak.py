"""Soak: the int8 server under a hostile mix of requests, 32 clients on loopback, bounded in time.

For `--seconds` (default 60) `--concurrency` clients (default 32) send a seeded random mix: valid short
queries, valid batches of abstracts, valid long inputs (16 texts of 30,000 characters), and bad ones: a lone
surrogate, malformed JSON, an empty input, a body over the limit (declared, and chunked without a length), a
missing token and an unknown path. Reports the valid requests' success rate and p50/p99 latency, the status
counts of every kind (5xx separately), and the server's resident memory before, at its peak and after.
Writes bench/results/serving_soak.{json,md}.

    python bench/serving_soak.py                  # ~3 min on 2 cores, export included
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from serving_speed import RESULTS, start_server  # bench/ is on sys.path when run as a script

from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.export import export_onnx, quantize_int8
from embed_pipeline.defs.resources import SAMPLE_CORPUS
from embed_pipeline.serving.limits import ServeLimits

TOKEN = "soak-token"
LIMIT = ServeLimits().max_body_bytes


def request_kinds(passages: list[str]) -> dict[str, tuple[float, bool, dict]]:
    """name -> (share of requests, valid?, httpx.request keyword arguments)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    json_headers = {**auth, "Content-Type": "application/json"}
    long_text = (" ".join(passages))[:30_000]

    def too_big():
        piece = b"x" * 2**20
        for _ in range(2 * LIMIT // len(piece) + 1):
            yield piece

    return {
        "valid: one short query": (0.40, True, {"json": {"input": "statins and cholesterol"}, "headers": auth}),
        "valid: 8 abstracts": (0.20, True, {"json": {"input": passages[:8]}, "headers": auth}),
        "valid: 16 x 30,000 characters": (0.04, True, {"json": {"input": [long_text] * 16}, "headers": auth}),
        "bad: lone surrogate": (0.08, False, {"content": b'{"input": ["ok", "\\ud800"]}', "headers": json_headers}),
        "bad: malformed JSON": (0.05, False, {"content": b'{"input": ["ok"', "headers": json_headers}),
        "bad: empty input": (0.05, False, {"json": {"input": ""}, "headers": auth}),
        "bad: body over the limit (declared)": (
            0.04,
            False,
            {"content": b"x" * (LIMIT + 1), "headers": json_headers},
        ),
        "bad: body over the limit (chunked)": (0.04, False, {"content": too_big, "headers": json_headers}),
        "bad: no token": (0.06, False, {"json": {"input": "hello"}}),
        "bad: unknown path": (0.04, False, {"json": {"input": "hello"}, "headers": auth, "path": "/v1/embedding"}),
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(url: str, pid: int, kinds: dict, seconds: float, concurrency: int, seed: int) -> dict:
    names = list(kinds)
    weights = [kinds[n][0] for n in names]
    outcomes: list[tuple[str, str, float]] = []
    samples: list[tuple[float, float]] = []  # (seconds into the soak, resident MB)
    began = time.monotonic()
    stop = began + seconds

    def sample_memory() -> None:
        while time.monotonic() < stop:
            samples.append((time.monotonic() - began, rss_mb(pid)))
            time.sleep(0.25)

    def client(worker: int) -> None:
        rng = random.Random(seed + worker)
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < stop:
                name = rng.choices(names, weights)[0]
                options = dict(kinds[name][2])
                path = options.pop("path", "/v1/embeddings")
                if callable(options.get("content")):
                    options["content"] = options["content"]()
                began = time.perf_counter()
                try:
                    status = str(http.post(url + path, **options).status_code)
                except httpx.TransportError as exc:  # an over-limit upload cut off by the server, or a failure
                    status = f"connection closed ({type(exc).__name__})"
                outcomes.append((name, status, time.perf_counter() - began))

    memory = threading.Thread(target=sample_memory, daemon=True)
    memory.start()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    memory.join()
    by_kind = {name: dict(Counter(s for n, s, _ in outcomes if n == name)) for name in names}
    valid = [(s, t) for n, s, t in outcomes if kinds[n][1]]
    latencies = np.array([t for s, t in valid if s == "200"]) * 1000
    statuses = Counter(s for _, s, _ in outcomes)
    return {
        "requests": len(outcomes),
        "valid_requests": len(valid),
        "valid_succeeded": sum(s == "200" for s, _ in valid),
        "valid_success_rate": round(sum(s == "200" for s, _ in valid) / max(1, len(valid)), 4),
        "valid_p50_ms": round(float(np.percentile(latencies, 50)), 1) if len(latencies) else None,
        "valid_p99_ms": round(float(np.percentile(latencies, 99)), 1) if len(latencies) else None,
        "status_4xx": sum(v for k, v in statuses.items() if k.startswith("4")),
        "status_5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
        "peak_rss_mb": round(max(mb for _, mb in samples), 1),
        # the peak of each tenth of the run: a plateau, not a climb, means memory is bounded
        "peak_rss_mb_by_tenth": [
            round(
                max((mb for t, mb in samples if tenth * seconds / 10 <= t < (tenth + 1) * seconds / 10), default=0), 1
            )
            for tenth in range(10)
        ],
        "by_kind": by_kind,
    }


def markdown(meta: dict) -> str:
    r = meta["result"]
    lines = [
        f"# Server soak: {meta['seconds']} s, {meta['concurrency']} clients, int8 export of {Path(meta['model']).name}",
        "",
        f"`{meta['command']}` on {meta['machine']}, {meta['date']}.",
        "",
        f"- valid requests: {r['valid_succeeded']} of {r['valid_requests']} succeeded "
        f"({r['valid_success_rate']:.2%}); p50 {r['valid_p50_ms']} ms, p99 {r['valid_p99_ms']} ms",
        f"- all requests: {r['requests']}; 4xx {r['status_4xx']}, **5xx {r['status_5xx']}**",
        f"- server resident memory: {meta['rss_before_mb']} MB before, {r['peak_rss_mb']} MB at the peak, "
        f"{meta['rss_after_mb']} MB after; the peak in each tenth of the run: "
        + ", ".join(f"{mb:.0f}" for mb in r["peak_rss_mb_by_tenth"])
        + " MB",
        f"- the server answered its readiness probe afterwards: {meta['ready_after']}",
        "",
        "| request kind | share | answers |",
        "|---|---|---|",
    ]
    for name, counts in r["by_kind"].items():
        answers = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))
        lines.append(f"| {name} | {meta['shares'][name]:.0%} | {answers} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="sentence-transformers folder (default: the offline all-MiniLM-L6-v2).")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model_path = base_model_path(args.model)
    passages = [json.loads(line)["text"] for line in (SAMPLE_CORPUS / "corpus.jsonl").open()]
    work = Path(tempfile.mkdtemp(prefix="serving_soak."))
    export_onnx(model_path, work / "fp32")
    quantize_int8(work / "fp32", work / "int8")
    os.environ["SOAK_TOKEN"] = TOKEN
    process, url = start_server(work / "int8", "--api-key-env", "SOAK_TOKEN")
    try:
        kinds = request_kinds(passages)
        # Warm-up: one request of each valid kind, so "before" is the serving footprint, not the bare process.
        for _, valid, options in kinds.values():
            if valid:
                httpx.post(f"{url}/v1/embeddings", timeout=120, **options).raise_for_status()
        before = rss_mb(process.pid)
        result = soak(url, process.pid, kinds, args.seconds, args.concurrency, args.seed)
        time.sleep(2)
        after = rss_mb(process.pid)
        alive = httpx.get(f"{url}/v1/health/ready", timeout=10).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    meta = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{os.cpu_count()} CPU cores, no GPU",
        "date": time.strftime("%Y-%m-%d"),
        "model": model_path,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "shares": {name: share for name, (share, _, _) in kinds.items()},
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "ready_after": alive,
        "result": result,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving_soak.json").write_text(json.dumps(meta, indent=2) + "\n")
    (RESULTS / "serving_soak.md").write_text(markdown(meta))
    print(markdown(meta))


if __name__ == "__main__":
    main()
