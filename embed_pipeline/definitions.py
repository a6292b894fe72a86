"""The Dagster code location: every asset with its resources and IO manager."""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch its price list

import dagster as dg  # noqa: E402

from embed_pipeline.core.tensorrt import tensorrt_unavailable_reason  # noqa: E402
from embed_pipeline.defs.assets import corpus, evaluation, export, model, questions  # noqa: E402
from embed_pipeline.defs.assets.export import tensorrt_engine  # noqa: E402
from embed_pipeline.defs.automation import (  # noqa: E402
    documents_sensor,
    retrain_latest_version,
    run_tags,
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
TENSORRT_ENV = "EMBED_PIPELINE_TENSORRT"  # auto (default): when this host can build engines; on; off


def tensorrt_left_out() -> str | None:
    """Why `tensorrt_engine` is left out of the definitions, or None when it belongs in them. Left out on a
    host that cannot build engines (no CUDA or no TensorRT), where it could never materialize and every corpus
    version would show it missing; EMBED_PIPELINE_TENSORRT=on keeps it (a code server without a GPU whose
    runs go to GPU hosts), =off leaves it out anywhere."""
    setting = os.environ.get(TENSORRT_ENV, "auto").lower()
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"{TENSORRT_ENV}={setting!r}: use auto, on or off")
    if setting == "off":
        return f"{TENSORRT_ENV}=off"
    return None if setting == "on" else tensorrt_unavailable_reason()


TENSORRT_LEFT_OUT = tensorrt_left_out()


def _kept(definition) -> bool:
    return TENSORRT_LEFT_OUT is None or tensorrt_engine.key not in {
        *getattr(definition, "keys", ()),
        *(check.asset_key for check in getattr(definition, "check_keys", ())),
    }


OWNERS_ENV = "EMBED_PIPELINE_OWNERS"  # comma-separated emails or team:NAME, shown on every asset
DEFAULT_OWNERS = "team:embed_pipeline"


def code_version(assets_def: dg.AssetsDefinition) -> str:
    """12 hex digits of SHA-256 over the asset function's source and every `embed_pipeline.core` module (and
    the config module) its module uses: a change to either marks the asset's materializations stale."""
    function = assets_def.op.compute_fn.decorated_fn
    used = {getattr(value, "__module__", None) for value in vars(sys.modules[function.__module__]).values()}
    files = sorted(
        sys.modules[name].__file__
        for name in used
        if name and name.startswith(("embed_pipeline.core.", "embed_pipeline.config"))
    )
    digest = hashlib.sha256(inspect.getsource(function).encode())
    for file in files:
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()[:12]


def _described(definitions: list) -> list:
    """Owners, code versions and source code references on every asset (Dagster's code references are a beta
    feature, used deliberately: its warnings are silenced)."""
    warnings.filterwarnings(
        "ignore",
        message="(Class|Function) `(LocalFileCodeReference|CodeReferencesMetadataValue|with_source_code_references)`",
        category=dg.BetaWarning,
    )
    owners = [o.strip() for o in os.environ.get(OWNERS_ENV, DEFAULT_OWNERS).split(",") if o.strip()]
    described = [
        d.map_asset_specs(lambda spec, d=d: spec.replace_attributes(owners=owners, code_version=code_version(d)))
        if isinstance(d, dg.AssetsDefinition) and d.keys
        else d
        for d in definitions
    ]
    return list(dg.with_source_code_references(described))


# Assets and their stand-alone checks (most checks are specs on their asset): the one job runs them all.
ALL_ASSETS = _described(
    [d for d in (*dg.load_assets_from_modules(_MODULES), *dg.load_asset_checks_from_modules(_MODULES)) if _kept(d)]
)


def build_resources(pipeline: PipelineResource, device: str = "auto") -> dict:
    return {
        "pipeline": pipeline,
        "compute": TorchDeviceResource(device=device),
        "io_manager": ArtifactIOManager(base_dir=pipeline.artifacts_dir, workdir=pipeline.workdir),
    }


def resources_run_config(pipeline: PipelineResource, device: str = "auto") -> dict:
    """`build_resources` as run config: a run carries its resources' settings, so re-executing it (from the
    UI) reads the same documents and writes the same artifacts, whatever the code location's defaults."""
    return {
        "pipeline": {"config": pipeline.model_dump()},
        "compute": {"config": {"device": device}},
        "io_manager": {"config": {"base_dir": pipeline.artifacts_dir, "workdir": pipeline.workdir}},
    }


def materialize_version(
    version: str,
    pipeline: PipelineResource,
    instance: dg.DagsterInstance,
    device: str = "auto",
    selection: list[str] | None = None,
    run_config: dict | None = None,
    raise_on_error: bool = True,
    trigger: str = "cli",
) -> dg.ExecuteInProcessResult:
    """Run the `train_corpus_version` job (or its `selection` of assets) for corpus `version` in this process,
    adding the version to the instance first, tagged with `trigger`, the user and the code's commit: what
    `embed-pipeline run` does, and what tests do. The run belongs to the job, so the UI lists it there and
    can re-execute it."""
    if not instance.has_dynamic_partition(corpus_versions.name, version):
        instance.add_dynamic_partitions(corpus_versions.name, [version])
    run_config = dict(run_config or {})
    run_config["resources"] = {**resources_run_config(pipeline, device), **run_config.get("resources", {})}
    return defs.resolve_job_def(train_corpus_version.name).execute_in_process(
        run_config=run_config,
        instance=instance,
        partition_key=version,
        asset_selection=[dg.AssetKey(key) for key in selection] if selection else None,
        tags=run_tags(trigger),
        raise_on_error=raise_on_error,
    )


EXPORTS = ("onnx_model", "onnx_int8_model", "tensorrt_engine")


@dataclass(frozen=True)
class RunOutcome:
    """Why a run of the job stopped, read from its typed events: the report's gates (blocking by design: the
    report exists, no export is built), or failed steps, each with its cause (a blocking data check's verdict
    or the user's own error message)."""

    gates_failed: tuple[str, ...]
    failures: tuple[tuple[str, str], ...]  # (step, cause) of every failure the gates do not explain
    bad_documents: bool  # every failure was a DocumentError: bad input, not a pipeline fault
    report: dict | None = None  # beir_report's output (the report, its verdicts inside), when it was built
    exports: dict[str, dict] = field(default_factory=dict)  # each built export's output, by asset
    teacher: dict | None = None  # the teacher asset's output: who taught and why
    tensorrt_left_out: str | None = TENSORRT_LEFT_OUT  # why no TensorRT engine is part of the job here


def run_outcome(result: dg.ExecuteInProcessResult) -> RunOutcome:
    """Classify a finished run (see `RunOutcome`): a step whose blocking check failed is stopped by that check."""
    blocked: dict[str, list] = {}
    for check in result.get_asset_check_evaluations():
        if not check.passed and check.severity == dg.AssetCheckSeverity.ERROR:
            blocked.setdefault(check.asset_key.to_python_identifier(), []).append(check)
    gates, failures, documents = [], [], []
    for event in result.get_step_failure_events():
        checks, error = blocked.get(event.step_key, []), event.step_failure_data.error
        while error.cause is not None:  # the user's own exception, under Dagster's wrappers
            error = error.cause
        if checks and all(check.check_name in evaluation.REPORT_GATES for check in checks):
            gates += [check.check_name for check in checks]
            continue
        causes = [f"data check {check.check_name} failed: {check.description}" for check in checks]
        failures.append((event.step_key, "; ".join(causes) or error.message.strip()))
        documents.append(not checks and error.cls_name == "DocumentError")
    built = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    outputs = {name: result.output_for_node(name) for name in EXPORTS + ("beir_report", "teacher") if name in built}
    return RunOutcome(
        tuple(gates),
        tuple(failures),
        bool(documents) and all(documents),
        report=outputs.pop("beir_report", None),
        teacher=outputs.pop("teacher", None),
        exports=outputs,
    )


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[train_corpus_version],
    sensors=[documents_sensor],
    schedules=[retrain_latest_version],
    resources=build_resources(default_pipeline_resource(), device=os.environ.get("EMBED_PIPELINE_DEVICE", "auto")),
)
