"""The Compose file and the image, checked without a Docker engine."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from clab.specs import load_spec
from clab.storage.layout import VOLUMES
from conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """container path -> (host path, mode)"""
    out = {}
    for v in service.get("volumes", []):
        parts = v.split(":")  # the host part may hold ':' itself, as in ${VAR:-default}
        mode = parts.pop() if parts[-1] in ("ro", "rw") else "rw"
        container = parts.pop()
        out[container] = (":".join(parts), mode)
    return out


def test_the_services_are_there_in_pipeline_order():
    assert list(SERVICES) == [
        "data-generator",
        "tinyzero-dummy-generator",
        "curriculum-trainer-1.5b",
        "curriculum-trainer-3b",
        "k1-trainer",
        "mixing-trainer",
        "dpo-trainer",
        "evaluator",
        "plotter",
    ]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_runs_its_spec_with_clab(name):
    svc = SERVICES[name]
    line = [*svc["entrypoint"], *svc["command"]]
    # clab-entrypoint runs clab as the owner of the volumes (docker/entrypoint.sh)
    assert line == ["clab-entrypoint", "clab", "run", f"services/{name}.yaml"]
    assert svc["image"] == "${CLAB_IMAGE:-clab:latest}"
    assert "user" not in svc  # the entrypoint finds the user; `user:` would bypass it
    assert svc["working_dir"] == "/app"
    assert (REPO / "services" / f"{name}.yaml").is_file()
    assert svc["build"]["dockerfile"] == "docker/Dockerfile"
    assert svc["environment"]["WANDB_MODE"] == "offline"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_mounts_every_volume_its_spec_reads_or_writes(name):
    svc = SERVICES[name]
    spec = load_spec(REPO / "services" / f"{name}.yaml")
    m = mounts(svc)
    assert m["/app/services"] == ("./services", "ro")
    for path in [*spec.reads(), *spec.writes()]:
        assert not Path(path).is_absolute(), f"{name}: {path} must live in a volume"
        volume = Path(path).parts[0]
        assert volume in VOLUMES, f"{name}: {path} is outside the volumes"
        host, mode = m[f"/app/{volume}"]
        assert host == f"./{volume}"
        if path in spec.writes():
            assert mode == "rw", f"{name} writes {path} but mounts {volume} read-only"
    for container, (host, _) in m.items():
        if host.startswith("./") and host[2:] in VOLUMES:
            assert container == f"/app/{host[2:]}"


def test_volume_folders_exist_empty_in_git():
    ignored = (REPO / ".gitignore").read_text()
    for v in VOLUMES:
        assert (REPO / v / ".gitkeep").is_file()
        assert f"/{v}/*" in ignored


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_accepts_the_file():
    res = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def test_lock_resolves_vllm_extra_with_the_pinned_stack():
    lock = (REPO / "uv.lock").read_text()

    def version(pkg: str) -> str:
        return re.search(rf'^name = "{pkg}"\nversion = "([^"]+)"', lock, re.M).group(1)

    assert version("vllm").startswith("0.31.")
    assert version("torch") == "2.13.0"
    major, minor = map(int, version("transformers").split(".")[:2])
    assert (major, minor) < (5, 18)
    assert version("trl").startswith("1.16.")


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_gpu_services_reserve_their_workers_and_mount_their_model(name):
    svc = SERVICES[name]
    spec = load_spec(REPO / "services" / f"{name}.yaml")
    resources = getattr(spec, "resources", None)
    if resources is None:  # a service that may use one GPU (the evaluator)
        gpus = 1 if getattr(spec, "use_gpu", False) else 0
    else:
        gpus = resources.num_workers if resources.use_gpu else 0
    if not gpus:
        assert "deploy" not in svc
        return
    (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert device["count"] == gpus
    if resources is None or not hasattr(spec, "rollout"):
        return  # no model folder to mount (the k1 trainer builds its small model)
    assert spec.rollout.tensor_parallel_size <= resources.num_workers
    model = spec.model.name_or_path
    assert model.startswith("/models/")
    host, mode = mounts(svc)[model]
    assert mode == "ro" and host.startswith("${CLAB_") and host.endswith(f"/model/{model[8:]}}}")


def test_control_specs_run_the_same_trainer_on_the_random_split():
    for size in ("1.5b", "3b"):
        main_spec = load_spec(REPO / f"services/curriculum-trainer-{size}.yaml")
        control = load_spec(REPO / f"services/curriculum-control-{size}.yaml")
        assert control.data.dir == Path("data/dummy_tinyzero")
        assert control.name != main_spec.name
        a = main_spec.model_dump(exclude={"name", "data"})
        b = control.model_dump(exclude={"name", "data"})
        assert a == b
