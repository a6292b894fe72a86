import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from embed_pipeline.definitions import TENSORRT_ENV, TENSORRT_LEFT_OUT, defs, tensorrt_left_out
from embed_pipeline.defs.partitions import corpus_versions

REPO = Path(__file__).resolve().parents[1]
GPU_STEPS = {
    "hard_negatives",
    "teacher",
    "teacher_scores",
    "finetuned_model",
    "beir_report",
    "onnx_model",
    "onnx_int8_model",
    *(() if TENSORRT_LEFT_OUT else ("tensorrt_engine",)),  # only where an engine can be built
}


def test_dagster_definitions_validate_loads_the_code_location(tmp_path):
    env = {
        "PATH": str(Path(sys.executable).parent),
        "DAGSTER_HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", str(REPO / "workspace.yaml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All code locations passed validation" in done.stdout + done.stderr


def test_lineage_and_gpu_pool():
    graph = defs.resolve_asset_graph()
    upstream = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
    }
    assert upstream == {
        "raw_documents": set(),
        "chunked_corpus": {"raw_documents"},
        "synthetic_qa": {"chunked_corpus"},
        "qa_splits": {"synthetic_qa"},
        "hard_negatives": {"qa_splits", "chunked_corpus"},
        "teacher": {"qa_splits", "chunked_corpus", "hard_negatives"},
        "teacher_scores": {"teacher", "hard_negatives", "qa_splits", "chunked_corpus"},
        "training_set": {"teacher_scores", "chunked_corpus"},
        "finetuned_model": {"training_set", "qa_splits", "chunked_corpus", "teacher"},
        "beir_report": {"chunked_corpus", "qa_splits", "finetuned_model", "teacher"},
        "onnx_model": {"finetuned_model", "chunked_corpus", "beir_report"},  # behind the blocking gates
        "onnx_int8_model": {"finetuned_model", "onnx_model", "chunked_corpus", "qa_splits"},
        **({} if TENSORRT_LEFT_OUT else {"tensorrt_engine": {"finetuned_model", "chunked_corpus", "beir_report"}}),
    }
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.get_all_asset_keys()}
    assert {k for k, p in pools.items() if p == {"gpu"}} == GPU_STEPS
    assert all(not p for k, p in pools.items() if k not in GPU_STEPS)


def test_instance_config_limits_every_pool_to_one_slot(tmp_path):
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_every_asset_is_partitioned_by_corpus_version_and_the_automation_targets_them():
    graph = defs.resolve_asset_graph()
    assert {graph.get(key).partitions_def for key in graph.get_all_asset_keys()} == {corpus_versions}
    job = defs.resolve_job_def("train_corpus_version")
    assert job.partitions_def == corpus_versions
    assert {key.to_user_string() for key in job.asset_layer.executable_asset_keys} == {
        key.to_user_string() for key in graph.get_all_asset_keys()
    }
    sensor, schedule = defs.resolve_sensor_def("documents_sensor"), defs.resolve_schedule_def("retrain_latest_version")
    assert sensor.job_name == schedule.job_name == "train_corpus_version"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING  # watching the documents from the start
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED and schedule.cron_schedule == "0 3 * * 0"


def test_tensorrt_engine_is_left_out_where_no_engine_can_be_built_unless_asked(monkeypatch):
    """On a CPU host the asset could never materialize (every version would show it missing), so it is not in
    the code location; `on` keeps it for a code server without a GPU whose runs go to GPU hosts."""
    from embed_pipeline.core.tensorrt import tensorrt_unavailable_reason

    graph_keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert ("tensorrt_engine" in graph_keys) == (tensorrt_unavailable_reason() is None)
    monkeypatch.setenv(TENSORRT_ENV, "on")
    assert tensorrt_left_out() is None
    monkeypatch.setenv(TENSORRT_ENV, "off")
    assert tensorrt_left_out() == f"{TENSORRT_ENV}=off"
    monkeypatch.setenv(TENSORRT_ENV, "auto")
    assert tensorrt_left_out() == tensorrt_unavailable_reason()
    monkeypatch.setenv(TENSORRT_ENV, "maybe")
    with pytest.raises(ValueError, match="use auto, on or off"):
        tensorrt_left_out()


def test_every_asset_has_owners_a_code_version_and_a_code_reference():
    """A code change marks what is stale (the version hashes the asset's function and the core modules its
    module uses); the UI links each asset to its source."""
    graph = defs.resolve_asset_graph()
    versions = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners == ["team:embed_pipeline"], key
        assert len(node.code_version or "") == 12, key
        versions[key.to_user_string()] = node.code_version
        references = node.metadata["dagster/code_references"].code_references
        assert references and all(Path(r.file_path).is_file() for r in references), key
    assert len(set(versions.values())) == len(versions)  # each asset its own version
