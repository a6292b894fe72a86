"""Any embedding model behind the one interface evaluation uses (`encode_query` / `encode_document`):
a sentence-transformers model (Hugging Face id or folder), an ONNX export folder, or a running
OpenAI-compatible `/v1/embeddings` endpoint, so a served model is scored exactly like its checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

ENDPOINT_BATCH = 64
ENDPOINT_TIMEOUT_S = 60.0  # per request to an endpoint; a stalled server fails the run instead of hanging it
ENDPOINT_RETRIES = 2


class PromptedEncoder:
    """Wraps a plain `encode(texts, batch_size) -> vectors` with the query and passage prompts, and returns
    unit-length float32 rows like `SentenceTransformer.encode_query` / `encode_document` do."""

    def __init__(
        self, encode: Callable[[list[str], int], np.ndarray], query_prompt: str = "", passage_prompt: str = ""
    ):
        self._encode = encode
        self.query_prompt, self.passage_prompt = query_prompt, passage_prompt

    def _unit(self, texts: list[str], batch_size: int) -> np.ndarray:
        vectors = np.asarray(self._encode(texts, batch_size), dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def encode_query(self, texts: list[str], batch_size: int = 64, **_) -> np.ndarray:
        return self._unit([self.query_prompt + t for t in texts], batch_size)

    def encode_document(self, texts: list[str], batch_size: int = 64, **_) -> np.ndarray:
        return self._unit([self.passage_prompt + t for t in texts], batch_size)


def endpoint_encode(
    url: str, api_key_env: str | None = None, model: str | None = None, timeout_s: float = ENDPOINT_TIMEOUT_S
):
    """`encode(texts, batch_size)` against an OpenAI-compatible server (`url` is its base URL, with or
    without `/v1`); the model defaults to the first one the server lists. Each request gets `timeout_s`
    seconds and ENDPOINT_RETRIES retries; errors name the URL, and a timeout the setting that raises it."""
    import openai

    base_url = url.rstrip("/") if url.rstrip("/").endswith("/v1") else url.rstrip("/") + "/v1"
    api_key = "none"
    if api_key_env:
        api_key = os.environ.get(api_key_env) or ""
        if not api_key:
            raise ValueError(f"--api-key-env names {api_key_env!r}, which is not set")
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=ENDPOINT_RETRIES, timeout=timeout_s)

    def failure(what: str, exc: Exception) -> ValueError:
        if isinstance(exc, openai.APITimeoutError):
            exc = f"no answer within {timeout_s:g} s, {ENDPOINT_RETRIES + 1} tries (raise it with --timeout)"
        return ValueError(f"{what}: {exc}")

    try:
        model = model or client.models.list().data[0].id
    except openai.OpenAIError as exc:
        raise failure(f"cannot list the models of {base_url}", exc) from exc

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        rows = []
        for start in range(0, len(texts), min(batch_size, ENDPOINT_BATCH)):
            batch = texts[start : start + min(batch_size, ENDPOINT_BATCH)]
            try:
                response = client.embeddings.create(model=model, input=batch, encoding_format="float")
            except openai.OpenAIError as exc:
                raise failure(f"{base_url}/embeddings failed on inputs {start}..{start + len(batch) - 1}", exc) from exc
            rows.extend(d.embedding for d in sorted(response.data, key=lambda d: d.index))
        return np.array(rows, dtype=np.float32).reshape(len(texts), -1)

    return encode


def load_encoder(
    model: str,
    device: str = "cpu",
    query_prompt: str | None = None,
    passage_prompt: str | None = None,
    api_key_env: str | None = None,
    truncate_dim: int | None = None,
    endpoint_timeout_s: float = ENDPOINT_TIMEOUT_S,
):
    """The encoder for `model`: an http(s) URL is an OpenAI-compatible endpoint, a folder holding
    `export.json` an ONNX export, anything else a sentence-transformers model id or folder; the last two
    use their own recorded prompts unless prompts are given. `truncate_dim` keeps the first that many
    dimensions (Matryoshka), re-normalised; `endpoint_timeout_s` bounds each request to an endpoint."""
    from embed_pipeline.core.device import load_bi_encoder
    from embed_pipeline.core.onnx_runtime import EXPORT_INFO, OnnxEncoder

    prompts = (query_prompt or "", passage_prompt or "")
    if model.startswith(("http://", "https://")):
        encode = endpoint_encode(model, api_key_env, timeout_s=endpoint_timeout_s)
    elif Path(model, EXPORT_INFO).is_file():
        onnx = OnnxEncoder(model)
        prompts = (
            onnx.prompts.get("query", "") if query_prompt is None else query_prompt,
            onnx.prompts.get("document", "") if passage_prompt is None else passage_prompt,
        )

        def encode(texts: list[str], batch_size: int) -> np.ndarray:
            return onnx.encode(texts, batch_size)
    else:
        return load_bi_encoder(model, device, query_prompt, passage_prompt, truncate_dim=truncate_dim)
    if truncate_dim is None:
        return PromptedEncoder(encode, *prompts)
    return PromptedEncoder(lambda texts, batch_size: encode(texts, batch_size)[:, :truncate_dim], *prompts)


class CachedDocuments:
    """A model whose `encode_document` answers from a disk cache of its earlier passage embeddings (keyed by
    the text's hash) and encodes only passages it has not seen; everything else is the model's own. One folder
    holds one model with one document prompt: mining, the hybrid teacher, validation and the report then encode
    the corpus once, and a re-run on a grown corpus encodes only the new chunks. Vectors are unit length."""

    VECTORS, KEYS = "vectors.npy", "keys.json"

    def __init__(self, model, folder: str | Path) -> None:
        self.model, self.folder = model, Path(folder)
        self.index: dict[str, int] = {}
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        if (self.folder / self.KEYS).is_file() and (self.folder / self.VECTORS).is_file():
            keys = json.loads((self.folder / self.KEYS).read_text(encoding="utf-8"))
            vectors = np.load(self.folder / self.VECTORS)
            if len(keys) == len(vectors):  # a torn pair (crash between the two writes) is ignored
                self.index, self.vectors = {k: i for i, k in enumerate(keys)}, vectors

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def encode_document(self, texts: list[str], **kwargs) -> np.ndarray:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("normalize_embeddings", "convert_to_numpy")}
        unsupported = {k for k, v in kwargs.items() if v is not None} - {"batch_size", "show_progress_bar", "pool"}
        unsupported -= {"prompt_name"} if kwargs.get("prompt_name") in (None, "document") else set()
        if unsupported:  # another prompt or output than the cache holds: encode without it
            return self.model.encode_document(texts, normalize_embeddings=True, convert_to_numpy=True, **kwargs)
        keys = [self._key(t) for t in texts]
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys, strict=True) if k not in self.index))
        if missing:
            new = self.model.encode_document(missing, normalize_embeddings=True, convert_to_numpy=True, **kwargs)
            new = np.asarray(new, dtype=np.float32)
            start = len(self.index)
            self.vectors = new if not self.index else np.concatenate([self.vectors, new])
            self.index.update({self._key(t): start + i for i, t in enumerate(missing)})
            self._save()
        return self.vectors[[self.index[k] for k in keys]]

    def _save(self) -> None:
        from embed_pipeline.core.atomic import write_atomically

        def save_vectors(tmp: Path) -> None:
            with tmp.open("wb") as f:  # a file object: np.save would add ".npy" to a path
                np.save(f, self.vectors)

        write_atomically(self.folder / self.VECTORS, save_vectors)
        write_atomically(self.folder / self.KEYS, lambda tmp: tmp.write_text(json.dumps(list(self.index))))
