"""Dynamic batching: concurrent requests' texts are encoded together, sorted by length to limit padding.

A request thread submits its texts and waits on a future; one worker thread takes the first waiting
request, gathers whatever else arrives within `wait_ms` (up to `max_texts` texts), encodes them in one
call and hands each request its rows back. On a CPU one call for many short inputs is much cheaper than
many calls, and a lone request waits at most `wait_ms` longer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

Encode = Callable[[list[str], bool], np.ndarray]


class DynamicBatcher:
    def __init__(self, encode: Encode, wait_ms: float = 5.0, max_texts: int = 128, on_batch=None) -> None:
        self._encode, self._wait, self._max_texts = encode, wait_ms / 1000, max_texts
        self._on_batch = on_batch or (lambda n: None)
        self._queue: queue.Queue[tuple[list[str], bool, Future]] = queue.Queue()
        threading.Thread(target=self._run, name="embedding-batcher", daemon=True).start()

    def encode(self, texts: list[str], keep_end: bool = False) -> np.ndarray:
        """Embeddings of `texts` (one row each), computed together with other waiting requests."""
        future: Future = Future()
        self._queue.put((texts, keep_end, future))
        return future.result()

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            deadline = time.monotonic() + self._wait
            while sum(len(g[0]) for g in group) < self._max_texts:
                try:
                    group.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            for keep_end in (False, True):  # the two truncation sides are two calls
                self._encode_group([g for g in group if g[1] == keep_end], keep_end)

    def _encode_group(self, group: list[tuple[list[str], bool, Future]], keep_end: bool) -> None:
        if not group:
            return
        texts = [t for g in group for t in g[0]]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        try:
            sorted_vectors = self._encode([texts[i] for i in order], keep_end)
        except Exception as exc:  # every waiting request gets the error, the worker lives on
            for _, _, future in group:
                future.set_exception(exc)
            return
        self._on_batch(len(texts))
        vectors = np.empty_like(sorted_vectors)
        vectors[order] = sorted_vectors
        start = 0
        for request_texts, _, future in group:
            future.set_result(vectors[start : start + len(request_texts)])
            start += len(request_texts)
