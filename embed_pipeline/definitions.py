"""The Dagster code location: every asset with its resources and IO manager."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch its price list

import dagster as dg  # noqa: E402

from embed_pipeline.defs.assets import corpus, evaluation, export, model, questions  # noqa: E402
from embed_pipeline.defs.automation import (  # noqa: E402
    documents_sensor,
    retrain_latest_version,
    train_corpus_version,
)
from embed_pipeline.defs.io_manager import ArtifactIOManager  # noqa: E402
from embed_pipeline.defs.partitions import corpus_versions  # noqa: E402
from embed_pipeline.defs.resources import (  # noqa: E402
    PipelineResource,
    TorchDeviceResource,
    default_pipeline_resource,
)

_MODULES = [corpus, questions, model, evaluation, export]
# Assets and their stand-alone checks (most checks are specs on their asset); both go to dg.materialize.
ALL_ASSETS = [*dg.load_assets_from_modules(_MODULES), *dg.load_asset_checks_from_modules(_MODULES)]


def build_resources(pipeline: PipelineResource, device: str = "auto") -> dict:
    return {
        "pipeline": pipeline,
        "compute": TorchDeviceResource(device=device),
        "io_manager": ArtifactIOManager(base_dir=pipeline.artifacts_dir, workdir=pipeline.workdir),
    }


def materialize_version(
    version: str,
    pipeline: PipelineResource,
    instance: dg.DagsterInstance,
    device: str = "auto",
    selection: list[str] | None = None,
    run_config: dict | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """Materialize the assets (or `selection`) of corpus `version` in this process, adding the version to the
    instance first: what `embed-pipeline run` does, and what tests do."""
    if not instance.has_dynamic_partition(corpus_versions.name, version):
        instance.add_dynamic_partitions(corpus_versions.name, [version])
    return dg.materialize(
        ALL_ASSETS,
        selection=selection,
        resources=build_resources(pipeline, device=device),
        run_config=run_config,
        instance=instance,
        partition_key=version,
        raise_on_error=raise_on_error,
    )


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[train_corpus_version],
    sensors=[documents_sensor],
    schedules=[retrain_latest_version],
    resources=build_resources(default_pipeline_resource(), device=os.environ.get("EMBED_PIPELINE_DEVICE", "auto")),
)
