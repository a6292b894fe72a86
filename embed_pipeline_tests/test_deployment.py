"""docker-compose.yml and the Dockerfile, checked against the code they run (no Docker engine here)."""

import re
import tomllib
from pathlib import Path

import yaml

from embed_pipeline.cli import SERVE_ENV_PREFIX, build_parser

ROOT = Path(__file__).resolve().parents[1]


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


def test_helm_values_run_our_code_location_with_gpu_run_pods_and_shared_artifacts():
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
    claim = yaml.safe_load((ROOT / "deploy" / "helm" / "artifacts-pvc.yaml").read_text())
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
    # The code server, every run pod and the claim agree on one shared artifacts volume.
    for pod_volumes, mounts in (
        (deployment["volumes"], deployment["volumeMounts"]),
        (run_pod["podSpecConfig"]["volumes"], run_pod["containerConfig"]["volumeMounts"]),
    ):
        assert {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod_volumes} == {
            "artifacts": claim["metadata"]["name"]
        }
        assert mounts == [{"name": "artifacts", "mountPath": "/data/artifacts"}]
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["k8s"] == ["dagster-k8s==0.29.27"]  # the run launcher's library, same release as dagster
