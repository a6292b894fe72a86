"""Dynamic batching: concurrent requests' texts are encoded together.

A request thread submits its texts with its encoding options (truncation side, dimensions) and waits on a
future; one worker thread takes the first waiting request and everything else already queued (requests that
arrived while the model was busy), plus, with `wait_ms` > 0, whatever arrives within that time (up to
`max_texts` texts); it encodes the texts of requests with equal options in one call and hands each request
its rows of every returned array back. On a CPU one call for many short inputs is much cheaper than many
calls; with `wait_ms` = 0 (continuous batching) a lone request never waits.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future

import numpy as np

# Returns row-aligned arrays (embeddings, token counts, ...): row i of each belongs to text i.
Encode = Callable[[list[str], Hashable], tuple[np.ndarray, ...]]


class DynamicBatcher:
    def __init__(self, encode: Encode, wait_ms: float = 0.0, max_texts: int = 128, on_batch=None) -> None:
        self._encode, self._wait, self._max_texts = encode, wait_ms / 1000, max_texts
        self._on_batch = on_batch or (lambda n: None)
        self._queue: queue.Queue[tuple[list[str], Hashable, Future]] = queue.Queue()
        threading.Thread(target=self._run, name="embedding-batcher", daemon=True).start()

    def encode(self, texts: list[str], options: Hashable = None) -> tuple[np.ndarray, ...]:
        """The encode function's arrays for `texts` (one row each) under `options` (passed on to it),
        computed together with other waiting requests that have the same options."""
        future: Future = Future()
        self._queue.put((texts, options, future))
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
            for options in dict.fromkeys(g[1] for g in group):  # one call per distinct options, in arrival order
                self._encode_group([g for g in group if g[1] == options], options)

    def _encode_group(self, group: list[tuple[list[str], Hashable, Future]], options: Hashable) -> None:
        texts = [t for g in group for t in g[0]]
        try:
            arrays = self._encode(texts, options)
        except Exception as exc:  # every waiting request gets the error, the worker lives on
            for _, _, future in group:
                future.set_exception(exc)
            return
        self._on_batch(len(texts))
        start = 0
        for request_texts, _, future in group:
            future.set_result(tuple(array[start : start + len(request_texts)] for array in arrays))
            start += len(request_texts)
