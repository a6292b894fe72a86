"""An embedding API as a teacher (OpenAI, Cohere, Voyage, NVIDIA NIM, any OpenAI-compatible server, through
litellm): texts are sent in batches, a few requests at a time, each vector persisted the moment its response
arrives, so a killed run resumes paying only for what it never got; the API key is read from the environment
at call time and never written anywhere.

Example::

    encoder = ApiEncoder(LLMSettings(model="openai/text-embedding-3-small", api_key_env="OPENAI_API_KEY"),
                         cache_path="cache/embedding_responses.jsonl")
    vectors = encoder.encode_document(passages)
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from embed_pipeline.core.llm import LLMSettings, MalformedResponse, ResponseCache, is_permanent

log = logging.getLogger(__name__)

API_BATCH = 64
"""Texts per embedding request (OpenAI takes up to 2,048; smaller requests lose less to a failure)."""


@dataclass
class ApiUsage:
    """What an encoder paid for and what it found cached."""

    requests: int = 0
    texts_requested: int = 0
    texts_cached: int = 0
    prompt_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def _vector_text(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def _vector_of(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


class ApiEncoder:
    """`encode_query` / `encode_document` through `litellm.embedding` with a persistent cache (one line per
    text: the model, a hash of what was sent and the vector), `batch_size` texts a request, `concurrency`
    requests at a time, each retried with backoff on rate limits, 5xx and timeouts. Vectors come back unit
    length. `query_prompt`/`document_prompt` are prepended; `query_input_type`/`document_input_type` go to the
    provider as `input_type` (Cohere: search_query / search_document; Voyage and NIM: query / passage)."""

    def __init__(
        self,
        settings: LLMSettings,
        cache_path: str | Path,
        batch_size: int = API_BATCH,
        query_prompt: str = "",
        document_prompt: str = "",
        query_input_type: str | None = None,
        document_input_type: str | None = None,
    ) -> None:
        self.settings, self.batch_size = settings, max(1, batch_size)
        self.cache = ResponseCache(cache_path)
        self.prompts = {"query": query_prompt, "document": document_prompt}
        self.input_types = {"query": query_input_type, "document": document_input_type}
        self.usage = ApiUsage()
        self._lock = threading.Lock()

    def encode_query(self, texts: list[str], **_) -> np.ndarray:
        return self._encode(texts, "query")

    def encode_document(self, texts: list[str], **_) -> np.ndarray:
        return self._encode(texts, "document")

    def _key(self, text: str, side: str) -> str:
        sent = f"{self.settings.model}\0{self.input_types[side]}\0{self.prompts[side]}{text}"
        return hashlib.sha256(sent.encode("utf-8")).hexdigest()

    def _encode(self, texts: list[str], side: str) -> np.ndarray:
        keys = [self._key(t, side) for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if self.cache.get(k) is None))
        self.usage.texts_cached += len(set(keys)) - len(missing)
        if missing:
            self._request_all(missing, side)
        absent = [t for t, k in zip(texts, keys, strict=True) if self.cache.get(k) is None]
        if absent:
            raise RuntimeError(
                f"embedding API {self.settings.model}: {len(absent)} of {len(texts)} texts got no vector "
                f"({self.usage.failures[-1] if self.usage.failures else 'no answer'}); the {len(texts) - len(absent)} "
                "received are cached, a re-run asks only for the rest"
            )
        vectors = np.stack([_vector_of(self.cache.get(k)["vector"]) for k in keys]).astype(np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def _request_all(self, texts: list[str], side: str) -> None:
        self.settings.api_key()  # a missing key variable fails before any request
        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency)) as pool:
            futures = [pool.submit(self._request, batch, side) for batch in batches]
            for future in tqdm(as_completed(futures), total=len(futures), desc=f"{self.settings.model} {side}s"):
                try:
                    future.result()
                except Exception as exc:  # recorded; the texts stay missing and are named by `_encode`
                    with self._lock:
                        self.usage.failures.append(f"{type(exc).__name__}: {str(exc)[:300]}")
        self.usage.seconds += time.perf_counter() - started

    def _request(self, batch: list[str], side: str) -> None:
        import backoff
        import litellm

        settings = self.settings
        extra = {"input_type": self.input_types[side]} if self.input_types[side] else {}

        @backoff.on_exception(
            backoff.expo,
            Exception,
            max_tries=settings.num_retries + 1,
            factor=settings.backoff_s,
            max_value=60,
            giveup=is_permanent,
            logger=log,
        )
        def embed():
            response = litellm.embedding(
                model=settings.model,
                input=[self.prompts[side] + t for t in batch],
                api_base=settings.api_base,
                api_key=settings.api_key() or ("no-key" if settings.api_base else None),
                timeout=settings.timeout_s,
                num_retries=0,
                **extra,
            )
            rows = sorted(response.data, key=lambda d: d["index"])
            if len(rows) != len(batch):
                raise MalformedResponse(f"{settings.model} returned {len(rows)} vectors for {len(batch)} texts")
            return response, [np.asarray(row["embedding"], dtype=np.float32) for row in rows]

        response, vectors = embed()
        usage = getattr(response, "usage", None)
        tokens = getattr(usage, "prompt_tokens", 0) or 0
        try:
            cost = float(litellm.completion_cost(completion_response=response) or 0.0)
        except Exception:  # local and unknown models have no price
            cost = 0.0
        for i, (text, vector) in enumerate(zip(batch, vectors, strict=True)):
            entry = {"key": self._key(text, side), "model": settings.model, "vector": _vector_text(vector)}
            if i == 0:
                entry.update(prompt_tokens=tokens, cost_usd=cost)
            self.cache.put(entry)
        with self._lock:
            self.usage.requests += 1
            self.usage.texts_requested += len(batch)
            self.usage.prompt_tokens += tokens
            self.usage.cost_usd += cost
