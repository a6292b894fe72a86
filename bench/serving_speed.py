"""Benchmark: our embedding server against PyTorch `encode` and the CPU embedding servers a user would deploy instead,
on the same model and the same texts.

Systems (rows of bench/results/serving_speed.json):
- `pytorch-encode`: sentence-transformers `encode(texts, batch_size=32)` in the clients' threads;
- `server-fp32`, `server-int8`: `embed-pipeline serve` on the pipeline's fp32 and int8 exports (the int8 one
  with its attention layers chosen on the corpus's titles, `quantize_int8(short_texts=...)`), over HTTP;
- `infinity-emb`: infinity-emb's optimum (onnxruntime) engine, fp32 and int8, over HTTP;
- `fastembed`: fastembed in-process, fp32 and int8.
The peers run in their own venv (bench/peers/requirements.txt, created on first use under bench/.cache) on
the standard transformer ONNX of the same checkpoint (bench/peer_models.py), quantized the same way.

Workload: requests of `--texts-per-request` passages of the bundled sample, sent by 1, 8 and 32 concurrent
clients, `--requests` per setting, `--repeats` runs (texts/s: the median run; latency percentiles over all
runs). Beside it: one short query (5-15 words, the sample's claims) per request at concurrency 1; the int8
server's start-up time and resident memory; the share of padded positions; each system's cosine to PyTorch;
nDCG@10 on the sample's real claims of the fp32 export and of the int8 export as served (over HTTP).

    python bench/serving_speed.py --model artifacts/.../models/finetuned-RUN   # the demo's checkpoint; ~25 min
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.export import export_onnx
from embed_pipeline.core.onnx_runtime import CPU_BATCH_TOKENS, padding_share, plan_batches
from embed_pipeline.core.quantization import quantize_int8
from embed_pipeline.defs.resources import SAMPLE_CORPUS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_models import INT8_FILE, standard_onnx, standard_onnx_int8  # noqa: E402
from timing import measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PEERS_VENV = ROOT / "bench" / ".cache" / "peers-venv"
CONCURRENCY = (1, 8, 32)
OURS = ("pytorch-encode", "server-fp32", "server-int8")
PEERS = ("infinity-emb", "fastembed")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(process: subprocess.Popen, url: str, what: str) -> float:
    """Seconds until `url` answers 200 (exits if the process dies or 180 s pass)."""
    began = time.monotonic()
    while time.monotonic() - began < 180:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic() - began
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    process.kill()
    sys.exit(f"{what} did not become ready within 180 s")


def start_ours(onnx_dir: Path) -> tuple[subprocess.Popen, str, float]:
    """`embed-pipeline serve` on `onnx_dir`: the process, its URL and its start-up seconds."""
    port = _free_port()
    cli = Path(sys.executable).parent / "embed-pipeline"
    command = [str(cli), "serve", "--model", str(onnx_dir), "--port", str(port), "--max-batch", "256"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    url = f"http://127.0.0.1:{port}"
    return process, url, _ready(process, f"{url}/v1/health/ready", f"server on {onnx_dir}")


def start_infinity(folder: Path) -> tuple[subprocess.Popen, str, float]:
    """infinity-emb's optimum engine on a `peer_models.py` folder. Started inside the folder with `--model-id .`
    and a fresh HF_HOME: with an absolute path infinity writes into the model folder, and it reuses any
    optimized model cached under the same id (bench/peers/requirements.txt)."""
    port = _free_port()
    command = [
        str(PEERS_VENV / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--served-model-name", "peer",
        "--engine", "optimum", "--device", "cpu", "--pooling-method", "mean", "--batch-size", "32",
        "--no-vector-disk-cache", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**ENV, "HF_HOME": tempfile.mkdtemp(prefix="infinity-home.")}
    process = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    return process, url, _ready(process, f"{url}/health", f"infinity on {folder}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return round(int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024, 1)


def http_system(url: str, path: str, requests: list[list[str]], short: list[list[str]], check: list[str], args):
    """Throughput at every concurrency, the short-query latency and the vectors of `check`, over HTTP."""
    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=64)) as client:

        def post(texts: list[str]) -> list[list[float]]:
            response = client.post(f"{url}{path}", json={"model": "peer", "input": texts})
            response.raise_for_status()
            return [d["embedding"] for d in sorted(response.json()["data"], key=lambda d: d["index"])]

        rows = {c: measure(post, requests, c, args.repeats) for c in CONCURRENCY}
        return rows, measure(post, short, 1, 1), np.array(post(check), dtype=np.float32)


def peers_python() -> Path:
    """The peers' venv (created from bench/peers/requirements.txt on first use)."""
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
        requirements = ROOT / "bench" / "peers" / "requirements.txt"
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    return python


def fastembed_system(folder: Path, model_file: str, requests, short, check, args):
    job = {
        "folder": str(folder),
        "model_file": model_file,
        "dim": 384,
        "requests": requests,
        "concurrency": list(CONCURRENCY),
        "repeats": args.repeats,
        "short": short,
        "check": check,
    }
    runner = ROOT / "bench" / "peer_fastembed.py"
    done = subprocess.run(
        [str(peers_python()), str(runner)], input=json.dumps(job), capture_output=True, text=True, env=ENV
    )
    if done.returncode:
        sys.exit(f"fastembed on {folder} failed:\n{done.stderr[-2000:]}")
    out = json.loads(done.stdout)
    rows = {int(c): row for c, row in out["rows"].items()}
    return rows, out["short"], np.array(out["vectors"], dtype=np.float32)


def padding_before_after(token_counts: list[int], n: int) -> dict:
    """Padded share of the positions computed, for each request's texts alone and for calls merging 32 texts of
    several requests (as under concurrency): before, each such group run as one call padded to its longest text
    (the server's calls until this change); after, length-sorted calls of `CPU_BATCH_TOKENS` (`plan_batches`)."""
    single = [list(range(i, min(i + n, len(token_counts)))) for i in range(0, len(token_counts), n)]
    merged = [list(range(i, min(i + 32, len(token_counts)))) for i in range(0, len(token_counts), 32)]
    after_single = [
        [rows[i] for i in batch]
        for rows in single
        for batch in plan_batches([token_counts[r] for r in rows], CPU_BATCH_TOKENS, 32)
    ]
    after_merged = plan_batches(token_counts, CPU_BATCH_TOKENS, 32)
    return {
        "one_request_before": round(padding_share(token_counts, single), 4),
        "one_request_after": round(padding_share(token_counts, after_single), 4),
        "merged_before": round(padding_share(token_counts, merged), 4),
        "merged_after": round(padding_share(token_counts, after_merged), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="sentence-transformers folder (default: the offline all-MiniLM-L6-v2).")
    parser.add_argument("--requests", type=int, default=48, help="Requests per system and concurrency.")
    parser.add_argument("--texts-per-request", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="Runs per setting; the median is reported.")
    parser.add_argument("--short-queries", type=int, default=200, help="Single-query requests for the latency.")
    parser.add_argument("--starts", type=int, default=3, help="Start-ups of the int8 server timed.")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from embed_pipeline.core.onnx_runtime import OnnxEncoder
    from embed_pipeline.core.report import REAL, evaluate_on_beir

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    model_path = base_model_path(args.model)
    corpus = [json.loads(line) for line in (SAMPLE_CORPUS / "corpus.jsonl").open()]
    passages = [d["text"] for d in corpus]
    titles = [d["title"] for d in corpus if d.get("title")]
    claims = [json.loads(line)["text"] for line in (SAMPLE_CORPUS / "queries.jsonl").open()]
    short = [[q] for q in claims if 5 <= len(q.split()) <= 15][: args.short_queries]
    n = args.texts_per_request
    requests = [passages[(i * n) % len(passages) :][:n] for i in range(args.requests)]
    check = passages[:16] + [q[0] for q in short[:16]]

    work = Path(tempfile.mkdtemp(prefix="serving_speed."))
    fp32, int8 = work / "fp32", work / "int8"
    export_onnx(model_path, fp32)
    quantize_int8(fp32, int8, short_texts=titles)  # attention chosen on the corpus's own short texts
    standard_onnx(Path(model_path), work / "peer-fp32")
    standard_onnx_int8(work / "peer-fp32", work / "peer-int8")

    results: dict[tuple[str, str], tuple[dict, dict, np.ndarray]] = {}
    model = SentenceTransformer(model_path, device="cpu")
    reference = model.encode(check, normalize_embeddings=True)

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=32)

    results["pytorch-encode", "fp32"] = (
        {c: measure(encode, requests, c, args.repeats) for c in CONCURRENCY},
        measure(encode, short, 1, 1),
        reference,
    )

    startup: dict = {}
    quality: dict = {}
    for system, folder in (("server-fp32", fp32), ("server-int8", int8)):
        process, url, seconds = start_ours(folder)
        try:
            results[system, system[-4:]] = http_system(url, "/v1/embeddings", requests, short, check, args)
            if system == "server-int8":
                metrics = httpx.get(f"{url}/metrics").text
                tokens, positions = (
                    float(re.search(rf"^embed_model_{name}_total (\S+)$", metrics, re.M).group(1))
                    for name in ("tokens", "positions")
                )
                startup["padded_share_measured"] = round(1 - tokens / positions, 4)
                quality = evaluate_on_beir(
                    SAMPLE_CORPUS, {"fp32": str(fp32), "int8_served": url}, AutoTokenizer.from_pretrained(model_path)
                )["query_sets"][REAL]["systems"]
        finally:
            stop(process)

    for variant in ("fp32", "int8"):
        process, url, seconds = start_infinity(work / f"peer-{variant}")
        try:
            results["infinity-emb", variant] = http_system(url, "/embeddings", requests, short, check, args)
            startup[f"infinity_{variant}_startup_s"] = round(seconds, 2)
        finally:
            stop(process)
        model_file = INT8_FILE if variant == "int8" else "model.onnx"
        folder = work / f"peer-{variant}"
        results["fastembed", variant] = fastembed_system(folder, model_file, requests, short, check, args)

    starts, sizes = [], []
    for _ in range(args.starts):
        process, url, seconds = start_ours(int8)
        try:
            httpx.post(f"{url}/v1/embeddings", json={"input": short[0]}).raise_for_status()
            starts.append(seconds)
            sizes.append(rss_mb(process.pid))
        finally:
            stop(process)

    token_counts = OnnxEncoder(int8).embed([t for r in requests for t in r])[1].tolist()
    rows = [
        {
            "system": system,
            "variant": variant,
            "concurrency": c,
            **row,
            "min_cosine_to_pytorch": round(float((vectors * reference).sum(axis=1).min()), 4),
        }
        for (system, variant), (by_c, _, vectors) in results.items()
        for c, row in by_c.items()
    ]
    short_rows = [
        {"system": system, "variant": variant, "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"]}
        for (system, variant), (_, s, _) in results.items()
    ]
    ours = results["server-int8", "int8"][1]
    meta = {
        "command": "python " + " ".join(sys.argv),
        "commit": commit.strip(),
        "machine": f"{os.cpu_count()} CPU cores ({_cpu_name()}), no GPU",
        "date": time.strftime("%Y-%m-%d"),
        "model": str(model_path),
        "texts_per_request": n,
        "requests": args.requests,
        "repeats": args.repeats,
        "rows": rows,
        "short_query": short_rows,
        "server_int8": {
            "single_query_p50_ms": ours["p50_ms"],
            "single_query_p99_ms": ours["p99_ms"],
            "startup_s": round(float(np.median(starts)), 2),
            "startup_s_runs": [round(s, 2) for s in starts],
            "rss_mb": float(np.median(sizes)),
            "rss_mb_runs": sizes,
        },
        "peer_startup": {k: v for k, v in startup.items() if k.startswith("infinity")},
        "padding": {**padding_before_after(token_counts, n), "measured_int8_server": startup["padded_share_measured"]},
        "attention": json.loads((int8 / "export.json").read_text())["quantization"]["attention"],
        "ndcg@10": {k: round(v["nDCG@10"], 4) for k, v in quality.items() if k in ("fp32", "int8_served")},
        "fp32_mb": round((fp32 / "model.onnx").stat().st_size / 2**20, 1),
        "int8_mb": round((int8 / "model.onnx").stat().st_size / 2**20, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving_speed.json").write_text(json.dumps(meta, indent=2) + "\n")
    (RESULTS / "serving_speed.md").write_text(markdown(meta))
    print(markdown(meta))


def _cpu_name() -> str:
    match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return match.group(1).strip() if match else "unknown CPU"


def markdown(meta: dict) -> str:
    """The tables of the README: throughput and latency by system and concurrency, the short query, the rest."""
    by = {}
    for row in meta["rows"]:
        by.setdefault((row["system"], row["variant"]), {})[row["concurrency"]] = row
    header = " | ".join(f"c={c}: texts/s, p50, p99 ms" for c in CONCURRENCY)
    lines = [
        f"`{meta['command']}` at commit {meta['commit']} on {meta['machine']}, {meta['date']}: "
        f"{meta['requests']} requests of {meta['texts_per_request']} SciFact abstracts per system and concurrency c, "
        f"{meta['repeats']} runs each (texts/s: the median run; latency percentiles over all runs). "
        f"Same checkpoint everywhere (`{Path(meta['model']).name}`).",
        "",
        f"| system | variant | {header} | min cos to PyTorch |",
        "|---|---|" + "---:|" * (len(CONCURRENCY) + 1),
    ]
    for (system, variant), by_c in by.items():
        cells = " | ".join(f"{r['texts_per_s']}, {r['p50_ms']:.0f}, {r['p99_ms']:.0f}" for r in by_c.values())
        lines.append(f"| {system} | {variant} | {cells} | {next(iter(by_c.values()))['min_cosine_to_pytorch']} |")
    base = by["pytorch-encode", "fp32"]
    ours = by["server-int8", "int8"]
    peers = {key: v for key, v in by.items() if key[0] in PEERS}
    ratio = ", ".join(f"c={c} {ours[c]['texts_per_s'] / base[c]['texts_per_s']:.2f}x" for c in CONCURRENCY)
    best = []
    for c in CONCURRENCY:
        (system, variant), row = max(((k, v[c]) for k, v in peers.items()), key=lambda kv: kv[1]["texts_per_s"])
        best.append(f"c={c} {ours[c]['texts_per_s'] / row['texts_per_s']:.2f}x ({system} {variant})")
    s, p, q = meta["server_int8"], meta["padding"], meta["ndcg@10"]
    short = " · ".join(
        f"{r['system']} {r['variant']} {r['p50_ms']:.1f} / {r['p99_ms']:.1f}" for r in meta["short_query"]
    )
    attention = meta["attention"]
    lines += [
        "",
        f"int8 server / PyTorch encode, texts/s: {ratio}. int8 server / best peer: {', '.join(best)}.",
        "",
        f"One short query (5-15 words) per request, concurrency 1, p50 / p99 ms: {short}.",
        "",
        f"int8 server: start-up to ready {s['startup_s']} s (runs {s['startup_s_runs']}), resident memory after "
        f"one request {s['rss_mb']} MB (runs {s['rss_mb_runs']}); infinity-emb start-up: "
        + ", ".join(f"{k.split('_')[1]} {v} s" for k, v in meta["peer_startup"].items())
        + ".",
        "",
        f"Padded share of the positions computed: one request's texts {p['one_request_before']:.1%} in the order "
        f"given, {p['one_request_after']:.1%} length-sorted in calls of at most {CPU_BATCH_TOKENS} positions; "
        f"requests merged in calls of 32 texts {p['merged_before']:.1%}, length-sorted {p['merged_after']:.1%}; "
        f"measured on the int8 server over the whole run {p['measured_int8_server']:.1%}.",
        "",
        f"int8 attention: {len(attention['quantized'])} of {len(attention['quantized']) + len(attention['kept_fp32'])}"
        f" layers quantized, chosen on {attention.get('texts', 0)} corpus titles (lowest cosine to fp32 "
        f"{attention.get('min_cosine')}, floor {attention.get('floor')}). Exports: fp32 {meta['fp32_mb']} MB, "
        f"int8 {meta['int8_mb']} MB. nDCG@10 on the sample's real claims: fp32 {q['fp32']}, int8 as served "
        f"{q['int8_served']} ({q['int8_served'] - q['fp32']:+.4f}).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
