"""LLM calls through litellm, one code path for local and hosted models: settings, retries with
backoff, and an append-only response cache that persists each paid call the moment it arrives."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
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


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_json_answer(content: str, schema, what: str):
    """The JSON object in an LLM's answer (prose around it allowed), validated by the pydantic `schema`;
    MalformedResponse (asked again) naming `what` otherwise."""
    from pydantic import ValidationError

    match = _JSON_OBJECT.search(content)
    try:
        return schema.model_validate(json.loads(match.group(0) if match else content))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise MalformedResponse(f"{what} answer is not the requested JSON: {content[:200]!r}") from exc


def is_permanent(exc: Exception) -> bool:
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
    """One request for `len(keys)` samples of one prompt (one cache key each): the messages, sampling
    settings, a check of each answer, and fields stored with the answers."""

    keys: tuple[str, ...]
    messages: list[dict[str, str]]
    temperature: float = 0.0
    max_tokens: int | None = None  # None: the settings' max_tokens
    stop: tuple[str, ...] = ()
    response_format: dict | None = None  # e.g. a JSON schema the answer must follow (capable models)
    validate: Callable[[str], object] | None = None  # may raise MalformedResponse: the answer is asked again
    record: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.keys)


def model_identity(model: str) -> str:
    """What cache keys name for `model`: the litellm string, or for a local GGUF model its file's hash."""
    if model.startswith(f"{LOCAL_PROVIDER}/"):
        from embed_pipeline.core.local_llm import local_model_identity

        return local_model_identity(model)
    return model


def _supports_n(model: str) -> bool:
    """Whether the provider takes OpenAI's `n` (several samples of one prompt, its prefill paid once)."""
    import litellm

    if model.startswith(f"{LOCAL_PROVIDER}/"):
        return True
    try:
        _, provider, _, _ = litellm.get_llm_provider(model)
        return "n" in (litellm.get_supported_openai_params(model=model, custom_llm_provider=provider) or [])
    except Exception:  # an unknown provider: ask one sample per request
        return False


def call_llm(settings: LLMSettings, call: LLMCall) -> dict:
    """`call.n` completions of one prompt: in one request where the provider takes `n` (more requests if it
    answers with fewer), else one request each. Each request is retried with exponential backoff and jitter
    on rate limits, 5xx, timeouts and malformed responses (litellm's own retries are off: one retry loop, one
    request count); `call.validate(content)` may raise MalformedResponse to have an unusable answer asked
    again."""
    import backoff
    import litellm

    from embed_pipeline.core.local_llm import register_local_provider

    register_local_provider(settings.local_runtime)
    # OpenAI-compatible servers without auth (vLLM, llama.cpp, Ollama) still need some key for the client.
    api_key = settings.api_key() or ("no-key" if settings.api_base else None)
    started = time.perf_counter()
    batched = call.n > 1 and _supports_n(settings.model)

    @backoff.on_exception(
        backoff.expo,
        Exception,
        max_tries=settings.num_retries + 1,
        factor=settings.backoff_s,
        max_value=60,
        giveup=is_permanent,
        logger=log,
    )
    def complete(n: int):
        try:
            response = litellm.completion(
                model=settings.model,
                messages=call.messages,
                api_base=settings.api_base,
                api_key=api_key,
                temperature=call.temperature,
                max_tokens=call.max_tokens or settings.max_tokens,
                stop=list(call.stop) or None,
                **({"n": n} if n > 1 else {}),
                **({"response_format": call.response_format} if call.response_format else {}),
                num_retries=0,
                timeout=settings.timeout_s,
            )
            contents = [choice.message.content for choice in response.choices[:n]]
        except (litellm.APIError, AttributeError, IndexError, KeyError, TypeError) as exc:
            if isinstance(exc, litellm.APIError) and getattr(exc, "status_code", 500) < 500:
                raise
            raise MalformedResponse(f"unusable response from {settings.model}: {exc}") from exc
        if not contents or any(content is None for content in contents):
            raise MalformedResponse(f"{settings.model} returned no message content")
        if call.validate is not None:
            for content in contents:
                call.validate(content)
        return response, contents

    completions: list[str] = []
    prompt_tokens = cached_tokens = completion_tokens = 0
    cost = 0.0
    while len(completions) < call.n:
        response, contents = complete(call.n - len(completions) if batched else 1)
        completions += contents
        try:
            cost += float(litellm.completion_cost(completion_response=response) or 0.0)
        except Exception:  # local and unknown models have no price
            pass
        usage = getattr(response, "usage", None)
        prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
        completion_tokens += getattr(usage, "completion_tokens", 0) or 0
        details = getattr(usage, "prompt_tokens_details", None)
        cached_tokens += getattr(details, "cached_tokens", 0) or 0
    return {
        "completions": completions,
        "prompt_tokens": prompt_tokens,
        "cached_prompt_tokens": cached_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": cost,
        "latency_s": round(time.perf_counter() - started, 3),
    }


@dataclass
class CallRun:
    """What `run_calls` did: failures by cache key, new responses, calls left for the time budget, wall time."""

    failures: dict[str, str]
    new_entries: list[dict]
    cached: int
    seconds: float
    calls_made: int = 0
    skipped: int = 0

    def stats(self) -> dict:
        made = self.new_entries
        return {
            "llm_calls_made": self.calls_made,
            "llm_samples_made": len(made),
            "llm_calls_cached": self.cached,
            "llm_failures": len(self.failures),
            "llm_calls_skipped_time_budget": self.skipped,
            "prompt_tokens": sum(e["prompt_tokens"] for e in made),
            "cached_prompt_tokens": sum(e.get("cached_prompt_tokens", 0) for e in made),
            "completion_tokens": sum(e["completion_tokens"] for e in made),
            "cost_usd": round(sum(e["cost_usd"] for e in made), 6),
            "call_seconds": round(self.seconds, 1),
            "samples_per_second": round(len(made) / self.seconds, 3) if made and self.seconds else None,
        }


class TimeBudgetExhausted(RuntimeError):
    """The run's time budget was spent before this call started; it is left for a later run."""


def run_calls(
    calls: list[LLMCall],
    settings: LLMSettings,
    cache: ResponseCache,
    desc: str,
    time_budget_s: float | None = None,
) -> CallRun:
    """Make every call not already cached (only its missing samples), `settings.concurrency` at a time;
    each success is persisted as it arrives, each failure recorded (never fatal to the batch; asked again
    next run). With `time_budget_s`, calls not started within it are left for a later run."""
    settings.api_key()  # a missing key variable or local runtime fails here, before any work
    if settings.model.startswith(f"{LOCAL_PROVIDER}/"):
        from embed_pipeline.core.local_llm import gguf_path, resolve_runtime

        resolve_runtime(settings.local_runtime)
        gguf_path(settings.model)
    todo: dict[tuple[str, ...], LLMCall] = {}
    for call in calls:
        missing = tuple(k for k in dict.fromkeys(call.keys) if cache.get(k) is None)
        if missing:
            todo.setdefault(missing, replace(call, keys=missing))  # identical passages: one call
    n_cached = sum(1 for c in calls for k in c.keys if cache.get(k) is not None)
    log.info(
        "%s: %d calls, %d samples cached, %d calls to make with %s",
        desc,
        len(calls),
        n_cached,
        len(todo),
        settings.model,
    )
    failures: dict[str, str] = {}
    new_entries: list[dict] = []
    skipped = calls_made = 0
    started = time.perf_counter()
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s

    def run_one(call: LLMCall) -> dict:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeBudgetExhausted
        return call_llm(settings, call)

    with ThreadPoolExecutor(max_workers=max(1, settings.concurrency)) as pool:
        futures = {pool.submit(run_one, c): c for c in todo.values()}
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc, disable=not todo):
            call = futures[future]
            try:
                result = future.result()
            except TimeBudgetExhausted:
                skipped += 1
                continue
            except Exception as exc:
                calls_made += 1
                for key in call.keys:
                    failures[key] = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            calls_made += 1
            # One entry per sample; the request's tokens and cost are counted on its first.
            totals = {k: result[k] for k in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens", "cost_usd")}
            for i, (key, completion) in enumerate(zip(call.keys, result["completions"], strict=True)):
                entry = {
                    "key": key,
                    "call": call.keys[0],
                    "model": settings.model,
                    **call.record,
                    "completion": completion,
                    **(totals if i == 0 else dict.fromkeys(totals, 0)),
                    "latency_s": result["latency_s"],
                }
                cache.put(entry)
                new_entries.append(entry)
    return CallRun(failures, new_entries, n_cached, time.perf_counter() - started, calls_made, skipped)
