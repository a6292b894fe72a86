"""How corpus versions get built without a person: a sensor on the documents, a re-training schedule, and the
one job both launch (every asset of one corpus version; the UI and `dagster job backfill` run it over many)."""

from __future__ import annotations

import functools
import getpass
import json
import os
import subprocess
from pathlib import Path

import dagster as dg

from embed_pipeline.config import asset_run_config, load_asset_settings
from embed_pipeline.core.documents import DocumentError
from embed_pipeline.core.storage import StorageError
from embed_pipeline.core.versions import corpus_version_key, stat_signature
from embed_pipeline.defs.partitions import corpus_versions
from embed_pipeline.defs.resources import PipelineResource, env_seconds

RETRAIN_CRON = os.environ.get("EMBED_PIPELINE_RETRAIN_CRON", "0 3 * * 0")  # Sundays 03:00
RUN_CONFIG_ENV = "EMBED_PIPELINE_RUN_CONFIG"  # YAML {asset: {field: value}} for automated runs
TRIGGER_TAG = "embed_pipeline/trigger"  # cli, sensor or schedule (a backfill's runs carry dagster/backfill)
USER_TAG = "embed_pipeline/user"
COMMIT_TAG = "embed_pipeline/commit"


@functools.cache
def code_commit() -> str:
    """The git commit of the running code (+ "-dirty" with uncommitted changes), or "unknown" outside a
    checkout (an installed wheel)."""
    here = Path(__file__).parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def run_tags(trigger: str) -> dict[str, str]:
    """Tags of every run the project launches: what started it, who, and on which code."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        user = str(os.getuid())
    return {TRIGGER_TAG: trigger, USER_TAG: user, COMMIT_TAG: code_commit()}


train_corpus_version = dg.define_asset_job(
    "train_corpus_version",
    selection=dg.AssetSelection.all(),
    partitions_def=corpus_versions,
    # One process per run: the graph is a chain, so a process per step would only re-import torch and
    # reload models for every step (10-15 s each on a small host). Pools still serialise GPU steps.
    executor_def=dg.in_process_executor,
    description="Every asset of one corpus version: documents to served exports.",
)


def automated_run_config() -> dict:
    """Run config for the sensor's and schedule's runs: the settings file named by EMBED_PIPELINE_RUN_CONFIG,
    or the defaults. ValueError naming the file when it cannot be used."""
    path = os.environ.get(RUN_CONFIG_ENV)
    return asset_run_config(load_asset_settings(path)) if path else {}


@dg.sensor(
    job=train_corpus_version,
    minimum_interval_seconds=int(env_seconds("EMBED_PIPELINE_SENSOR_INTERVAL_S", 30)),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def documents_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
    """Watches the documents path: when its content hash is a version not seen before, pins the documents,
    adds the version and launches its run. File sizes and times are checked first; contents are hashed only
    when those moved."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    try:
        signature = stat_signature(pipeline.docs_path)
        if signature == cursor.get("signature"):
            return dg.SkipReason(f"{pipeline.docs_path} unchanged since version {cursor.get('version')}")
        version = corpus_version_key(pipeline.docs_path)
        new_cursor = json.dumps({"signature": signature, "version": version})
        if context.instance.has_dynamic_partition(corpus_versions.name, version):
            context.update_cursor(new_cursor)
            return dg.SkipReason(f"{pipeline.docs_path} hashes to {version}, an existing corpus version")
        run_config = automated_run_config()
        pipeline.version_documents(version)
    except (DocumentError, OSError, StorageError) as exc:
        return dg.SkipReason(f"cannot read the documents: {exc}")
    except ValueError as exc:
        return dg.SkipReason(f"{RUN_CONFIG_ENV}: {exc}")
    context.log.info(f"new corpus version {version} from {pipeline.docs_path}")
    request = dg.RunRequest(partition_key=version, run_key=version, run_config=run_config, tags=run_tags("sensor"))
    return dg.SensorResult(
        run_requests=[request],
        dynamic_partitions_requests=[corpus_versions.build_add_request([version])],
        cursor=new_cursor,
    )


@dg.schedule(
    job=train_corpus_version,
    cron_schedule=RETRAIN_CRON,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Re-trains the latest corpus version (turn on in the UI; cron from EMBED_PIPELINE_RETRAIN_CRON).",
)
def retrain_latest_version(context: dg.ScheduleEvaluationContext):
    versions = context.instance.get_dynamic_partitions(corpus_versions.name)
    if not versions:
        return dg.SkipReason("no corpus version yet: the documents sensor adds one when it sees the documents")
    try:
        run_config = automated_run_config()
    except ValueError as exc:
        return dg.SkipReason(f"{RUN_CONFIG_ENV}: {exc}")
    return dg.RunRequest(partition_key=versions[-1], run_config=run_config, tags=run_tags("schedule"))
