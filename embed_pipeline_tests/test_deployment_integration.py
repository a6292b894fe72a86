"""The compose deployment's processes, natively: a real PostgreSQL cluster on a loopback port, `dagster
code-server`, `dagster-webserver` and `dagster-daemon` on the repo's Postgres instance file. A corpus file
dropped into the watched folder must become a corpus version whose sensor-launched run succeeds, seen
through the webserver's GraphQL API; every process is then stopped by its PID."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from embed_pipeline.core.versions import corpus_version_key
from embed_pipeline.defs.resources import SAMPLE_CORPUS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 900
# A small but whole run: every asset, gates loosened (a one-epoch fine-tune on a few questions proves the
# plumbing, not the model).
TINY_RUN = {
    "synthetic_qa": {"max_chunks": 8, "questions_per_chunk": 2, "temperature": 0.7},
    "qa_splits": {"test_fraction": 0.3},
    "hard_negatives": {"num_mined": 3},
    "finetuned_model": {"epochs": 1, "num_negatives": 2},
    "beir_report": {"gate_tolerance": 1.0, "regression_tolerance": 1.0},
}


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture
def postgres() -> Iterator[dict[str, str]]:
    """A throwaway cluster on a free loopback port; yields the DAGSTER_POSTGRES_* settings."""
    pg_bin = _postgres_bin()
    if pg_bin is None:
        pytest.fail("PostgreSQL binaries not found: scripts/test.sh installs them (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="embed-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", _free_port()
    subprocess.run(
        _as_postgres([str(pg_bin / "initdb"), "-D", str(data), "-U", "dagster", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(
        _as_postgres([str(pg_bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [str(pg_bin / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster"],
            check=True,
            capture_output=True,
        )
        yield {
            "DAGSTER_POSTGRES_USER": "dagster",
            "DAGSTER_POSTGRES_PASSWORD": "dagster",
            "DAGSTER_POSTGRES_HOST": "127.0.0.1",
            "DAGSTER_POSTGRES_PORT": str(port),
            "DAGSTER_POSTGRES_DB": "dagster",
        }
    finally:
        postmaster = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (data / "postmaster.pid").exists():
            time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def _wait(what: str, check, timeout: float, processes: dict[str, subprocess.Popen]):
    """Poll `check()` until it returns something truthy; fail naming `what` (or a process that died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in processes.items():
            assert process.poll() is None, f"{name} exited with code {process.returncode}"
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_a_new_document_becomes_a_corpus_version_built_by_the_sensor_run(postgres, tmp_path):
    home, docs, artifacts = tmp_path / "dagster_home", tmp_path / "watched", tmp_path / "artifacts"
    home.mkdir()
    docs.mkdir()
    shutil.copy(REPO / "embed_pipeline" / "instance" / "dagster.postgres.yaml", home / "dagster.yaml")
    (tmp_path / "automated.yaml").write_text(yaml.safe_dump(TINY_RUN))
    grpc_port, web_port = _free_port(), _free_port()
    workspace = {"load_from": [{"grpc_server": {"host": "127.0.0.1", "port": grpc_port, "location_name": "embed"}}]}
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    env = {
        **os.environ,
        **postgres,
        "DAGSTER_HOME": str(home),
        "EMBED_PIPELINE_DOCS": str(docs),
        "EMBED_PIPELINE_ARTIFACTS": str(artifacts),
        "EMBED_PIPELINE_RUN_CONFIG": str(tmp_path / "automated.yaml"),
        "EMBED_PIPELINE_SENSOR_INTERVAL_S": "5",
        "EMBED_PIPELINE_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    commands = {
        "code-server": [
            str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(grpc_port),
            "-m", "embed_pipeline.definitions",
        ],
        "webserver": [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port), "-w", "workspace.yaml"],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
    }  # fmt: skip
    processes: dict[str, subprocess.Popen] = {}
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in commands}
    url = f"http://127.0.0.1:{web_port}"
    try:
        for name, command in commands.items():
            processes[name] = subprocess.Popen(
                command, cwd=tmp_path, env=env, stdout=logs[name], stderr=subprocess.STDOUT, start_new_session=True
            )
            if name == "code-server":  # the others need the definitions served first
                _wait("the code server", lambda: _grpc_ready(grpc_port, env), 180, processes)
        _wait("the webserver", lambda: httpx.get(f"{url}/server_info", timeout=5).status_code == 200, 180, processes)

        # The folder is empty: the sensor waits. Then a corpus file arrives.
        corpus = [json.loads(line) for line in (SAMPLE_CORPUS / "corpus.jsonl").open()][:10]
        (docs / "corpus.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in corpus))
        version = corpus_version_key(docs)

        runs_query = """query($version: String!) { runsOrError(filter: {tags: [
            {key: "dagster/partition", value: $version}, {key: "embed_pipeline/trigger", value: "sensor"}]}) {
            ... on Runs { results { runId status jobName } } } }"""

        def finished_run():
            results = _graphql(url, runs_query, {"version": version})["runsOrError"]["results"]
            done = [r for r in results if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
            return done[0] if done else None

        run = _wait(f"the sensor's run of version {version}", finished_run, RUN_TIMEOUT_S, processes)
        assert run["status"] == "SUCCESS", (tmp_path / "daemon.log").read_text()[-3000:]
        assert run["jobName"] == "train_corpus_version"

        asset_query = """query($path: [String!]!, $version: String!) {
            assetNodeOrError(assetKey: {path: $path}) { ... on AssetNode {
                partitionKeys dependencyKeys { path }
                assetMaterializations(partitions: [$version]) { runId partition } } } }"""
        lineage = {}
        for asset in ("raw_documents", "synthetic_qa", "finetuned_model", "beir_report", "onnx_int8_model"):
            node = _graphql(url, asset_query, {"path": [asset], "version": version})["assetNodeOrError"]
            assert node["partitionKeys"] == [version], asset
            assert [(m["runId"], m["partition"]) for m in node["assetMaterializations"]] == [(run["runId"], version)]
            lineage[asset] = sorted("/".join(k["path"]) for k in node["dependencyKeys"])
        assert lineage["raw_documents"] == [] and lineage["synthetic_qa"] == ["chunked_corpus"]
        assert lineage["beir_report"] == ["chunked_corpus", "finetuned_model", "qa_splits"]
        assert (artifacts / "versions" / version / "documents" / "corpus.jsonl").is_file()
        assert list((artifacts / "versions" / version / "models").glob("onnx-int8-*/model.onnx"))
    finally:
        for process in processes.values():
            os.kill(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for log in logs.values():
            log.close()
    assert all(process.returncode is not None for process in processes.values())


def _grpc_ready(port: int, env: dict) -> bool:
    done = subprocess.run(
        [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(port)], env=env, capture_output=True, timeout=60
    )
    return done.returncode == 0
