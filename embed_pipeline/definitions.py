"""The Dagster code location: every asset with its resources and IO manager."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch its price list

import dagster as dg  # noqa: E402

from embed_pipeline.defs.assets import corpus, evaluation, export, model, questions  # noqa: E402
from embed_pipeline.defs.io_manager import ArtifactIOManager  # noqa: E402
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
        "io_manager": ArtifactIOManager(base_dir=pipeline.artifacts_dir),
    }


defs = dg.Definitions(
    assets=ALL_ASSETS,
    resources=build_resources(default_pipeline_resource(), device=os.environ.get("EMBED_PIPELINE_DEVICE", "auto")),
)
