"""An OpenAI-compatible `/v1/embeddings` server over an ONNX export (onnxruntime: TensorRT or CUDA when present).

The contract in the design notes: OpenAI request/response and error envelope, `encoding_format`
float/base64, `dimensions` (truncate + re-normalise; sizes from `allowed_dimensions`), `input_type`
(query/passage: the prompt the model was trained with, recorded in the export, is prepended),
`truncate` (END, START or NONE: refuse over-long inputs), `/v1/models`, liveness/readiness, Prometheus
`/metrics`, optional bearer token; concurrent requests are encoded together (`DynamicBatcher`).

Hardened against hostile or careless clients (`serving.limits.ServeLimits`): the bearer token is checked before the body
is read; the body limit holds while the body streams in, chunked or not; every error, 404 and 405 included,
is an OpenAI envelope; inputs that cannot be encoded are refused before they join a batch, and a batch that
fails anyway fails only its bad request; each input is cut to a few times the model's window before
tokenizing; a full queue answers 503 with `Retry-After`, and a request waits at most its deadline.
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from embed_pipeline.core.batching import DeadlineExceeded, DynamicBatcher, EncodeFailed, Overloaded
from embed_pipeline.core.onnx_runtime import OnnxEncoder
from embed_pipeline.serving.limits import ServeLimits

log = logging.getLogger(__name__)

# An input is cut to this many characters per token of the model's window before tokenizing: truncation to
# the window happens anyway, and no real token is longer (WordPiece reads a word of over 100 characters as one
# unknown token, so only such words can lose text to the cut).
CHARS_PER_TOKEN = 16
PROTECTED_PATHS = ("/v1/embeddings", "/v1/models")


class EmbeddingRequest(BaseModel):
    input: str | list[str] = Field(description="One text or a list of texts, none of them empty.")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, gt=0)
    input_type: Literal["query", "passage", "document"] | None = None
    truncate: Literal["NONE", "START", "END"] = "END"
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # a base64 string of little-endian float32 with encoding_format=base64


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, headers=None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 503: "server_error", 500: "server_error"}


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    """The OpenAI error envelope. A refusal that leaves the body unread (401, 413) closes the connection, so
    the server never reads the rest of it."""
    headers = dict(headers or {})
    if status in (401, 413):
        headers["Connection"] = "close"
    body = {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"), "param": param, "code": code}
    return JSONResponse(status_code=status, content={"error": body}, headers=headers)


def too_large(max_body_bytes: int) -> JSONResponse:
    return _error(413, f"The request body exceeds the limit of {max_body_bytes} bytes.", "input")


class RequestGuard:
    """ASGI middleware in front of every route: checks the bearer token on the protected paths before anything
    reads the body, enforces the body limit on the declared length and again on every chunk as it streams in
    (so an oversized body is never held, chunked or not), and reports each request's status and latency."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, observe) -> None:
        self.app, self.api_key, self.max_body_bytes, self.observe = app, api_key, max_body_bytes, observe

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return self.api_key is None or (scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self.api_key))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, status = time.perf_counter(), [500]

        async def recording_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        headers, received = Headers(scope=scope), 0
        declared = headers.get("content-length", "")

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise HTTPException(413)
            return message

        try:
            if scope["path"] in PROTECTED_PATHS and not self._authorized(headers):
                refusal = _error(
                    401, "Missing or wrong token: send 'Authorization: Bearer TOKEN'.", None, "invalid_api_key"
                )
                await refusal(scope, receive, recording_send)
            elif declared.isdigit() and int(declared) > self.max_body_bytes:
                await too_large(self.max_body_bytes)(scope, receive, recording_send)
            else:
                await self.app(scope, limited_receive, recording_send)
        finally:
            self.observe(scope["path"], status[0], time.perf_counter() - began)


def _documented(*statuses: int) -> dict:
    return {status: {"model": ErrorResponse, "description": "An OpenAI error envelope."} for status in statuses}


def create_app(
    onnx_dir: str | Path,
    model_name: str | None = None,
    api_key: str | None = None,
    allowed_dimensions: list[int] | None = None,
    limits: ServeLimits | None = None,
) -> FastAPI:
    """Build the app around one ONNX export folder (loaded once, at start-up), under `limits` (default:
    `ServeLimits()`)."""
    limits = limits or ServeLimits()
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

    registry = CollectorRegistry()  # one per app: several apps (tests) never share counters
    model_tokens = Counter("embed_model_tokens", "Tokens the model computed, padding excluded.", registry=registry)
    model_positions = Counter(
        "embed_model_positions",
        "Positions the model computed, padding included (padded share = 1 - tokens / positions).",
        registry=registry,
    )

    def count_positions(tokens: int, positions: int) -> None:
        model_tokens.inc(tokens)
        model_positions.inc(positions)

    encoder = OnnxEncoder(onnx_dir, workers=limits.model_workers or None, on_batch=count_positions)
    name = model_name or Path(onnx_dir).resolve().name
    if not encoder.recommendation.get("recommended", True):
        log.warning("Serving %s, which is marked not recommended: %s", onnx_dir, encoder.recommendation["reason"])
    if encoder.verdict and not encoder.verdict.get("improved", True):
        log.warning("Serving %s, marked %r: %s", onnx_dir, encoder.verdict["verdict"], encoder.verdict["summary"])
    dims = sorted(set(allowed_dimensions or [encoder.dim]))
    if any(d > encoder.dim or d <= 0 for d in dims):
        raise ValueError(f"allowed_dimensions {dims} must lie in 1..{encoder.dim} for {onnx_dir}")
    max_chars = encoder.max_seq_length * CHARS_PER_TOKEN
    app = FastAPI(title="embed_pipeline embeddings", version="1")
    started = int(time.time())
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
        lambda texts, options: encoder.embed(
            texts, batch_size=32, keep_end=options[0], dimensions=options[1], max_tokens=limits.call_tokens or None
        ),
        cost=lambda text: min(encoder.max_seq_length, len(text) // 4 + 2),
        wait_ms=limits.batch_wait_ms,
        max_texts=limits.max_batch_texts,
        max_tokens=limits.max_batch_tokens,
        max_queued_texts=limits.max_queued_texts,
        timeout_s=limits.request_timeout_s,
        on_batch=batch_texts.observe,
        name="embedding-batcher",
    )

    def observe(path: str, status: int, seconds: float) -> None:
        if path == "/v1/embeddings":
            latency.observe(seconds)
            requests.labels(status=str(status)).inc()

    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=limits.max_body_bytes, observe=observe)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        """Starlette's own refusals (404, 405, 413 while the body streams in, an unparseable body), enveloped."""
        message = {
            404: f"No route {request.url.path}; the API serves /v1/embeddings and /v1/models.",
            405: f"{request.method} is not allowed on {request.url.path}.",
        }.get(exc.status_code, f"Invalid request: {exc.detail}.")
        if exc.status_code == 413:  # the body grew past the limit while it streamed in (RequestGuard)
            return too_large(limits.max_body_bytes)
        return _error(exc.status_code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _error(500, "The server failed on this request; it was logged.")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The deepest error is the most specific one: for `input`, the list branch's failing item (input.1),
        # not the string branch; union branch tags are dropped from the path.
        first = max(exc.errors(), key=lambda e: len(e.get("loc", ())), default={})
        path = [str(p) for p in first.get("loc", ()) if isinstance(p, int) or p in EmbeddingRequest.model_fields]
        where = path[0] if path else None  # the request field, as OpenAI reports it
        detail = ".".join(path) or "body"
        return _error(400, f"Invalid request: {first.get('msg', 'malformed body')} (at {detail})", where)

    def checked_texts(body: EmbeddingRequest) -> list[str]:
        """The request's inputs with the prompt of its `input_type`, cut to `max_chars`; refuses what the model
        cannot read (empty, too long, not encodable as UTF-8) before it joins a batch."""
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise APIError(400, "'input' must not be empty.", "input")
        if len(texts) > limits.max_batch:
            raise APIError(413, f"At most {limits.max_batch} inputs per request, got {len(texts)}.", "input")
        for i, text in enumerate(texts):
            if not text.strip():
                raise APIError(400, f"input[{i}] is empty.", "input")
            if len(text) > limits.max_input_chars:
                raise APIError(
                    413, f"input[{i}] has {len(text)} characters; the limit is {limits.max_input_chars}.", "input"
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise APIError(
                    400,
                    f"input[{i}] is not valid Unicode text: character {exc.start} is a lone surrogate "
                    f"({text[exc.start]!a}).",
                    "input",
                ) from None
            if body.truncate == "NONE" and len(text) > max_chars:
                raise APIError(
                    400,
                    f"input[{i}] has {len(text)} characters, more than the model's {encoder.max_seq_length} tokens "
                    f"hold; with truncate=NONE at most {max_chars} are read. Shorten it or send truncate=END.",
                    "input",
                )
        kind = {"query": "query", "passage": "document", "document": "document"}.get(body.input_type or "")
        prompt = encoder.prompts.get(kind, "") if kind else ""
        keep_end = body.truncate == "START"
        return [(prompt + t)[-max_chars:] if keep_end else (prompt + t)[:max_chars] for t in texts]

    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingResponse,
        responses=_documented(400, 401, 413, 503),
    )
    def embeddings(body: EmbeddingRequest) -> Response:
        texts = checked_texts(body)
        if body.dimensions is not None and body.dimensions not in dims:
            raise APIError(400, f"dimensions={body.dimensions} is not served; allowed: {dims}.", "dimensions")
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
        try:
            vectors, counts = batcher.run(texts, options=(body.truncate == "START", body.dimensions))
        except Overloaded as exc:
            raise APIError(503, str(exc), code="overloaded", headers={"Retry-After": str(exc.retry_after_s)}) from None
        except DeadlineExceeded as exc:
            raise APIError(
                503, f"The request was {exc}; retry later.", code="timeout", headers={"Retry-After": "1"}
            ) from None
        except EncodeFailed as exc:
            raise APIError(400, f"input: {exc}.", "input") from None
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

    @app.get("/v1/models", response_model=ModelList, responses=_documented(401))
    def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "local"}]}

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
    )
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/health/live")
    def live() -> dict:
        return {"status": "live"}

    @app.get("/v1/health/ready")
    def ready() -> dict:
        return {"status": "ready", "model": name, "dimensions": dims, "prompts": encoder.prompts}

    def openapi() -> dict:
        """FastAPI's document, corrected to what the server sends: no 422 (refusals are 400 in the OpenAI
        envelope) and, with a token, the bearer scheme on the protected paths."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
                    if api_key is not None and path in PROTECTED_PATHS:
                        operation["security"] = [{"bearer": []}]
            components = schema.setdefault("components", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(unused, None)
            if api_key is not None:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
