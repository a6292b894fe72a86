"""Dynamic batching: texts that concurrent callers submit go through one model function together, safely. The
server's embedding requests and the local LLM's prompts both run through it.

A caller submits its texts with options (e.g. truncation side and dimensions; sampling settings) and waits;
one worker thread builds each model call from the requests waiting with the options of the oldest one,
taking their texts in turns (one from each request, round robin) up to `max_texts` texts and `max_tokens`
estimated tokens. A long request is thus run over several calls and a short one that arrives meanwhile
joins the next call instead of waiting for all of it. With `wait_ms` > 0 the worker also waits that long
for more requests; with 0 (continuous batching) a lone request never waits.

What keeps one request from hurting others:
- isolation: when a call fails, each of its requests is retried alone, so only the bad one fails
  (`EncodeFailed`, one log line);
- backpressure: at most `max_queued_texts` texts wait; a request that would exceed it is refused at once
  (`Overloaded`, with a retry delay estimated from recent throughput);
- deadlines: a request not answered within `timeout_s` is dropped from the queue (`DeadlineExceeded`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

# The model function: returns row-aligned arrays (embeddings, token counts, an object array of generations, ...),
# row i of each belonging to text i.
Encode = Callable[[list[str], Hashable], tuple[np.ndarray, ...]]

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """Too many texts are waiting; the client should retry after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The request was not answered within the batcher's timeout."""


class EncodeFailed(Exception):
    """This request's own texts could not be encoded (the other requests of its batch were not affected)."""


@dataclass(eq=False)
class _Request:
    texts: list[str]
    options: Hashable
    costs: list[int]
    deadline: float
    scheduled: int = 0  # texts handed to the model so far (taken in order)
    parts: list[tuple[int, tuple[np.ndarray, ...]]] = field(default_factory=list)
    encoded: int = 0
    error: Exception | None = None
    finished: threading.Event = field(default_factory=threading.Event)


class DynamicBatcher:
    def __init__(
        self,
        encode: Encode,
        *,
        cost: Callable[[str], int] = len,
        wait_ms: float = 0.0,
        max_texts: int = 128,
        max_tokens: int = 8192,
        max_queued_texts: int = 4096,
        timeout_s: float = 30.0,
        on_batch: Callable[[int], object] | None = None,
        name: str = "batcher",
    ) -> None:
        """`cost(text)` estimates a text's tokens (its share of the `max_tokens` budget of one call); `name` names
        the worker thread."""
        self._encode, self._cost, self._wait = encode, cost, wait_ms / 1000
        self._max_texts, self._max_tokens, self._max_queued = max_texts, max_tokens, max_queued_texts
        self._timeout = timeout_s
        self._on_batch = on_batch or (lambda n: None)
        self._ready = threading.Condition()
        self._pending: list[_Request] = []  # requests with texts not yet handed to the model, oldest first
        self._queued = 0  # texts in `_pending` not yet handed to the model
        self._seconds_per_text = 0.0  # recent model time per text (moving average), for Retry-After
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def run(self, texts: list[str], options: Hashable = None) -> tuple[np.ndarray, ...]:
        """The model function's arrays for `texts` (one row each) under `options` (passed on to it),
        computed together with other waiting requests that have the same options. Raises `Overloaded`,
        `DeadlineExceeded` or `EncodeFailed`."""
        request = _Request(texts, options, [self._cost(t) for t in texts], time.monotonic() + self._timeout)
        with self._ready:
            if self._queued and self._queued + len(texts) > self._max_queued:
                wait = math.ceil(max(1.0, self._queued * self._seconds_per_text))
                raise Overloaded(f"{self._queued} texts are waiting to be processed; retry in {wait} s.", wait)
            self._pending.append(request)
            self._queued += len(texts)
            self._ready.notify()
        if not request.finished.wait(self._timeout):
            with self._ready:
                if not request.finished.is_set():
                    self._fail(request, DeadlineExceeded(f"not answered within {self._timeout:g} s"))
        if request.error is not None:
            raise request.error
        parts = [arrays for _, arrays in sorted(request.parts, key=lambda p: p[0])]
        return tuple(np.concatenate(columns) for columns in zip(*parts, strict=True))

    def _fail(self, request: _Request, error: Exception) -> None:
        """Finish `request` with `error` and drop its unscheduled texts (holding `_ready`)."""
        if request in self._pending:
            self._pending.remove(request)
            self._queued -= len(request.texts) - request.scheduled
        request.error = error
        request.finished.set()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                if self._wait:
                    until = time.monotonic() + self._wait
                    while self._queued < self._max_texts and (left := until - time.monotonic()) > 0:
                        self._ready.wait(left)
                batch = self._next_batch()
            if batch:
                self._encode_batch(batch)

    def _next_batch(self) -> list[tuple[_Request, int, int]]:
        """(request, first, end) spans of one model call, taken in turns from the waiting requests that
        share the oldest one's options (holding `_ready`); expired requests are failed instead."""
        now = time.monotonic()
        for request in [r for r in self._pending if r.deadline <= now]:
            self._fail(request, DeadlineExceeded(f"not answered within {self._timeout:g} s"))
        if not self._pending:
            return []
        options = self._pending[0].options
        candidates = [r for r in self._pending if r.options == options]
        ends = {id(r): r.scheduled for r in candidates}
        texts = tokens = 0
        progressed = True
        while progressed and texts < self._max_texts:
            progressed = False
            for request in candidates:
                end = ends[id(request)]
                if end == len(request.texts) or texts == self._max_texts:
                    continue
                if texts and tokens + request.costs[end] > self._max_tokens:
                    continue
                ends[id(request)] = end + 1
                texts, tokens, progressed = texts + 1, tokens + request.costs[end], True
        batch = [(r, r.scheduled, ends[id(r)]) for r in candidates if ends[id(r)] > r.scheduled]
        for request, first, end in batch:
            request.scheduled = end
            self._queued -= end - first
            if end == len(request.texts):
                self._pending.remove(request)
        return batch

    def _encode_batch(self, batch: list[tuple[_Request, int, int]]) -> None:
        """Encode the spans in one call; if it fails, each request's span alone, failing only the bad ones."""
        texts = [t for request, first, end in batch for t in request.texts[first:end]]
        began = time.perf_counter()
        try:
            arrays = self._encode(texts, batch[0][0].options)
        except Exception as exc:
            if len(batch) == 1:
                self._finish_failed(batch[0][0], exc)
            else:
                for span in batch:
                    self._encode_batch([span])
            return
        self._on_batch(len(texts))
        per_text = (time.perf_counter() - began) / len(texts)
        self._seconds_per_text = (
            per_text if not self._seconds_per_text else 0.8 * self._seconds_per_text + 0.2 * per_text
        )
        start = 0
        for request, first, end in batch:
            rows = tuple(array[start : start + end - first] for array in arrays)
            start += end - first
            with self._ready:
                if request.error is None:
                    request.parts.append((first, rows))
                    request.encoded += end - first
                    if request.encoded == len(request.texts):
                        request.finished.set()

    def _finish_failed(self, request: _Request, exc: Exception) -> None:
        log.warning(
            "a request of %d input(s) failed and was refused: %s: %s",
            len(request.texts),
            type(exc).__name__,
            str(exc)[:200],
        )
        with self._ready:
            if request.error is None:
                self._fail(request, EncodeFailed(f"the input could not be encoded ({type(exc).__name__}: {exc})"))
