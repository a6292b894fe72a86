"""The compose deployment's processes, natively: a real PostgreSQL cluster on a loopback port, `dagster
code-server`, `dagster-webserver` and `dagster-daemon` on the repo's Postgres instance file. A corpus file
dropped into the watched folder must become a corpus version whose sensor-launched run succeeds, seen
through the webserver's GraphQL API; then a backfill over that version and a grown one must reuse the
cached questions; every process is then stopped by its PID."""

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
import pandas as pd
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
    "synthetic_qa": {"max_chunks": 8, "questions_per_chunk": 2, "temperature": 0.7, "min_questions": 2},
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
        (docs / "corpus.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in _sample_docs()[:10]))
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
        assert lineage["beir_report"] == ["chunked_corpus", "finetuned_model", "qa_splits", "teacher"]
        assert (artifacts / "versions" / version / "documents" / "corpus.jsonl").is_file()
        assert list((artifacts / "versions" / version / "models").glob("onnx-int8-*/model.onnx"))

        # A backfill over two versions, the second with one more document, up to the questions: the first
        # version's questions all come from the cache, the second pays only for chunks of the new document.
        _stop_sensor(url)
        (docs / "more.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in _sample_docs()[10:13]))
        grown = corpus_version_key(docs)
        repository = {"repositoryName": "__repository__", "repositoryLocationName": "embed"}
        added = _graphql(
            url,
            """mutation($repo: RepositorySelector!, $key: String!) { addDynamicPartition(repositorySelector: $repo,
                partitionsDefName: "corpus_versions", partitionKey: $key) { __typename } }""",
            {"repo": repository, "key": grown},
        )
        assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess"
        launched = _graphql(
            url,
            """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
                __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
            {
                "params": {
                    "partitionNames": [version, grown],
                    "assetSelection": [{"path": [a]} for a in ("raw_documents", "chunked_corpus", "synthetic_qa")],
                    "runConfigData": {"ops": {"synthetic_qa": {"config": TINY_RUN["synthetic_qa"]}}},
                }
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_runs = """query($id: String!) { runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
            ... on Runs { results { runId status tags { key value } } } } }"""

        def backfill_done():
            results = _graphql(url, backfill_runs, {"id": launched["backfillId"]})["runsOrError"]["results"]
            finished = [r for r in results if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
            return results if len(finished) == 2 else None

        runs = _wait("the backfill's two runs", backfill_done, RUN_TIMEOUT_S, processes)
        assert {r["status"] for r in runs} == {"SUCCESS"}
        calls = {key: _llm_calls(url, key) for key in (version, grown)}
        assert calls[version]["llm_calls_made"] == 0 and calls[version]["llm_calls_cached"] > 0
        new_chunks = pd.read_parquet(artifacts / "versions" / grown / "chunked_corpus.parquet")
        new_doc_ids = {d["_id"] for d in _sample_docs()[10:13]}
        assert 0 < calls[grown]["llm_calls_made"] <= new_chunks["doc_id"].isin(new_doc_ids).sum()
        assert calls[grown]["llm_calls_cached"] > 0  # chunks shared with the first version
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


def _sample_docs() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE_CORPUS / "corpus.jsonl").open()]


def _stop_sensor(url: str) -> None:
    """Stop the documents sensor (through the API, as a user in the UI would) so a new file starts no run."""
    selector = {"repositoryName": "__repository__", "repositoryLocationName": "embed", "sensorName": "documents_sensor"}
    sensor = _graphql(
        url,
        """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor {
            jobOriginId sensorState { selectorId } } } }""",
        {"s": selector},
    )["sensorOrError"]
    stopped = _graphql(
        url,
        """mutation($origin: String!, $selector: String!) { stopSensor(jobOriginId: $origin, jobSelectorId: $selector) {
            __typename ... on StopSensorMutationResult { instigationState { status } } } }""",
        {"origin": sensor["jobOriginId"], "selector": sensor["sensorState"]["selectorId"]},
    )["stopSensor"]
    assert stopped["instigationState"]["status"] == "STOPPED", stopped


def _llm_calls(url: str, version: str) -> dict[str, int]:
    """The LLM call counts of synthetic_qa's latest materialization of `version` (its metadata)."""
    node = _graphql(
        url,
        """query($v: String!) { assetNodeOrError(assetKey: {path: ["synthetic_qa"]}) { ... on AssetNode {
            assetMaterializations(partitions: [$v], limit: 1) { metadataEntries {
                label ... on IntMetadataEntry { intValue } } } } } }""",
        {"v": version},
    )["assetNodeOrError"]
    (latest,) = node["assetMaterializations"]
    return {e["label"]: e["intValue"] for e in latest["metadataEntries"] if e["label"].startswith("llm_calls")}
