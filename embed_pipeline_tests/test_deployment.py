"""docker-compose.yml, the Dockerfile and the Helm values, checked against the code they run and the chart they
configure (no Docker engine or cluster here)."""

import copy
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from embed_pipeline.cli import SERVE_ENV_PREFIX, build_parser
from embed_pipeline.core.storage import is_url

ROOT = Path(__file__).resolve().parents[1]
HELM = ROOT / "deploy" / "helm"


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_embeddings_service_settings_are_real_serve_flags():
    service = _compose()["services"]["embeddings"]
    serve_flags = set(vars(build_parser().parse_args(["serve", "--model", "m"])))
    settings = {
        k.removeprefix(SERVE_ENV_PREFIX).lower() for k in service["environment"] if k.startswith(SERVE_ENV_PREFIX)
    }

    assert service["command"] == ["embed-pipeline", "serve"]
    assert settings <= serve_flags, settings - serve_flags
    assert {"model", "host", "port"} <= settings
    port = service["environment"]["EMBED_SERVE_PORT"]
    assert service["ports"] == [f"{port}:{port}"]
    assert f"127.0.0.1:{port}/v1/health/ready" in " ".join(service["healthcheck"]["test"])
    # The server reads exports the pipeline wrote; it never writes the shared artifacts volume.
    assert service["volumes"] == ["artifacts:/data/artifacts:ro"]


def test_gpu_variant_reserves_a_gpu_and_builds_the_gpu_extra():
    compose = _compose()
    gpu, cpu = compose["services"]["embeddings-gpu"], compose["services"]["embeddings"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]

    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["command"] == cpu["command"] and gpu["environment"] == cpu["environment"]
    assert gpu["profiles"] == ["gpu"] and cpu["profiles"] == ["serve"]  # neither starts with the Dagster stack
    assert gpu["build"]["args"] == {"EXTRAS": "gpu"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG EXTRAS=", dockerfile, re.M) and '-e ".[$EXTRAS]"' in dockerfile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert {e.split("==")[0] for e in extras} == {"onnxruntime-gpu", "faiss-gpu", "tensorrt"}


def test_every_named_volume_a_service_mounts_is_declared():
    compose = _compose()
    mounted = {
        v.split(":")[0]
        for service in compose["services"].values()
        for v in service.get("volumes", [])
        if not v.startswith((".", "/", "$"))
    }
    assert mounted == set(compose["volumes"])


def test_every_long_running_service_has_a_healthcheck_and_waits_for_its_dependencies():
    services = _compose()["services"]
    for name in ("postgres", "user_code", "webserver", "daemon", "embeddings"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("user_code", "webserver", "daemon"):
        for dependency, condition in services[name]["depends_on"].items():
            assert condition == {"condition": "service_healthy"} and "healthcheck" in services[dependency]


def test_gpu_override_gives_the_step_running_service_the_gpu():
    base = _compose()["services"]
    override = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]

    assert set(override) == {"user_code"} <= set(base)  # the code server launches the runs, so it runs the steps
    devices = override["user_code"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert override["user_code"]["build"]["args"] == {"EXTRAS": "gpu"}
    assert "deploy" not in base["user_code"]  # CPU hosts start without a GPU reservation
    # The webserver and daemon reach the code server where the runs happen.
    workspace = yaml.safe_load((ROOT / "workspace.compose.yaml").read_text())
    grpc = workspace["load_from"][0]["grpc_server"]
    assert grpc["host"] == "user_code" and str(grpc["port"]) in base["user_code"]["command"]


def _source_text() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "embed_pipeline").rglob("*.py"))


def _helm_values() -> dict:
    return yaml.safe_load((HELM / "values.yaml").read_text())


def test_helm_values_run_our_code_location_with_gpu_run_pods_and_artifacts_on_an_object_store():
    values = _helm_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    launcher = values["runLauncher"]
    run_pod = launcher["config"]["k8sRunLauncher"]["runK8sConfig"]
    source = _source_text()

    assert deployment["dagsterApiGrpcArgs"] == ["-m", "embed_pipeline.definitions"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert deployment["image"]["tag"] == version
    for env in deployment["env"] + run_pod["containerConfig"]["env"]:
        assert f'"{env["name"]}"' in source or env["name"] in ("HF_HUB_OFFLINE", "LITELLM_LOCAL_MODEL_COST_MAP")
    assert launcher["type"] == "K8sRunLauncher"
    assert run_pod["containerConfig"]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in run_pod["podSpecConfig"][
        "tolerations"
    ]
    # The code server (sensor) and every run pod read and write the same object-store prefixes, and each keeps
    # its working copy on a volume of its own: no volume is shared, so run pods can be on any GPU node.
    code_env = {e["name"]: e["value"] for e in deployment["env"]}
    run_env = {e["name"]: e["value"] for e in run_pod["containerConfig"]["env"]}
    for name in ("EMBED_PIPELINE_ARTIFACTS", "EMBED_PIPELINE_DOCS"):
        assert code_env[name] == run_env[name] and is_url(code_env[name]) and code_env[name].startswith("s3://")
    for pod_volumes, mounts, env in (
        (deployment["volumes"], deployment["volumeMounts"], code_env),
        (run_pod["podSpecConfig"]["volumes"], run_pod["containerConfig"]["volumeMounts"], run_env),
    ):
        assert [v["name"] for v in pod_volumes if "emptyDir" in v] == ["work"] and len(pod_volumes) == 1
        assert mounts == [{"name": "work", "mountPath": env["EMBED_PIPELINE_WORKDIR"]}]
    assert "persistentVolumeClaim" not in json.dumps(values)
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["k8s"] == ["dagster-k8s==0.29.27"]  # the run launcher's library, same release as dagster


def _chart_schema(*, with_required: bool) -> dict:
    """The dagster/dagster chart's own values schema, for checking deploy/helm/values.yaml without Helm.

    Vendored verbatim as deploy/helm/dagster-chart-values.schema.json from dagster-io/dagster,
    helm/dagster/values.schema.json at commit 2bdb239558bfe98dc2a89e2e0c2f3f849367fdd4 (the newest stored
    version found; it has the chart's `concurrency` block). Its Kubernetes object shapes (probes, volumes,
    resources...) are remote `$ref`s to yannh/kubernetes-json-schema, which this offline check drops: those
    objects are checked only as the chart's own definitions describe them (objects, arrays, string maps).
    """

    def walk(node):
        if isinstance(node, dict):
            return {
                key: walk(value)
                for key, value in node.items()
                if not (key == "$ref" and not value.startswith("#"))
                and (with_required or not (key == "required" and isinstance(value, list)))
            }
        return [walk(item) for item in node] if isinstance(node, list) else node

    return walk(json.loads((HELM / "dagster-chart-values.schema.json").read_text()))


def _describe(error: jsonschema.ValidationError, *prefix: str | int) -> str:
    """A schema error as `path: message`, the path from the validated document's root (`prefix` first)."""
    if error.context:  # anyOf/oneOf: report the branch of the value's own type rather than repeat the whole value
        cause = next((e for e in error.context if e.relative_path or e.validator != "type"), error.context[0])
        return _describe(cause, *prefix)
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in (*prefix, *error.absolute_path))
    return f"${path}: {error.message}"


def _chart_schema_errors(values: dict) -> list[str]:
    """Every way `values` breaks the chart's schema, as `path: message`, the way `helm install` would see them.

    Helm validates these values merged onto the chart's defaults: a map we leave out or fill partly is
    completed from the defaults, so the whole file is checked with `required` dropped (types, enums, unknown
    keys, conditionals still apply); a list replaces the default wholesale, so each code-server deployment
    (the one list of chart objects here) is checked in full, `required` included.
    """

    schema = _chart_schema(with_required=True)
    validator = jsonschema.validators.validator_for(schema)  # no "$schema" in it: the latest draft, 2020-12
    validator.check_schema(schema)
    errors = {_describe(error) for error in validator(_chart_schema(with_required=False)).iter_errors(values)}
    deployment_schema = {"$defs": schema["$defs"], "$ref": "#/$defs/UserDeployment"}
    for i, deployment in enumerate(values.get("dagster-user-deployments", {}).get("deployments") or []):
        errors |= {
            _describe(error, "dagster-user-deployments", "deployments", i)
            for error in validator(deployment_schema).iter_errors(deployment)
        }
    return sorted(errors)


def test_helm_values_satisfy_the_charts_schema():
    errors = _chart_schema_errors(_helm_values())
    assert not errors, "\n".join(errors)


def _set_port_to_a_string(values: dict) -> None:
    values["dagster-user-deployments"]["deployments"][0]["port"] = "3030"


def _drop_the_port(values: dict) -> None:
    del values["dagster-user-deployments"]["deployments"][0]["port"]


def _misspell_run_k8s_config(values: dict) -> None:
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    launcher["runK8sConfigs"] = launcher.pop("runK8sConfig")


def _misspell_the_pool_limit(values: dict) -> None:
    values["concurrency"]["pools"]["defaultLimits"] = values["concurrency"]["pools"].pop("defaultLimit")


def _name_an_unknown_run_coordinator(values: dict) -> None:
    values["dagsterDaemon"]["runCoordinator"]["type"] = "QueuedCoordinator"


@pytest.mark.parametrize(
    ("break_values", "where"),
    [
        (_set_port_to_a_string, "$.dagster-user-deployments.deployments[0].port: '3030' is not of type 'integer'"),
        (_drop_the_port, "$.dagster-user-deployments.deployments[0]: 'port' is a required property"),
        (_misspell_run_k8s_config, "$.runLauncher.config.k8sRunLauncher: Additional properties are not allowed ("),
        (_misspell_the_pool_limit, "$.concurrency.pools: Additional properties are not allowed ('defaultLimits'"),
        (_name_an_unknown_run_coordinator, "$.dagsterDaemon.runCoordinator.type: 'QueuedCoordinator' is not one of"),
    ],
)
def test_charts_schema_rejects_a_broken_copy_of_the_values(break_values, where):
    values = copy.deepcopy(_helm_values())
    break_values(values)

    errors = _chart_schema_errors(values)
    assert any(error.startswith(where) for error in errors), errors


def test_helm_values_give_the_instance_the_concurrency_of_dagster_yaml():
    concurrency = _helm_values()["concurrency"]
    for instance_yaml in (ROOT / "dagster.yaml", ROOT / "embed_pipeline" / "instance" / "dagster.postgres.yaml"):
        instance = yaml.safe_load(instance_yaml.read_text())["concurrency"]
        # Pool "gpu" gets no limit of its own in any instance yaml: it starts at the default, one slot.
        assert concurrency["pools"] == {"defaultLimit": instance["pools"]["default_limit"]} == {"defaultLimit": 1}
        assert concurrency["runs"] == {"maxConcurrentRuns": instance["runs"]["max_concurrent_runs"]}
    assert concurrency["enabled"] is True  # the chart writes the block into dagster.yaml only when enabled
    # Dagster rejects a run coordinator's own run limit next to a `concurrency` block.
    assert "config" not in _helm_values()["dagsterDaemon"]["runCoordinator"]


def test_object_store_settings_reach_every_service_that_reads_or_writes_artifacts():
    services = _compose()["services"]
    for name, service in services.items():
        if name == "postgres":
            continue
        env = service["environment"]
        # Passed through from the shell when set (no value here): credentials are never baked into the file.
        assert {
            env.get(key, "missing") for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
        } == {None}, name
    artifacts = services["user_code"]["environment"]["EMBED_PIPELINE_ARTIFACTS"]
    assert artifacts == "${EMBED_PIPELINE_ARTIFACTS:-/data/artifacts}"  # the volume unless a store URL is given
    assert "artifacts:/data/artifacts" in services["user_code"]["volumes"]


def _compose_spec() -> dict:
    """The Compose Specification's JSON schema, which `docker compose` checks every compose file against.

    Vendored verbatim as deploy/compose-spec.schema.json from compose-spec/compose-spec, schema/compose-spec.json
    at commit b2835e8acc1e42e7aecbc27a9bc4a1fc66ef21ba (32,993 bytes; the newest stored version found: it has
    `gpus`, `label_file`, `include`, `develop` and the `post_start`/`pre_stop` hooks, where the copies vendored
    in compose-go and docker/compose are older). Draft 2019-09, no remote `$ref`s.
    """
    return json.loads((ROOT / "deploy" / "compose-spec.schema.json").read_text())


def _compose_gpu_override() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())


def _merge_compose(base, override):
    """`override` merged onto `base`, approximately as `docker compose -f base -f override` does: mappings are
    merged key by key, anything else is replaced (so a short `build: .` gives way to the override's long form,
    which is what Compose ends with too). Neither argument is changed."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge_compose(base[k], v) if k in base else v for k, v in override.items()}}
    return override


def _compose_spec_errors(compose: dict, *, complete: bool = True) -> list[str]:
    """Every way `compose` breaks the Compose Specification, as `path: message`.

    Each file is checked on its own, as Compose loads it: an override file's services may be partial. A
    `complete` project (the base file, or the files merged) must also meet the spec's own
    `constraints.service`: every service has an image or a build with a context.
    """
    schema = _compose_spec()
    validator = jsonschema.validators.validator_for(schema)  # "$schema" says draft 2019-09
    validator.check_schema(schema)
    errors = {_describe(error) for error in validator(schema).iter_errors(compose)}
    if complete:
        constraint = validator(schema["definitions"]["constraints"]["service"])
        for name, service in (compose.get("services") or {}).items():
            errors |= {_describe(error, "services", name) for error in constraint.iter_errors(service)}
    return sorted(errors)


def test_compose_files_satisfy_the_compose_spec():
    base, override = _compose(), _compose_gpu_override()
    merged = _merge_compose(base, override)

    for name, compose, complete in (
        ("docker-compose.yml", base, True),
        ("docker-compose.gpu.yml", override, False),
        ("docker-compose.yml + docker-compose.gpu.yml", merged, True),
    ):
        errors = _compose_spec_errors(compose, complete=complete)
        assert not errors, f"{name}:\n" + "\n".join(errors)
    # The merge kept the base service and added the override's GPU, build args and device setting to it.
    user_code = merged["services"]["user_code"]
    assert user_code["build"] == {"context": ".", "args": {"EXTRAS": "gpu"}} and "deploy" in user_code
    assert user_code["environment"]["EMBED_PIPELINE_DEVICE"] == "cuda"
    assert user_code["environment"]["DAGSTER_POSTGRES_HOST"] == "postgres" and user_code["healthcheck"]


def _misspell_a_healthcheck(compose: dict) -> None:
    compose["services"]["postgres"]["heathcheck"] = compose["services"]["postgres"].pop("healthcheck")


def _wait_for_an_unknown_condition(compose: dict) -> None:
    compose["services"]["webserver"]["depends_on"]["user_code"] = {"condition": "healthy"}


def _give_a_healthcheck_a_list_of_retries(compose: dict) -> None:
    compose["services"]["daemon"]["healthcheck"]["retries"] = [6]


def _drop_the_postgres_image(compose: dict) -> None:
    del compose["services"]["postgres"]["image"]


def _misspell_the_volumes_block(compose: dict) -> None:
    compose["volume"] = compose.pop("volumes")


def _reserve_a_gpu_without_capabilities(compose: dict) -> None:
    del compose["services"]["user_code"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]


@pytest.mark.parametrize(
    ("load", "break_compose", "where"),
    [
        (_compose, _misspell_a_healthcheck, "$.services.postgres: 'heathcheck' does not match any of the regexes"),
        (
            _compose,
            _wait_for_an_unknown_condition,
            "$.services.webserver.depends_on.user_code.condition: 'healthy' is not one of ['service_started', ",
        ),
        (_compose, _give_a_healthcheck_a_list_of_retries, "$.services.daemon.healthcheck.retries: [6] is not of type"),
        (_compose, _drop_the_postgres_image, "$.services.postgres: 'build' is a required property"),
        (_compose, _misspell_the_volumes_block, "$: 'volume' does not match any of the regexes: '^x-'"),
        (
            _compose_gpu_override,
            _reserve_a_gpu_without_capabilities,
            "$.services.user_code.deploy.resources.reservations.devices[0]: 'capabilities' is a required property",
        ),
    ],
)
def test_compose_spec_rejects_a_broken_copy_of_a_compose_file(load, break_compose, where):
    compose = copy.deepcopy(load())
    break_compose(compose)

    errors = _compose_spec_errors(compose, complete=load is _compose)
    assert any(error.startswith(where) for error in errors), errors
