"""The documents sensor and the re-training schedule, evaluated against a real (temporary) Dagster instance."""

import dagster as dg
import pytest

from embed_pipeline.core.versions import check_version_name, corpus_version_key, snapshot_documents
from embed_pipeline.defs.automation import documents_sensor, retrain_latest_version
from embed_pipeline.defs.resources import PipelineResource, default_pipeline_resource


def _tick(instance, pipeline, cursor=None):
    """One evaluation; returns its result and the cursor the daemon would store."""
    # Contexts are closed: an open one leaves Dagster's current-instance state behind for later tests.
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"pipeline": pipeline}) as context:
        result = documents_sensor(context)
        return result, result.cursor if isinstance(result, dg.SensorResult) else context.cursor


def test_sensor_adds_a_version_per_new_document_set_and_pins_its_documents(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nAlpha text about kinases.\n")
    pipeline = PipelineResource(docs_path=str(docs), artifacts_dir=str(tmp_path / "artifacts"))
    with dg.instance_for_test() as instance:
        first, cursor = _tick(instance, pipeline)
        version = corpus_version_key(docs)
        assert [r.partition_key for r in first.run_requests] == [version]
        assert first.run_requests[0].run_key == version
        assert first.dynamic_partitions_requests[0].partition_keys == [version]
        pinned = tmp_path / "artifacts" / "versions" / version / "documents" / "a.md"
        assert pinned.read_text() == (docs / "a.md").read_text()
        instance.add_dynamic_partitions("corpus_versions", [version])  # what the daemon does with the request

        unchanged, cursor = _tick(instance, pipeline, cursor)
        assert isinstance(unchanged, dg.SkipReason) and "unchanged" in unchanged.skip_message

        (docs / "b.md").write_text("# B\n\nBeta text about bones.\n")
        grown, cursor = _tick(instance, pipeline, cursor)
        assert [r.partition_key for r in grown.run_requests] == [corpus_version_key(docs)] != [version]
        instance.add_dynamic_partitions("corpus_versions", [corpus_version_key(docs)])

        (docs / "b.md").unlink()  # back to the first set: an existing version, no new run
        back, _ = _tick(instance, pipeline, cursor)
        assert isinstance(back, dg.SkipReason) and f"hashes to {version}, an existing" in back.skip_message


def test_sensor_skips_with_the_reason_when_the_documents_are_missing(tmp_path):
    pipeline = PipelineResource(docs_path=str(tmp_path / "nowhere"), artifacts_dir=str(tmp_path / "artifacts"))
    with dg.instance_for_test() as instance:
        result, _ = _tick(instance, pipeline)
    assert isinstance(result, dg.SkipReason)
    assert f"cannot read the documents: {tmp_path / 'nowhere'} does not exist" in result.skip_message


def test_schedule_retrains_the_latest_version(tmp_path):
    with dg.instance_for_test() as instance, dg.build_schedule_context(instance=instance) as context:
        assert isinstance(retrain_latest_version(context), dg.SkipReason)
        instance.add_dynamic_partitions("corpus_versions", ["c-aaaaaaaaaaaa", "c-bbbbbbbbbbbb"])
        request = retrain_latest_version(context)
    assert request.partition_key == "c-bbbbbbbbbbbb"
    assert request.tags["embed_pipeline/trigger"] == "schedule"


def test_version_key_ignores_location_and_hidden_files_but_not_content(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "x.txt").write_text("same text")
    (two / ".DS_Store").write_text("hidden")
    assert corpus_version_key(one) == corpus_version_key(two)
    (two / "sub" / "x.txt").write_text("other text")
    assert corpus_version_key(one) != corpus_version_key(two)
    (two / "sub" / "x.txt").write_text("same text")
    (two / "sub" / "x.txt").rename(two / "sub" / "y.txt")  # a renamed file is a different document id
    assert corpus_version_key(one) != corpus_version_key(two)


def test_a_snapshot_is_never_rewritten(tmp_path):
    docs = tmp_path / "corpus.jsonl"
    docs.write_text('{"_id": "1", "text": "first"}\n')
    pinned = snapshot_documents(docs, tmp_path / "pinned")
    docs.write_text('{"_id": "1", "text": "edited"}\n')
    assert snapshot_documents(docs, tmp_path / "pinned") == pinned
    assert (pinned / "corpus.jsonl").read_text() == '{"_id": "1", "text": "first"}\n'
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_a_content_version_refuses_documents_that_no_longer_match(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("version one")
    old = corpus_version_key(docs)
    (docs / "a.md").write_text("version two")
    pipeline = PipelineResource(docs_path=str(docs), artifacts_dir=str(tmp_path / "artifacts"))
    with pytest.raises(ValueError, match=f"corpus version {old} has no pinned documents .* now hash to c-"):
        pipeline.version_documents(old)
    assert pipeline.version_documents("my-release").joinpath("a.md").read_text() == "version two"


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "../up"])
def test_bad_version_names_are_refused(name):
    with pytest.raises(ValueError, match="is not a valid name"):
        check_version_name(name)


def test_sensor_skips_an_empty_folder_and_applies_the_automated_run_settings(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    pipeline = PipelineResource(docs_path=str(docs), artifacts_dir=str(tmp_path / "artifacts"))
    settings = tmp_path / "automated.yaml"
    settings.write_text("finetuned_model: {epochs: 2}\nsynthetic_qa: {max_chunks: 5}\n")
    monkeypatch.setenv("EMBED_PIPELINE_RUN_CONFIG", str(settings))
    with dg.instance_for_test() as instance:
        empty, cursor = _tick(instance, pipeline)
        assert isinstance(empty, dg.SkipReason) and "holds no documents yet" in empty.skip_message

        (docs / "a.md").write_text("# A\n\nAlpha.\n")
        result, cursor = _tick(instance, pipeline, cursor)
        ops = result.run_requests[0].run_config["ops"]
        assert ops["synthetic_qa"]["config"] == {"max_chunks": 5}
        assert ops["finetuned_model"]["config"] == ops["training_set"]["config"] == {"epochs": 2}

        settings.write_text("just a string\n")
        (docs / "b.md").write_text("# B\n\nBeta.\n")
        broken, _ = _tick(instance, pipeline, cursor)
    assert isinstance(broken, dg.SkipReason)
    assert broken.skip_message.startswith(f"EMBED_PIPELINE_RUN_CONFIG: {settings} must map asset names")


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_bad_interval_setting_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("EMBED_PIPELINE_CACHE_SYNC_S", value)
    with pytest.raises(ValueError, match=f"EMBED_PIPELINE_CACHE_SYNC_S='{value}' is not a positive number of seconds"):
        default_pipeline_resource()
