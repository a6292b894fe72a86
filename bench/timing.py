"""Throughput and latency of a call under concurrent clients: shared by the serving benchmark and its peers'
runners (stdlib and numpy only, so it runs in the peers' own venv too)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def measure(call: Callable[[list[str]], object], requests: list[list[str]], concurrency: int, repeats: int) -> dict:
    """Run `call(texts)` for every request with `concurrency` client threads, `repeats` times, after a warm-up:
    the median run's texts/s (this machine's speed varies by 10-20% run to run) and the latency percentiles
    over all runs."""
    for texts in requests[: max(2, concurrency)]:  # warm-up: every client's first call
        call(texts)
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
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }
