"""LLM calls through litellm, one code path for local and hosted models: settings, retries with
backoff, and an append-only response cache that persists each paid call the moment it arrives."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

LOCAL_PROVIDER = "local"  # model strings "local/<name>" run in-process (core/local_llm.py)
DEFAULT_MODEL = f"{LOCAL_PROVIDER}/smollm2-135m-instruct"


class LLMConfigError(ValueError):
    """The LLM settings cannot work (e.g. the API key variable is not set); never retried."""


@dataclass(frozen=True)
class LLMSettings:
    """Which model writes the questions and how it is reached (any litellm model string)."""

    model: str = DEFAULT_MODEL
    api_base: str | None = None
    api_key_env: str | None = None
    temperature: float = 0.0
    max_tokens: int = 64
    concurrency: int = 8
    num_retries: int = 3
    timeout_s: float = 120.0
    backoff_s: float = 1.0
    local_runtime: str = "auto"  # for local/ models: auto | transformers | llama_cpp

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise LLMConfigError(
                f"LLM api_key_env names the environment variable {self.api_key_env!r}, which is not set. "
                "Export it (the key is never written to logs or artifacts)."
            )
        return key


class ResponseCache:
    """Append-only JSONL store of LLM responses; each write is flushed and fsynced before returning."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        if self.path.exists():
            with self.path.open(encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    try:
                        entry = json.loads(line)
                        self._entries[entry["key"]] = entry
                    except (json.JSONDecodeError, KeyError):
                        # A run killed mid-write leaves at most one torn last line: skip it, re-ask that call.
                        log.warning("Ignoring unreadable line %d of LLM cache %s", line_no, self.path)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict | None:
        return self._entries.get(key)

    def put(self, entry: dict) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            self._entries[entry["key"]] = entry


class MalformedResponse(RuntimeError):
    """The endpoint answered, but not with a usable chat completion (retried like a 5xx)."""


def _is_permanent(exc: Exception) -> bool:
    """Errors that retrying cannot fix: bad credentials, bad request, unknown model, missing key variable."""
    import litellm

    permanent = (
        litellm.AuthenticationError,
        litellm.PermissionDeniedError,
        litellm.BadRequestError,
        litellm.NotFoundError,
        LLMConfigError,
    )
    return isinstance(exc, permanent)


@dataclass(frozen=True)
class LLMCall:
    """One request: its cache key, the messages, sampling settings, and fields stored with the answer."""

    key: str
    messages: list[dict[str, str]]
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    response_format: dict | None = None  # e.g. a JSON schema the answer must follow (capable models)
    record: dict = field(default_factory=dict)


def call_llm(settings: LLMSettings, call: LLMCall, validate: Callable[[str], object] | None = None) -> dict:
    """One completion, retried with exponential backoff and jitter on rate limits, 5xx, timeouts and
    malformed responses (litellm's own retries are off: one retry loop, one request count).

    `validate(content)` may raise MalformedResponse to have an unusable answer asked again.
    """
    import backoff
    import litellm

    from embed_pipeline.core.local_llm import register_local_provider

    register_local_provider(settings.local_runtime)
    # OpenAI-compatible servers without auth (vLLM, llama.cpp, Ollama) still need some key for the client.
    api_key = settings.api_key() or ("no-key" if settings.api_base else None)
    started = time.perf_counter()

    @backoff.on_exception(
        backoff.expo,
        Exception,
        max_tries=settings.num_retries + 1,
        factor=settings.backoff_s,
        max_value=60,
        giveup=_is_permanent,
        logger=log,
    )
    def complete():
        try:
            response = litellm.completion(
                model=settings.model,
                messages=call.messages,
                api_base=settings.api_base,
                api_key=api_key,
                temperature=call.temperature,
                max_tokens=settings.max_tokens,
                stop=list(call.stop) or None,
                **({"response_format": call.response_format} if call.response_format else {}),
                num_retries=0,
                timeout=settings.timeout_s,
            )
            content = response.choices[0].message.content
        except (litellm.APIError, AttributeError, IndexError, KeyError, TypeError) as exc:
            if isinstance(exc, litellm.APIError) and getattr(exc, "status_code", 500) < 500:
                raise
            raise MalformedResponse(f"unusable response from {settings.model}: {exc}") from exc
        if content is None:
            raise MalformedResponse(f"{settings.model} returned no message content")
        if validate is not None:
            validate(content)
        return response, content

    response, content = complete()
    try:
        cost = float(litellm.completion_cost(completion_response=response) or 0.0)
    except Exception:  # local and unknown models have no price
        cost = 0.0
    usage = getattr(response, "usage", None)
    return {
        "completion": content,
        "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
        "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        "cost_usd": cost,
        "latency_s": round(time.perf_counter() - started, 3),
    }


@dataclass
class CallRun:
    """What `run_calls` did: failures by cache key, new responses, wall time."""

    failures: dict[str, str]
    new_entries: list[dict]
    cached: int
    seconds: float

    def stats(self) -> dict:
        made = self.new_entries
        return {
            "llm_calls_made": len(made) + len(self.failures),
            "llm_calls_cached": self.cached,
            "llm_failures": len(self.failures),
            "prompt_tokens": sum(e["prompt_tokens"] for e in made),
            "completion_tokens": sum(e["completion_tokens"] for e in made),
            "cost_usd": round(sum(e["cost_usd"] for e in made), 6),
            "call_seconds": round(self.seconds, 1),
            "calls_per_second": round(len(made) / self.seconds, 3) if made and self.seconds else None,
        }


def run_calls(
    calls: list[LLMCall],
    settings: LLMSettings,
    cache: ResponseCache,
    desc: str,
    validate: Callable[[str], object] | None = None,
) -> CallRun:
    """Make every call not already cached, `settings.concurrency` at a time; each success is persisted
    as it arrives, each failure recorded (never fatal to the batch; asked again next run)."""
    settings.api_key()  # a missing key variable or local runtime fails here, before any work
    if settings.model.startswith(f"{LOCAL_PROVIDER}/"):
        from embed_pipeline.core.local_llm import resolve_runtime

        resolve_runtime(settings.local_runtime)
    todo = list({c.key: c for c in calls if cache.get(c.key) is None}.values())  # identical passages: one call
    log.info(
        "%s: %d calls, %d cached, %d to make with %s",
        desc,
        len(calls),
        len(calls) - len(todo),
        len(todo),
        settings.model,
    )
    failures: dict[str, str] = {}
    new_entries: list[dict] = []
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, settings.concurrency)) as pool:
        futures = {pool.submit(call_llm, settings, c, validate): c for c in todo}
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=not todo):
            call = futures[future]
            try:
                result = future.result()
            except Exception as exc:
                failures[call.key] = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            entry = {"key": call.key, "model": settings.model, **call.record, **result}
            cache.put(entry)
            new_entries.append(entry)
    return CallRun(failures, new_entries, len(calls) - len(todo), time.perf_counter() - started)
