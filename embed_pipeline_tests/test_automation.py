"""The documents sensor and the re-training schedule, evaluated against a real (temporary) Dagster instance."""

import shutil
from pathlib import Path

import dagster as dg
import pytest

from embed_pipeline.core.documents import DocumentError, load_documents
from embed_pipeline.core.versions import (
    check_version_name,
    corpus_version_key,
    snapshot_documents,
    snapshot_origin,
    stat_signature,
    unreadable_files,
)
from embed_pipeline.definitions import materialize_version
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


def _docs_with_broken_link(tmp_path, kind: str):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nAlpha documents are fine.\n")
    link = docs / "link.md"
    link.symlink_to(link if kind == "loop" else docs / "gone.md")
    return docs, link


@pytest.mark.parametrize("kind", ["loop", "dangling"])
def test_a_broken_link_has_a_version_and_a_snapshot_that_the_loader_names_or_skips(tmp_path, kind):
    docs, link = _docs_with_broken_link(tmp_path, kind)
    key = corpus_version_key(docs)
    assert key == corpus_version_key(docs) and stat_signature(docs)
    pinned = snapshot_documents(docs, tmp_path / "pinned")
    assert sorted(p.name for p in pinned.iterdir() if not p.name.startswith(".")) == ["a.md"]
    unreadable = unreadable_files(pinned)
    assert [u.path for u in unreadable] == [str(pinned / "link.md")]
    origin = snapshot_origin(docs)
    with pytest.raises(DocumentError, match=f"^{link}: not readable: a symbolic link"):
        load_documents(pinned, shown_as=origin, unreadable=unreadable)
    loaded = load_documents(pinned, on_error="skip", shown_as=origin, unreadable=unreadable)
    assert list(loaded.documents["doc_id"]) == ["a.md"] and [s.path for s in loaded.skipped] == [str(link)]
    link.unlink()
    assert corpus_version_key(docs) != key  # removing (or fixing) the link is a new version


def test_a_file_that_vanishes_while_it_is_pinned_is_listed_as_unreadable(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("kept")
    (docs / "b.md").write_text("removed while the snapshot is taken")
    copy = shutil.copy2

    def copy_while_b_vanishes(src, dst):
        if src.endswith("b.md"):
            Path(src).unlink()
        return copy(src, dst)

    monkeypatch.setattr(shutil, "copy2", copy_while_b_vanishes)
    pinned = snapshot_documents(docs, tmp_path / "pinned")
    [lost] = unreadable_files(pinned)
    assert lost.path == str(pinned / "b.md") and "vanished while it was being read" in lost.reason
    assert not (pinned / "b.md").exists() and (pinned / "a.md").read_text() == "kept"


def test_raw_documents_names_a_broken_link_by_its_path_or_skips_and_counts_it(tmp_path):
    docs, link = _docs_with_broken_link(tmp_path, "dangling")
    pipeline = PipelineResource(docs_path=str(docs), artifacts_dir=str(tmp_path / "artifacts"))
    version = corpus_version_key(docs)
    with dg.instance_for_test() as instance:
        failed = materialize_version(version, pipeline, instance, selection=["raw_documents"], raise_on_error=False)
        error = failed.get_step_failure_events()[0].step_failure_data.error
        while error.cause is not None:
            error = error.cause
        assert error.cls_name == "DocumentError" and error.message.split(": ", 1)[1].startswith(f"{link}: ")
        skip = {"ops": {"raw_documents": {"config": {"on_error": "skip"}}}}
        result = materialize_version(version, pipeline, instance, selection=["raw_documents"], run_config=skip)
        metadata = result.asset_materializations_for_node("raw_documents")[0].metadata
    assert list(result.output_for_node("raw_documents")["doc_id"]) == ["a.md"]
    assert metadata["skipped_files"].value == 1 and str(link) in metadata["skipped"].value


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
