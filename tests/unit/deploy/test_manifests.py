"""The deployment files validate: Kubernetes manifests against the API schemas, the compose
stack with the compose tool itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifest_validates_strictly(path: Path) -> None:
    import kubernetes_validate

    for doc in _docs(path):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_kubernetes_validate_rejects_a_broken_manifest() -> None:
    import kubernetes_validate

    doc = _docs(DEPLOY / "k8s" / "gateway.yaml")[0]
    doc["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_one_gpu_per_worker_pod_and_replicated_front_door() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]): d for p in MANIFESTS for d in _docs(p)}
    worker = kinds[("StatefulSet", "worker")]["spec"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert kinds[("Deployment", "gateway")]["spec"]["replicas"] >= 2
    assert ("Deployment", "scheduler") in kinds


COMPOSE_CREDENTIALS = {
    "KVFLEET_FLEET_TOKEN": "t", "KVFLEET_API_KEY_HASHES": '["sha256:00"]',
    **{f"KVFLEET_REDIS_{u}_PASSWORD": "p" for u in ("ADMIN", "GATEWAY", "SCHEDULER", "PLANNER",
                                                     "WORKER")},
}


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.parametrize(
    "files",
    [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]],
    ids=["cpu", "gpu"],
)
def test_compose_stack_validates(files: list[str]) -> None:
    cmd = _compose_cmd()
    if cmd is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have a compose tool (.ci/run installs one)")
        pytest.skip("no docker compose or docker-compose here")
    args = [*cmd]
    for f in files:
        args += ["-f", str(DEPLOY / f)]
    bare = {k: v for k, v in os.environ.items() if not k.startswith("KVFLEET_")}
    refused = subprocess.run([*args, "config"], capture_output=True, text=True, env=bare,
                             cwd=DEPLOY.parent)
    assert refused.returncode != 0  # no credentials, no stack
    out = subprocess.run([*args, "config"], capture_output=True, text=True,
                         env={**bare, **COMPOSE_CREDENTIALS}, cwd=DEPLOY.parent)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    services = set(config["services"])
    assert {"redis", "gateway", "scheduler", "planner", "worker-0", "worker-1"} <= services
    gpu = "docker-compose.gpu.yml" in files
    devices = config["services"]["worker-0"].get("deploy", {}).get("resources", {})
    assert bool(devices.get("reservations")) == gpu


def _env_names() -> set[str]:
    names: set[str] = set()
    compose = [DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.gpu.yml"]
    for path in compose:
        for svc in yaml.safe_load(path.read_text())["services"].values():
            env = svc.get("environment") or {}
            names.update(env if isinstance(env, dict) else (e.split("=")[0] for e in env))
    for path in MANIFESTS:
        for doc in _docs(path):
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("containers", []):
                names.update(e["name"] for e in c.get("env", []))
    return {n for n in names if n.startswith("KVFLEET_")}


def test_every_kvfleet_variable_in_deploy_names_a_settings_field() -> None:
    from kvfleet.common import config

    classes = {
        "GATEWAY": config.GatewaySettings,
        "SCHEDULER": config.SchedulerSettings,
        "PLANNER": config.PlannerSettings,
        "WORKER": config.WorkerSettings,
    }
    names = _env_names()
    assert len(names) >= 10
    for name in names:
        _, service, rest = name.split("_", 2)
        model = classes[service]
        for part in rest.lower().split("__"):
            assert part in model.model_fields, f"{name}: no field {part!r}"
            model = model.model_fields[part].annotation


def test_fleet_file_is_a_valid_fleet_description() -> None:
    from kvfleet.common.config import FleetConfig, PlannerSettings

    fleet = FleetConfig.load(DEPLOY / "fleet.yaml")
    assert [w.id for w in fleet.workers] == ["worker-0", "worker-1"]
    planner = PlannerSettings.load(DEPLOY / "fleet.yaml")
    assert [m.name for m in planner.models] == ["smollm2-135m"]


def _containers() -> list[tuple[str, dict]]:
    out = []
    for path in MANIFESTS:
        for doc in _docs(path):
            if doc["kind"] in ("Deployment", "StatefulSet"):
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    out.append((doc["metadata"]["name"], c))
    return out


def test_every_container_is_probed_and_kvfleet_ones_carry_credentials() -> None:
    for name, c in _containers():
        assert "livenessProbe" in c and "readinessProbe" in c, name
        if name == "redis":
            assert "--aclfile" in c["args"] and "--appendonly" in c["args"]
            continue
        env = {e["name"]: e for e in c["env"]}
        token = next(e for n, e in env.items() if n.endswith("_FLEET_TOKEN"))
        assert token["valueFrom"]["secretKeyRef"]["name"] == "kvfleet-secrets", name
        url = next(e for n, e in env.items() if n.endswith("_REDIS_URL"))["value"]
        assert "$(REDIS_PASSWORD)@" in url, name
    workers = dict(_containers())["worker"]
    assert not any(e["name"] == "KVFLEET_WORKER_MEMORY_BYTES" for e in workers["env"])


def test_generated_secret_validates_and_holds_no_plain_api_key() -> None:
    import kubernetes_validate

    out = subprocess.run([sys.executable, "-m", "kvfleet", "secrets", "k8s"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    kubernetes_validate.validate(doc, "1.37.0", strict=True)
    key = out.stderr.strip().rsplit(" ", 1)[1]
    assert key not in out.stdout and key.startswith("sk-kvfleet-")
    assert "user default off" in doc["stringData"]["users.acl"]
    assert doc["stringData"]["redis-worker-password"] not in doc["stringData"]["users.acl"]
