"""The server's dynamic batcher on a toy encode function: isolation, backpressure, deadlines, fairness."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embed_pipeline.core.batching import DeadlineExceeded, DynamicBatcher, EncodeFailed, Overloaded


def lengths(texts: list[str], options=None) -> tuple[np.ndarray]:
    """A stand-in model: each text's 'embedding' is its length; 'poison' breaks the whole call."""
    if "poison" in texts:
        raise RuntimeError("the tokenizer choked")
    return (np.array([len(t) for t in texts]),)


def test_a_failing_batch_fails_only_the_request_that_broke_it(caplog):
    batcher = DynamicBatcher(lengths, wait_ms=200)  # everyone lands in one batch
    requests = [["a" * i, "b" * (i + 1)] for i in range(1, 8)] + [["fine", "poison"]]
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(batcher.run, texts) for texts in requests]
    for texts, future in zip(requests[:-1], futures[:-1], strict=True):
        assert future.result()[0].tolist() == [len(t) for t in texts]
    with pytest.raises(EncodeFailed, match="tokenizer choked"):
        futures[-1].result()
    failures = [r for r in caplog.records if "failed and was refused" in r.getMessage()]
    assert len(failures) == 1 and not failures[0].exc_info  # one line, no traceback


class Gate:
    """An encode function that blocks until released, recording each call's texts."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, texts: list[str], options=None) -> tuple[np.ndarray]:
        self.calls.append(list(texts))
        self.entered.set()
        assert self.release.wait(10)
        return lengths(texts)


def test_a_full_queue_refuses_at_once_and_a_stale_request_times_out():
    gate = Gate()
    batcher = DynamicBatcher(gate, max_queued_texts=2, timeout_s=0.5)
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(batcher.run, ["holds the model"])
        assert gate.entered.wait(5)
        queued = pool.submit(batcher.run, ["waits", "too"])
        time.sleep(0.05)
        began = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            batcher.run(["one too many"])
        assert time.monotonic() - began < 0.1 and refused.value.retry_after_s >= 1
        with pytest.raises(DeadlineExceeded):
            queued.result()
        gate.release.set()
        with pytest.raises(DeadlineExceeded):  # answered after its deadline: the client was already told
            busy.result()
    assert batcher.run(["back to normal"])[0].tolist() == [14]
    assert ["waits", "too"] not in gate.calls  # the expired request never reached the model


def test_a_short_request_is_not_stuck_behind_a_long_one():
    """A long request is split by the token budget; a short one arriving meanwhile joins the next call."""
    calls: list[list[str]] = []
    first_call = threading.Event()

    def slow(texts: list[str], options=None) -> tuple[np.ndarray]:
        calls.append(list(texts))
        first_call.set()
        time.sleep(0.05)
        return lengths(texts)

    batcher = DynamicBatcher(slow, cost=len, max_tokens=1000)
    long_texts = [f"{i:03d}" + "x" * 97 for i in range(100)]  # 100 texts of cost 100: 10 calls
    done: dict[str, float] = {}

    def run(name: str, texts: list[str]) -> np.ndarray:
        vectors = batcher.run(texts)[0]
        done[name] = time.monotonic()
        return vectors

    with ThreadPoolExecutor(2) as pool:
        long_future = pool.submit(run, "long", long_texts)
        assert first_call.wait(5)
        short_future = pool.submit(run, "short", ["short"])
        assert short_future.result().tolist() == [5]
        assert long_future.result().tolist() == [100] * 100
    assert done["short"] < done["long"]
    assert any("short" in call for call in calls[1:3]) and len(calls) >= 10
    assert max(sum(map(len, call)) for call in calls) <= 1000
