"""Artifacts and documents on an S3-compatible object store, through s3fs against a real HTTP S3 API (moto's
server on loopback): each step can run on a different machine with only the bucket in common."""

import json
import os
import re
import shutil
import time

import dagster as dg
import pandas as pd
import pytest

from embed_pipeline.cli import main
from embed_pipeline.core.onnx_runtime import OnnxEncoder
from embed_pipeline.core.storage import COMPLETE_MARK, ArtifactStore, StorageError, shared_append_log
from embed_pipeline.core.versions import corpus_version_key
from embed_pipeline.definitions import materialize_version
from embed_pipeline.defs.automation import documents_sensor
from embed_pipeline.defs.resources import PipelineResource
from embed_pipeline_tests.openai_stub import OpenAIStub, question_json

BUCKET = "embed-test"
TOPICS = ["kinase signalling", "bone remodelling", "viral entry", "lipid transport", "gut microbiota"]


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint on loopback with one bucket; AWS_* variables point s3fs at it, as users configure MinIO."""
    import s3fs
    from moto.server import ThreadedMotoServer

    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    yield fs
    server.stop()
    for key in env:
        os.environ.pop(key, None)
    os.environ.update(saved)
    s3fs.S3FileSystem.clear_instance_cache()


def test_folders_are_pulled_only_when_completely_pushed_and_never_overwritten(s3, tmp_path):
    writer = ArtifactStore(f"s3://{BUCKET}/store-a", workdir=tmp_path / "machine-a")
    model = writer.local("versions", "v1", "models", "finetuned-run1")
    (model / "nested").mkdir(parents=True)
    (model / "config.json").write_text('{"dim": 384}')
    (model / "nested" / "weights.bin").write_bytes(bytes(range(256)) * 100)
    address = writer.push(model)
    assert address == f"s3://{BUCKET}/store-a/versions/v1/models/finetuned-run1"
    assert s3.exists(f"{BUCKET}/store-a/versions/v1/models/finetuned-run1/{COMPLETE_MARK}")

    reader = ArtifactStore(f"s3://{BUCKET}/store-a", workdir=tmp_path / "machine-b")
    copy = reader.pull(address)
    assert copy == tmp_path / "machine-b" / "versions" / "v1" / "models" / "finetuned-run1"
    assert (copy / "nested" / "weights.bin").read_bytes() == (model / "nested" / "weights.bin").read_bytes()
    assert reader.exists(copy) and not reader.exists(reader.local("versions", "v1", "models", "other"))
    with pytest.raises(FileExistsError, match="never overwritten in place"):
        writer.push(model)

    # An upload that died before its mark: not an artifact, on any machine.
    s3.pipe(f"{BUCKET}/store-a/versions/v1/models/torn/config.json", b"{}")
    with pytest.raises(
        FileNotFoundError, match=r"store-a/versions/v1/models/torn is not in the store .*never finished"
    ):
        reader.pull(f"s3://{BUCKET}/store-a/versions/v1/models/torn")
    assert reader.pull_subfolders(reader.local("versions", "v1", "models")) == [copy]

    # Checkpoints: the store keeps only those the trainer still has (rotated ones are pruned).
    checkpoints = writer.local("versions", "v1", "checkpoints", "job")
    for step in (1, 2, 3):
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        (checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        writer.push(checkpoints / f"checkpoint-{step}")
    shutil.rmtree(checkpoints / "checkpoint-1")
    writer.prune(checkpoints)
    assert [p.name for p in reader.pull_subfolders(reader.local("versions", "v1", "checkpoints", "job"))] == [
        "checkpoint-2",
        "checkpoint-3",
    ]
    writer.remove(checkpoints)
    assert not s3.exists(f"{BUCKET}/store-a/versions/v1/checkpoints/job") and not checkpoints.exists()

    # A file is re-read on refresh (asset values may be re-materialized); a local path is its own copy.
    value = writer.local("versions", "v1", "qa_splits.json")
    value.write_text("1")
    writer.push(value)
    assert reader.pull(writer.address(value), refresh=True).read_text() == "1"
    value.write_text("2")
    writer.push(value)
    assert reader.pull(writer.address(value)).read_text() == "1"
    assert reader.pull(writer.address(value), refresh=True).read_text() == "2"
    assert reader.pull(str(model)) == model


def test_shared_log_uploads_a_runs_lines_while_it_runs_and_joins_every_runs_lines(s3, tmp_path):
    store_a = ArtifactStore(f"s3://{BUCKET}/log", workdir=tmp_path / "a")
    store_b = ArtifactStore(f"s3://{BUCKET}/log", workdir=tmp_path / "b")
    with shared_append_log(store_a, "cache/llm_responses", "run-a", sync_s=0.05) as log_a:
        with log_a.open("a") as f:
            f.write('{"key": "k1"}\n{"key": "k2"}\n{"key": "torn')  # the last line is still being written
        deadline = time.time() + 10
        while not s3.find(f"{BUCKET}/log/cache/llm_responses") and time.time() < deadline:
            time.sleep(0.05)
        shards = s3.find(f"{BUCKET}/log/cache/llm_responses")
        assert len(shards) == 1, "the run's lines reach the store before it ends (a killed pod keeps them)"
        assert shards[0].endswith(".running.jsonl")
        assert s3.cat(shards[0]) == b'{"key": "k1"}\n{"key": "k2"}\n'  # whole lines only
        with log_a.open("a") as f:
            f.write('"}\n')
    with shared_append_log(store_b, "cache/llm_responses", "run-b", sync_s=60) as log_b:
        assert [json.loads(line)["key"] for line in log_b.read_text().splitlines()] == ["k1", "k2", "torn"]
        with log_b.open("a") as f:
            f.write('{"key": "k3"}\n')
    shards = s3.find(f"{BUCKET}/log/cache/llm_responses")
    assert len(shards) == 2  # one per run: runs on two machines never overwrite each other's lines
    assert not any(shard.endswith(".running.jsonl") for shard in shards)  # both finished
    assert s3.cat(next(s for s in shards if "/run-b" in s)) == b'{"key": "k3"}\n'


def test_many_shards_are_folded_into_one_without_losing_a_line(s3, tmp_path):
    store = ArtifactStore(f"s3://{BUCKET}/fold", workdir=tmp_path)
    for run in range(5):
        s3.pipe(f"{BUCKET}/fold/cache/log/run{run}.jsonl", f'{{"key": "k{run}"}}\n'.encode())
    s3.pipe(f"{BUCKET}/fold/cache/log/busy.running.jsonl", b'{"key": "live"}\n')  # a run still writing
    expected = sorted([f'{{"key": "k{run}"}}' for run in range(5)] + ['{"key": "live"}'])
    with shared_append_log(store, "cache/log", "reader-1", compact_over=3) as joined:
        assert sorted(joined.read_text().splitlines()) == expected
    names = sorted(key.rsplit("/", 1)[-1] for key in s3.find(f"{BUCKET}/fold/cache/log"))
    assert names[0] == "busy.running.jsonl" and names[1].endswith("-merged.jsonl") and len(names) == 2
    with shared_append_log(store, "cache/log", "reader-2", compact_over=3) as joined:
        assert sorted(joined.read_text().splitlines()) == expected
    assert len(s3.find(f"{BUCKET}/fold/cache/log")) == 2  # under the threshold: nothing folded again


def _write_docs(s3, prefix: str, count: int) -> None:
    for i, topic in enumerate(TOPICS[:count]):
        sentences = " ".join(f"Finding {j} about {topic} in study {i} concerns marker M{i}{j}." for j in range(6))
        s3.pipe(f"{BUCKET}/{prefix}/doc{i}.md", f"# Study {i} on {topic}\n\n{sentences}\n".encode())


def test_sensor_watches_an_object_store_prefix_and_pins_the_version_in_the_bucket(s3, tmp_path):
    _write_docs(s3, "watched", 2)
    docs = f"s3://{BUCKET}/watched/"
    pipeline = PipelineResource(docs_path=docs, artifacts_dir=f"s3://{BUCKET}/sensed", workdir=str(tmp_path / "w"))
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources={"pipeline": pipeline}) as context:
            first = documents_sensor(context)
        version = corpus_version_key(docs)
        assert [r.partition_key for r in first.run_requests] == [version]
        assert s3.cat(f"{BUCKET}/sensed/versions/{version}/documents/doc1.md").startswith(b"# Study 1")
        instance.add_dynamic_partitions("corpus_versions", [version])
        with dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"pipeline": pipeline}) as c:
            unchanged = documents_sensor(c)
        assert isinstance(unchanged, dg.SkipReason) and "unchanged" in unchanged.skip_message
        s3.pipe(f"{BUCKET}/watched/.hidden", b"editor swap file")  # hidden files are not documents
        s3.pipe(f"{BUCKET}/watched/doc1.md", b"# Study 1\n\nAn edited finding about bone remodelling markers.\n")
        with dg.build_sensor_context(instance=instance, cursor=first.cursor, resources={"pipeline": pipeline}) as c:
            edited = documents_sensor(c)
        assert [r.partition_key for r in edited.run_requests] == [corpus_version_key(docs)] != [version]


def test_every_asset_on_an_object_store_with_steps_on_different_machines(s3, tmp_path):
    """Machine A builds up to the fine-tuned model; machine B, sharing only the bucket, evaluates and exports
    it; machine C re-asks the LLM nothing; a published export is served from its URL."""
    _write_docs(s3, "docs", 5)
    docs, root = f"s3://{BUCKET}/docs", f"s3://{BUCKET}/artifacts"
    version = corpus_version_key(docs)

    def on(machine: str) -> PipelineResource:
        return PipelineResource(docs_path=docs, artifacts_dir=root, workdir=str(tmp_path / machine))

    def answer(prompt: str) -> str:
        study, topic = re.search(r"Study (\d+) on ([a-z ]+)", prompt).groups()
        return question_json(f"Which marker did study {study} report about {topic}?")

    llm_config = {"roundtrip": "none", "dedup_threshold": None, "questions_per_chunk": 2}
    small = {
        "qa_splits": {"config": {"test_fraction": 0.4}},
        "hard_negatives": {"config": {"num_mined": 2}},
        "teacher": {"config": {"candidates": ["bm25"]}},
        "teacher_scores": {"config": {"mined_negatives": 1, "pseudo_queries_per_chunk": 1}},
        "training_set": {"config": {"num_negatives": 1}},
        "finetuned_model": {"config": {"epochs": 1, "num_negatives": 1}},
        "beir_report": {"config": {"gate_tolerance": 1.0, "regression_beir": None}},
        "onnx_int8_model": {"config": {"max_ndcg_drop": 1.0}},
    }
    upstream = [
        "raw_documents",
        "chunked_corpus",
        "synthetic_qa",
        "qa_splits",
        "hard_negatives",
        "teacher",
        "teacher_scores",
        "training_set",
    ]
    with OpenAIStub(answer) as server, dg.instance_for_test() as instance:
        settings = {
            **small,
            "synthetic_qa": {
                "config": {**llm_config, "model": "openai/stub", "api_base": server.url, "query_forms": {"question": 1}}
                | {"min_questions": 1}
            },
        }

        def build(machine: str, selection: list[str]) -> dg.ExecuteInProcessResult:
            ops = {asset: config for asset, config in settings.items() if asset in selection}
            return materialize_version(version, on(machine), instance, "cpu", selection, {"ops": ops})

        first = build("a", [*upstream, "finetuned_model"])
        calls = len(server.requests)
        assert calls > 0
        second = build("b", ["beir_report", "onnx_model", "onnx_int8_model"])
        third = build("c", ["raw_documents", "chunked_corpus", "synthetic_qa"])
        assert len(server.requests) == calls  # machine C found every answer in the bucket
    qa_metadata = next(
        e.materialization.metadata
        for e in third.get_asset_materialization_events()
        if e.asset_key.path == ["synthetic_qa"]
    )
    assert qa_metadata["llm_calls_made"].value == 0 and qa_metadata["llm_calls_cached"].value == calls

    model = first.output_for_node("finetuned_model")
    assert model["path"] == f"{root}/versions/{version}/models/finetuned-{first.run_id[:8]}"
    onnx_int8 = second.output_for_node("onnx_int8_model")
    assert onnx_int8["path"] == f"{root}/versions/{version}/models/onnx-int8-{second.run_id[:8]}"
    report = second.output_for_node("beir_report")
    assert report["report_json"].startswith(f"{root}/versions/{version}/reports/")
    assert json.loads(s3.cat(report["report_json"]))["model_path"] == model["path"]
    # B had only the bucket: its copy of the model came from there, and A never saw B's exports.
    assert (tmp_path / "b" / "versions" / version / "models" / f"finetuned-{first.run_id[:8]}" / COMPLETE_MARK).exists()
    assert not (tmp_path / "a" / "versions" / version / "models" / f"onnx-{second.run_id[:8]}").exists()
    keys = {k.removeprefix(f"{BUCKET}/artifacts/") for k in s3.find(f"{BUCKET}/artifacts")}
    for expected in [
        f"versions/{version}/documents/doc4.md",
        f"versions/{version}/chunked_corpus.parquet",
        f"versions/{version}/finetuned_model.json",
        f"versions/{version}/models/finetuned-{first.run_id[:8]}/model.safetensors",
        f"versions/{version}/models/onnx-int8-{second.run_id[:8]}/model.onnx",
        f"versions/{version}/models/onnx-int8-{second.run_id[:8]}/{COMPLETE_MARK}",
    ]:
        assert expected in keys, expected
    assert not any("/checkpoints/" in k for k in keys)  # finished jobs leave no checkpoints behind
    splits = pd.read_parquet(s3.open(f"{BUCKET}/artifacts/versions/{version}/qa_splits.parquet"))
    assert len(splits) > 0

    # Serving (or rolling back to) any published export straight from its URL.
    encoder = OnnxEncoder(str(ArtifactStore(tmp_path / "server").pull(onnx_int8["path"])))
    vectors, _ = encoder.embed(["which marker did study 3 report?"])
    assert vectors.shape == (1, 384)


def test_serve_names_a_missing_object_store_model(s3, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMBED_PIPELINE_WORKDIR", str(tmp_path))
    assert main(["serve", "--model", f"s3://{BUCKET}/artifacts/versions/v9/models/onnx-int8-nope"]) == 2
    err = capsys.readouterr().err
    assert f"--model s3://{BUCKET}/artifacts/versions/v9/models/onnx-int8-nope" in err and "not in the store" in err


def test_unknown_object_store_scheme_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "a.md").write_text("# A\n\nSome text about kinases and their markers in cells.\n")
    code = main(["run", "--docs", str(tmp_path / "a.md"), "--out", "nosuchfs://bucket/x"])
    assert code == 2
    assert "nosuchfs://" in capsys.readouterr().err


def test_a_store_without_credentials_is_a_clear_error_and_a_sensor_skip(s3, tmp_path, monkeypatch):
    import s3fs

    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to look for either
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        store = ArtifactStore(f"s3://{BUCKET}/artifacts", workdir=tmp_path)
        with pytest.raises(StorageError, match=rf"s3://{BUCKET}/artifacts/x/model: the object store failed .*AWS_"):
            store.pull(f"s3://{BUCKET}/artifacts/x/model")
        pipeline = PipelineResource(docs_path=f"s3://{BUCKET}/docs/", artifacts_dir=str(tmp_path / "artifacts"))
        with dg.instance_for_test() as instance:
            with dg.build_sensor_context(instance=instance, resources={"pipeline": pipeline}) as context:
                skipped = documents_sensor(context)
        assert isinstance(skipped, dg.SkipReason)
        assert f"cannot read the documents: s3://{BUCKET}/docs: the object store failed" in skipped.skip_message
        assert "NoCredentialsError" in skipped.skip_message
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
