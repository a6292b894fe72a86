"""The real server on a loopback port, called with the official openai client."""

import base64
import concurrent.futures
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from embed_pipeline.cli import main
from embed_pipeline.core.device import base_model_path
from embed_pipeline.core.export import export_onnx
from embed_pipeline.core.report import REAL
from embed_pipeline.defs.resources import SAMPLE_CORPUS
from embed_pipeline.serving.app import create_app
from embed_pipeline.serving.limits import ServeLimits

TEXTS = ["How do statins lower cholesterol?", "Statins inhibit HMG-CoA reductase in the liver. " * 5]
TOKEN = "test-token"


@contextlib.contextmanager
def _serving(app):
    """`app` on a free loopback port in a background thread; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx") / "model"
    export_onnx(base_model_path(None), folder)
    return folder


@pytest.fixture(scope="module")
def server(onnx_dir):
    app = create_app(
        onnx_dir,
        model_name="minilm-test",
        api_key=TOKEN,
        allowed_dimensions=[384, 128],
        limits=ServeLimits(max_batch=4, max_body_bytes=65536),
    )
    with _serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def reference():
    return SentenceTransformer(base_model_path(None), device="cpu").encode(TEXTS, normalize_embeddings=True)


def test_openai_client_gets_the_checkpoint_vectors(server, reference):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=TOKEN)
    response = client.embeddings.create(model="minilm-test", input=TEXTS)
    got = np.array([d.embedding for d in response.data])
    assert np.abs(got - reference).max() < 1e-4
    assert response.model == "minilm-test"
    # Usage counts the tokens the model read, special tokens included, after truncation to its 256.
    tokenizer = AutoTokenizer.from_pretrained(base_model_path(None))
    long_text = "word " * 400
    expected = sum(len(ids) for ids in tokenizer(TEXTS)["input_ids"]) + 256
    usage = client.embeddings.create(model="minilm-test", input=[*TEXTS, long_text]).usage
    assert usage.prompt_tokens == usage.total_tokens == expected


def test_base64_and_dimensions_are_truncated_and_renormalised(server, reference):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=TOKEN)
    response = client.embeddings.create(model="minilm-test", input=TEXTS, dimensions=128, encoding_format="base64")
    raw = response.data[0].embedding
    vector = np.frombuffer(base64.b64decode(raw), dtype="<f4") if isinstance(raw, str) else np.array(raw)
    expected = reference[0][:128] / np.linalg.norm(reference[0][:128])
    assert vector.shape == (128,) and np.abs(vector - expected).max() < 1e-4


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": []}, 400, "input"),
        ({"input": ["ok", ""]}, 400, "input"),
        ({"input": 42}, 400, "input"),
        ({"input": ["a"] * 5}, 413, "input"),
        ({"input": "a", "dimensions": 100}, 400, "dimensions"),
    ],
)
def test_bad_requests_get_the_openai_error_envelope(server, body, status, param):
    r = httpx.post(f"{server}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"] == "invalid_request_error"


def test_bad_json_and_wrong_token_are_rejected(server):
    r = httpx.post(f"{server}/v1/embeddings", content=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(f"{server}/v1/embeddings", json={"input": "hi"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server}/v1/models").status_code == 401
    assert httpx.get(f"{server}/v1/health/ready").json()["dimensions"] == [128, 384]


@pytest.fixture(scope="module")
def small_beir(tmp_path_factory):
    """40 sample abstracts and the real claims judged only against them."""
    root = tmp_path_factory.mktemp("small_beir")
    docs = (SAMPLE_CORPUS / "corpus.jsonl").read_text().splitlines()[:40]
    ids = {json.loads(line)["_id"] for line in docs}
    (root / "corpus.jsonl").write_text("\n".join(docs) + "\n")
    rows = [r.split("\t") for r in (SAMPLE_CORPUS / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    kept = [r for r in rows if r[1] in ids]
    (root / "qrels").mkdir()
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join("\t".join(r) + "\n" for r in kept)
    )
    (root / "queries.jsonl").write_text((SAMPLE_CORPUS / "queries.jsonl").read_text())
    return root


def _eval(capsys, *flags: str) -> dict:
    assert main(["eval", *flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_scores_a_served_model_like_the_checkpoint_it_serves(server, small_beir, capsys, monkeypatch):
    monkeypatch.setenv("EVAL_TOKEN", TOKEN)
    served = _eval(
        capsys, "--model", server, "--api-key-env", "EVAL_TOKEN", "--batch-size", "4", "--beir", str(small_beir)
    )
    local = _eval(capsys, "--model", base_model_path(None), "--beir", str(small_beir), "--device", "cpu")
    served_set, local_set = served["query_sets"][REAL], local["query_sets"][REAL]
    assert served_set["n_queries"] == local_set["n_queries"] > 5
    served_ndcg = served_set["systems"][server]["nDCG@10"]
    assert abs(served_ndcg - local_set["systems"]["model"]["nDCG@10"]) < 0.01  # rows are named by folder
    assert served_ndcg > served_set["systems"]["BM25"]["nDCG@10"] - 0.2  # a real ranking, not noise


def test_eval_applies_the_hybrid_weight_saved_with_a_model(small_beir, tmp_path, capsys):
    import shutil

    model = tmp_path / "tuned"
    shutil.copytree(base_model_path(None), model)
    (model / "fusion.json").write_text(json.dumps({"bm25_weight": 0.3, "validation_questions": 5}))
    report = _eval(capsys, "--model", str(model), "--beir", str(small_beir), "--device", "cpu")
    systems = report["query_sets"][REAL]["systems"]
    assert "hybrid (tuned)" in systems and report["hybrid_weights"]["hybrid (tuned)"]["bm25_weight"] == 0.3
    assert systems["hybrid (tuned)"] != systems["tuned"]
    assert report["query_sets"][REAL]["ignore_identical_ids"] is False  # claim ids are not document ids


def test_eval_names_an_unreachable_server_and_a_missing_corpus(small_beir, tmp_path, capsys):
    assert main(["eval", "--model", "http://127.0.0.1:9", "--beir", str(small_beir)]) == 2
    assert "127.0.0.1:9/v1" in capsys.readouterr().err
    assert main(["eval", "--model", base_model_path(None), "--beir", str(tmp_path)]) == 2
    assert "has no corpus.jsonl" in capsys.readouterr().err


def test_oversized_body_gets_413_and_metrics_count_requests_by_status(server):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(f"{server}/v1/embeddings", json={"input": "x" * 70000}, headers=headers)
    assert r.status_code == 413 and "exceeds the limit of 65536" in r.json()["error"]["message"]
    assert httpx.post(f"{server}/v1/embeddings", json={"input": "ok"}, headers=headers).status_code == 200
    metrics = httpx.get(f"{server}/metrics").text
    assert 'embed_requests_total{status="413"}' in metrics and 'embed_requests_total{status="200"}' in metrics
    assert "embed_request_seconds_bucket" in metrics and "embed_texts_total" in metrics


def test_truncate_none_refuses_over_long_input_and_start_keeps_its_end(server):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    long_text = "Statins lower cholesterol. " * 60 + "The final sentence is about violins and bows."

    def embed(**fields):
        return httpx.post(f"{server}/v1/embeddings", json={"input": long_text, **fields}, headers=headers)

    refused = embed(truncate="NONE")
    assert refused.status_code == 400 and "tokens; the model reads 256" in refused.json()["error"]["message"]
    end, start = (np.array(embed(truncate=t).json()["data"][0]["embedding"]) for t in ("END", "START"))
    default = np.array(embed().json()["data"][0]["embedding"])
    assert np.abs(default - end).max() == 0 and float(end @ start) < 0.99  # START read a different window
    assert embed(truncate="MIDDLE").status_code == 400


def test_input_type_applies_the_prompts_the_model_was_trained_with(tmp_path):
    model = SentenceTransformer(base_model_path(None), device="cpu")
    model.prompts = {"query": "query: ", "document": "passage: "}
    model.save(str(tmp_path / "prompted"))
    export_onnx(tmp_path / "prompted", tmp_path / "onnx")
    with _serving(create_app(tmp_path / "onnx")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")

        def served(input_type: str | None) -> np.ndarray:
            extra = {"input_type": input_type} if input_type else None
            return np.array(client.embeddings.create(model="m", input=TEXTS, extra_body=extra).data[0].embedding)

        assert np.abs(served("query") - model.encode_query(TEXTS)[0]).max() < 1e-4
        assert np.abs(served("passage") - model.encode_document(TEXTS)[0]).max() < 1e-4
        assert np.abs(served(None) - model.encode(TEXTS)[0]).max() < 1e-4  # no input_type: the raw text
        assert httpx.get(f"{url}/v1/health/ready").json()["prompts"] == {"query": "query: ", "document": "passage: "}


def test_concurrent_requests_are_batched_together_and_each_gets_its_own_vectors(tmp_path):
    onnx_dir = tmp_path / "onnx"
    export_onnx(base_model_path(None), onnx_dir)
    requests = [[f"question {i}: {TEXTS[0]}", TEXTS[1][: 40 + 7 * i]] for i in range(8)]
    model = SentenceTransformer(base_model_path(None), device="cpu")
    expected = [model.encode(texts, normalize_embeddings=True) for texts in requests]
    with _serving(create_app(onnx_dir, limits=ServeLimits(batch_wait_ms=300))) as url:
        start = threading.Barrier(len(requests))

        def call(texts: list[str]) -> tuple[np.ndarray, int]:
            start.wait()
            body = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=60).json()
            return np.array([d["embedding"] for d in body["data"]]), body["usage"]["prompt_tokens"]

        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            got = list(pool.map(call, requests))
        metrics = httpx.get(f"{url}/metrics").text
    for (vectors, _), want in zip(got, expected, strict=True):
        assert np.abs(vectors - want).max() < 1e-4
    calls = float(re.search(r"^embed_batch_texts_count (\S+)$", metrics, re.M).group(1))
    texts = float(re.search(r"^embed_batch_texts_sum (\S+)$", metrics, re.M).group(1))
    assert texts == 16 and calls < len(requests)  # 8 requests, fewer model calls
    # The model's own count of what it computed: every billed token once, plus the padding of its calls.
    tokens, positions = (
        float(re.search(rf"^embed_model_{name}_total (\S+)$", metrics, re.M).group(1))
        for name in ("tokens", "positions")
    )
    assert tokens == sum(usage for _, usage in got) and tokens <= positions


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELD_VALUES = {
    "input": JSON | st.text(max_size=300) | st.lists(st.text(max_size=80), max_size=6),
    "model": JSON,
    "encoding_format": JSON | st.sampled_from(["float", "base64"]),
    "dimensions": JSON | st.integers(-5, 600),
    "input_type": JSON | st.sampled_from(["query", "passage", "document"]),
    "truncate": JSON | st.sampled_from(["NONE", "START", "END"]),
    "user": JSON,
}
BODIES = st.fixed_dictionaries({}, optional=FIELD_VALUES) | JSON


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODIES)
def test_fuzzed_request_bodies_never_get_a_5xx(server, body):
    """Property: whatever JSON arrives (any shape, any field values), the answer is 200 or a 4xx in the
    OpenAI envelope, never a server error."""
    r = httpx.post(f"{server}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert r.status_code < 500, (body, r.text)
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_server_still_answers_after_the_fuzz_run_and_raw_garbage(server):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for raw in (b"{", b"\xff\xfe", b"[]", b"null", b'{"input": "a"' + b" " * 10):
        assert httpx.post(f"{server}/v1/embeddings", content=raw, headers=headers).status_code == 400
    assert httpx.get(f"{server}/v1/health/ready").status_code == 200


def test_serve_command_is_configured_by_environment_variables_alone(onnx_dir, reference, tmp_path):
    """The container's way: `embed-pipeline serve` with no flags, every setting from EMBED_SERVE_*."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "EMBED_SERVE_MODEL": str(onnx_dir),
        "EMBED_SERVE_PORT": str(port),
        "EMBED_SERVE_NAME": "from-env",
        "EMBED_SERVE_DIMENSIONS": "64,384",
        "EMBED_SERVE_API_KEY_ENV": "MY_TOKEN",
        "MY_TOKEN": TOKEN,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "embed_pipeline.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v1/health/ready", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        ready = httpx.get(f"{url}/v1/health/ready").json()
        assert ready["model"] == "from-env" and ready["dimensions"] == [64, 384]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN)
        vectors = client.embeddings.create(model="from-env", input=TEXTS[:1], dimensions=64).data[0].embedding
        expected = reference[0][:64] / np.linalg.norm(reference[0][:64])
        assert np.abs(np.array(vectors) - expected).max() < 1e-4
        assert httpx.get(f"{url}/v1/models").status_code == 401  # the token from MY_TOKEN is required
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_bad_environment_setting_is_named(onnx_dir, monkeypatch, capsys):
    monkeypatch.setenv("EMBED_SERVE_MODEL", str(onnx_dir))
    monkeypatch.setenv("EMBED_SERVE_PORT", "eighty")
    with pytest.raises(SystemExit) as exited:
        main(["serve"])
    assert exited.value.code == 2
    assert "argument --port: invalid int value: 'eighty'" in capsys.readouterr().err
    monkeypatch.setenv("EMBED_SERVE_PORT", "8000")
    monkeypatch.setenv("EMBED_SERVE_DIMENSIONS", "64,all")
    assert main(["serve"]) == 2
    assert "EMBED_SERVE_DIMENSIONS=64,128" in capsys.readouterr().err


def test_a_lone_surrogate_fails_only_its_own_request(server, caplog):
    """`{"input": "\\ud800"}` is valid JSON that no tokenizer can read: it is refused before it joins a batch,
    while the normal requests sent at the same time all succeed."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    poison = b'{"input": ["fine", "\\ud800"]}'

    def normal(i: int) -> int:
        return httpx.post(
            f"{server}/v1/embeddings", json={"input": f"query {i}"}, headers=headers, timeout=60
        ).status_code

    def bad(_: int) -> httpx.Response:
        return httpx.post(f"{server}/v1/embeddings", content=poison, headers=headers, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        good = [pool.submit(normal, i) for i in range(48)]
        bads = [pool.submit(bad, i) for i in range(16)]
        statuses = [f.result() for f in good]
        refusals = [f.result() for f in bads]
    assert statuses == [200] * 48
    assert {r.status_code for r in refusals} == {400}
    error = refusals[0].json()["error"]
    assert error["param"] == "input" and "input[1] is not valid Unicode text" in error["message"]


def _raw_request(url: str, head: str, body_chunks=(), read_timeout: float = 10.0) -> tuple[bytes, int]:
    """Send `head` (request line and headers) and then `body_chunks` over a raw socket until the server answers
    or closes; returns (the response's first bytes, body bytes the server let us send)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(head.encode())
        conn.settimeout(0.01)
        for chunk in body_chunks:
            try:
                with contextlib.suppress(TimeoutError):
                    answer = conn.recv(4096)
                    return answer, sent
                conn.sendall(chunk)
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        conn.settimeout(read_timeout)
        try:
            return conn.recv(4096), sent
        except (TimeoutError, ConnectionResetError):
            return b"", sent


def test_a_chunked_oversized_body_is_refused_while_it_streams_in(server):
    """No Content-Length, 64 MiB in 1 MiB chunks against a 64 KiB limit: the server answers 413 and stops
    reading after a bounded amount, instead of reading and parsing the whole body."""
    head = (
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 2**20
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    answer, sent = _raw_request(server, head, [chunk] * 64)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"error"' in answer or b"413" in answer
    assert sent < 24 * 2**20  # socket buffers, not the body: the server stopped reading


def test_authentication_is_checked_before_the_body_is_read(server):
    """A request without a token gets 401 at once, though its declared body never arrives."""
    head = "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n"
    began = time.monotonic()
    answer, _ = _raw_request(server, head, read_timeout=5)
    assert answer.startswith(b"HTTP/1.1 401") and time.monotonic() - began < 2, answer[:200]
    bare = httpx.post(f"{server}/v1/embeddings", json={"input": "hi"}, headers={"Authorization": TOKEN})
    assert bare.status_code == 401  # the token without "Bearer " is not accepted


def test_every_error_is_an_openai_envelope(server):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for response in (
        httpx.get(f"{server}/v2/nothing", headers=headers),
        httpx.get(f"{server}/v1/embeddings", headers=headers),
        httpx.post(f"{server}/v1/embeddings", content=b"\xff\xfe", headers=headers),
    ):
        assert response.status_code in (400, 404, 405), response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    schema = httpx.get(f"{server}/openapi.json").json()
    operation = schema["paths"]["/v1/embeddings"]["post"]
    assert set(operation["responses"]) == {"200", "400", "401", "413", "503"}
    assert schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"].keys() == {"text/plain"}


def test_a_long_input_is_cut_before_tokenizing_without_changing_its_vector(server):
    """30,000 characters are read as the model's first 256 tokens, exactly as the checkpoint truncates them."""
    long_text = "Statins inhibit HMG-CoA reductase in the liver and lower cholesterol. " * 420
    assert 30_000 > len(long_text) > 16 * 256
    served = httpx.post(
        f"{server}/v1/embeddings", json={"input": long_text}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
    ).json()
    expected = SentenceTransformer(base_model_path(None), device="cpu").encode([long_text], normalize_embeddings=True)
    assert np.abs(np.array(served["data"][0]["embedding"]) - expected[0]).max() < 1e-4
    assert served["usage"]["prompt_tokens"] == 256


def test_a_full_queue_answers_503_with_retry_after_and_a_stuck_request_times_out(onnx_dir, monkeypatch):
    """The model is held busy: a queued request times out (503), one beyond the queue is refused at once (503
    with Retry-After), and the server serves normally once the model is free again."""
    from embed_pipeline.core.onnx_runtime import OnnxEncoder

    release = threading.Event()
    embed = OnnxEncoder.embed

    def held(self, *args, **kwargs):
        release.wait(30)
        return embed(self, *args, **kwargs)

    monkeypatch.setattr(OnnxEncoder, "embed", held)
    app = create_app(onnx_dir, limits=ServeLimits(max_queued_texts=2, request_timeout_s=1.0))
    with _serving(app) as url, concurrent.futures.ThreadPoolExecutor(2) as pool:

        def post(texts: list[str]) -> httpx.Response:
            return httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=30)

        busy = pool.submit(post, ["holds the model"])
        time.sleep(0.3)
        queued = pool.submit(post, ["waits", "in the queue"])
        time.sleep(0.3)
        refused = post(["one too many"])
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "overloaded"
        timed_out = queued.result()
        assert timed_out.status_code == 503 and timed_out.json()["error"]["code"] == "timeout"
        release.set()
        assert busy.result().status_code == 503
        assert post(["served again"]).status_code == 200


def test_eval_fails_within_its_timeout_on_a_server_that_never_answers(small_beir, capsys):
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(16)  # connections are accepted by the kernel, never answered
        url = f"http://127.0.0.1:{stalled.getsockname()[1]}"
        began = time.monotonic()
        assert main(["eval", "--model", url, "--beir", str(small_beir), "--timeout", "1"]) == 2
        assert time.monotonic() - began < 20
    assert "no answer within 1 s, 3 tries (raise it with --timeout)" in capsys.readouterr().err


def test_the_server_answers_as_its_openapi_document_says(server):
    """Requests generated from the server's own OpenAPI document (schemathesis, 25 per operation): never a
    5xx, only documented status codes, and every response, errors included, matches its documented schema
    and content type. Both generation modes: valid requests and invalid ones."""
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")  # valid and invalid requests alike
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/embeddings", "/v1/models", "/metrics"}
    cases = [(op, schemathesis.GenerationMode.POSITIVE) for op in operations]
    cases += [(op, schemathesis.GenerationMode.NEGATIVE) for op in operations if op.path == "/v1/embeddings"]
    for operation, mode in cases:  # (the other operations take no input to get wrong)

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(mode))
        def conforms(case):
            case.call_and_validate(
                headers={"Authorization": f"Bearer {TOKEN}"},
                checks=[
                    not_a_server_error,
                    status_code_conformance,
                    response_schema_conformance,
                    content_type_conformance,
                ],
                timeout=60,
            )

        conforms()


_WITHOUT_TORCH = """
import sys
from fastapi.testclient import TestClient
sys.modules["torch"] = None  # any import of torch (or of transformers, which imports it) now fails
from embed_pipeline.serving.app import create_app
client = TestClient(create_app(sys.argv[1]))
vector = client.post("/v1/embeddings", json={"input": sys.argv[2]}).json()["data"][0]["embedding"]
print(" ".join(f"{x:.6f}" for x in vector))
print(sorted(m for m in ("torch", "transformers", "sentence_transformers") if sys.modules.get(m)))
"""


def test_the_server_runs_without_torch_and_serves_the_checkpoint_vectors(onnx_dir, reference):
    """The server is onnxruntime and tokenizers only: it starts and serves in a process where torch cannot be
    imported, with the checkpoint's vectors (the tokenizer library applied as transformers would)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(onnx_dir), TEXTS[1]], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    vector_line, loaded = done.stdout.strip().splitlines()[-2:]
    vector = np.array([float(x) for x in vector_line.split()])
    assert loaded == "[]"
    assert float(vector @ reference[1]) > 0.9999
