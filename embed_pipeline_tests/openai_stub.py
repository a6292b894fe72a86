"""A real HTTP server on loopback that speaks the OpenAI chat-completions and embeddings APIs, for tests.

It answers from a function of the prompt (or of the texts to embed), counts requests, and can fail chosen
prompts with a status code.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class OpenAIStub:
    def __init__(
        self,
        answer: Callable[[str], str | int | bytes] | None = None,
        embed: Callable[[list[str]], list[list[float]] | int] | None = None,
    ):
        """`answer(prompt)` returns the completion text, an int HTTP status to fail with, or raw bytes to
        send as a 200 body (a malformed response); `embed(texts)` the vectors of a `/v1/embeddings` request, or
        an int HTTP status to fail it with."""
        self.answer = answer
        self.embed = embed
        self.embedding_requests: list[list[str]] = []
        self.requests: list[str] = []
        self.bodies: list[dict] = []
        self.authorizations: list[str | None] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.rstrip("/").endswith("/embeddings"):
                    return self.embeddings(body)
                prompt = body["messages"][-1]["content"]
                stub.requests.append(prompt)
                stub.bodies.append(body)
                stub.authorizations.append(self.headers.get("Authorization"))
                reply = stub.answer(prompt)
                if isinstance(reply, bytes):
                    payload, status = None, 200
                elif isinstance(reply, int):
                    payload, status = {"error": {"message": "stub failure", "type": "server_error"}}, reply
                else:
                    status = 200
                    payload = {
                        "id": "cmpl-1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                    }
                data = reply if payload is None else json.dumps(payload).encode()
                self.reply(status, data)

            def embeddings(self, body: dict) -> None:
                texts = [body["input"]] if isinstance(body["input"], str) else list(body["input"])
                stub.embedding_requests.append(texts)
                stub.bodies.append(body)
                stub.authorizations.append(self.headers.get("Authorization"))
                vectors = stub.embed(texts)
                if isinstance(vectors, int):
                    error = {"error": {"message": "stub failure", "type": "server_error"}}
                    return self.reply(vectors, json.dumps(error).encode())
                if body.get("encoding_format") == "base64":  # what OpenAI's own client asks for by default
                    vectors = [base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() for v in vectors]
                payload = {
                    "object": "list",
                    "model": body["model"],
                    "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                    "usage": {"prompt_tokens": 3 * len(texts), "total_tokens": 3 * len(texts)},
                }
                self.reply(200, json.dumps(payload).encode())

            def reply(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OpenAIStub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def question_json(question: str, reasoning_type: str = "factual", complexity: int = 2, form: str = "question") -> str:
    """What a capable model answers to the JSON-schema query prompt."""
    return json.dumps({"form": form, "query": question, "reasoning_type": reasoning_type, "complexity": complexity})
