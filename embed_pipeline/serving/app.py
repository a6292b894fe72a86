"""An OpenAI-compatible `/v1/embeddings` server over an ONNX export (onnxruntime: TensorRT or CUDA when present).

The contract in the design notes: OpenAI request/response and error envelope, `encoding_format`
float/base64, `dimensions` (truncate + re-normalise; sizes from `allowed_dimensions`), `input_type`
(query/passage: the prompt the model was trained with, recorded in the export, is prepended),
`truncate` (END, START or NONE: refuse over-long inputs), `/v1/models`, liveness/readiness, Prometheus
`/metrics`, optional bearer token, limits on batch size, input length and body size; concurrent
requests are encoded together (`DynamicBatcher`).
"""

from __future__ import annotations

import base64
import hmac
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from embed_pipeline.core.export import OnnxEncoder
from embed_pipeline.serving.batching import DynamicBatcher


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)
    input_type: Literal["query", "passage", "document"] | None = None
    truncate: Literal["NONE", "START", "END"] = "END"
    user: str | None = None


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": code}}
    )


def create_app(
    onnx_dir: str | Path,
    model_name: str | None = None,
    api_key: str | None = None,
    max_batch: int = 256,
    max_input_chars: int = 32_768,
    allowed_dimensions: list[int] | None = None,
    max_body_bytes: int = 4 * 2**20,
    batch_wait_ms: float = 0.0,
    max_batch_texts: int = 128,
) -> FastAPI:
    """Build the app around one ONNX export folder (loaded once, at start-up)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

    encoder = OnnxEncoder(onnx_dir)
    name = model_name or Path(onnx_dir).resolve().name
    dims = sorted(set(allowed_dimensions or [encoder.dim]))
    if any(d > encoder.dim or d <= 0 for d in dims):
        raise ValueError(f"allowed_dimensions {dims} must lie in 1..{encoder.dim} for {onnx_dir}")
    app = FastAPI(title="embed_pipeline embeddings", version="1")
    started = int(time.time())
    registry = CollectorRegistry()  # one per app: several apps (tests) never share counters
    requests = Counter("embed_requests", "Requests to /v1/embeddings by HTTP status.", ["status"], registry=registry)
    latency = Histogram("embed_request_seconds", "Latency of /v1/embeddings requests.", registry=registry)
    texts_total = Counter("embed_texts", "Texts embedded.", registry=registry)
    tokens_total = Counter("embed_tokens", "Tokens embedded (after truncation).", registry=registry)
    batch_texts = Histogram(
        "embed_batch_texts",
        "Texts per model call after dynamic batching.",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        registry=registry,
    )
    batcher = DynamicBatcher(
        lambda texts, options: encoder.embed(texts, batch_size=32, keep_end=options[0], dimensions=options[1]),
        wait_ms=batch_wait_ms,
        max_texts=max_batch_texts,
        on_batch=batch_texts.observe,
    )

    @app.middleware("http")
    async def limits_and_metrics(request: Request, call_next):
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > max_body_bytes:
            response = _error(413, f"Request body of {size} bytes exceeds the limit of {max_body_bytes}.", "input")
        else:
            began = time.perf_counter()
            response = await call_next(request)
            if request.url.path == "/v1/embeddings":
                latency.observe(time.perf_counter() - began)
        if request.url.path == "/v1/embeddings":
            requests.labels(status=str(response.status_code)).inc()
        return response

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        path = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = path[0] if path else None  # the request field, as OpenAI reports it
        detail = ".".join(path) or "body"
        return _error(400, f"Invalid request: {first.get('msg', 'malformed body')} (at {detail})", where)

    def authorize(authorization: str | None) -> None:
        if api_key is None:
            return
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(token, api_key):
            raise APIError(401, "Missing or wrong bearer token.", code="invalid_api_key")

    @app.post("/v1/embeddings")
    def embeddings(body: EmbeddingRequest, authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
        authorize(authorization)
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise APIError(400, "'input' must not be empty.", "input")
        if len(texts) > max_batch:
            raise APIError(413, f"At most {max_batch} inputs per request, got {len(texts)}.", "input")
        for i, text in enumerate(texts):
            if not text.strip():
                raise APIError(400, f"input[{i}] is empty.", "input")
            if len(text) > max_input_chars:
                raise APIError(413, f"input[{i}] has {len(text)} characters; the limit is {max_input_chars}.", "input")
        if body.dimensions is not None and body.dimensions not in dims:
            raise APIError(400, f"dimensions={body.dimensions} is not served; allowed: {dims}.", "dimensions")
        kind = {"query": "query", "passage": "document", "document": "document"}.get(body.input_type or "")
        prompt = encoder.prompts.get(kind, "") if kind else ""
        texts = [prompt + t for t in texts]
        if body.truncate == "NONE":
            for i, n in enumerate(encoder.token_counts(texts)):
                if n > encoder.max_seq_length:
                    raise APIError(
                        400,
                        f"input[{i}] has {n} tokens; the model reads {encoder.max_seq_length}. Shorten it or "
                        "send truncate=END (or START).",
                        "input",
                    )
        # Truncation to `dimensions` and re-normalisation happen in the ONNX graph.
        vectors, counts = batcher.encode(texts, options=(body.truncate == "START", body.dimensions))
        n_tokens = int(counts.sum())
        texts_total.inc(len(texts))
        tokens_total.inc(n_tokens)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
                if body.encoding_format == "base64"
                else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ]
        # Returned as a response, not a dict: FastAPI's generic encoder walks every float (2 ms per 8 vectors).
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": name,
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            }
        )

    @app.get("/v1/models")
    def models(authorization: Annotated[str | None, Header()] = None) -> dict:
        authorize(authorization)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "local"}]}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/health/live")
    def live() -> dict:
        return {"status": "live"}

    @app.get("/v1/health/ready")
    def ready() -> dict:
        return {"status": "ready", "model": name, "dimensions": dims, "prompts": encoder.prompts}

    return app
