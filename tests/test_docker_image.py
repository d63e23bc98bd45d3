"""The image's recipe, checked without a Docker engine (make docker-smoke builds and runs it)."""

import os
import re
import shutil
import subprocess

import pytest
import yaml

from clab.storage.layout import VOLUMES
from conftest import REPO

DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
INSTALL = REPO / "docker" / "install.sh"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
SMOKE = REPO / "docker" / "smoke.sh"
INSTRUCTIONS = [
    line for line in DOCKERFILE.splitlines() if line.strip() and not line.startswith("#")
]


def lock_version(pkg: str) -> str:
    lock = (REPO / "uv.lock").read_text()
    return re.search(rf'^name = "{pkg}"\nversion = "([^"]+)"', lock, re.M).group(1)


def test_base_images_are_build_arguments():
    first_from = next(i for i, line in enumerate(INSTRUCTIONS) if line.startswith("FROM "))
    args = INSTRUCTIONS[:first_from]
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in args
    assert re.fullmatch(r"ARG UV_IMAGE=ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", args[-1])
    froms = [line for line in INSTRUCTIONS if line.startswith("FROM ")]
    # COPY --from does not expand build arguments: a named stage does.
    assert froms == ["FROM ${UV_IMAGE} AS uv", "FROM ${PYTHON_IMAGE}"]
    copies = [line for line in INSTRUCTIONS if "--from=" in line]
    assert copies == ["COPY --from=uv /uv /uvx /usr/local/bin/"]


def test_variants_install_from_the_lock_only():
    assert "ARG VARIANT=gpu" in INSTRUCTIONS  # the GPU image (vLLM) unless asked otherwise
    runs = [line for line in INSTRUCTIONS if line.startswith("RUN clab-install")]
    assert [r.split()[2] for r in runs] == ["deps", "project"]
    assert all('"$VARIANT"' in r for r in runs)
    for path in ("shared", "services", "uv.lock", "pyproject.toml", "docker/install.sh"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", DOCKERFILE, re.M), path
    script = INSTALL.read_text()
    assert "uv sync --frozen --no-dev --no-install-project --extra gpu" in script
    assert "uv sync --frozen --no-dev --extra gpu" in script
    # No second lock: the CPU image's requirements are exported from uv.lock at build time.
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert [f for f in tracked if f.endswith(".lock")] == ["uv.lock"]
    assert not [f for f in tracked if re.search(r"requirements.*\.txt$", f)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deps", "amd"], "VARIANT must be gpu or cpu, not 'amd'"),
        (["deps", "cpu", ""], "the cpu variant needs TORCH_CPU_INDEX"),
        (["build", "cpu"], "usage: clab-install"),
        ([], "usage: clab-install"),
    ],
)
def test_install_script_rejects_bad_input_with_exit_2(args, message, tmp_path):
    env = {**os.environ, "VIRTUAL_ENV": str(tmp_path / "venv")}
    res = subprocess.run(
        ["sh", str(INSTALL), *args], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "venv").exists()


def _uv() -> str | None:
    return os.environ.get("UV") or shutil.which("uv")


@pytest.mark.skipif(_uv() is None, reason="uv not found")
def test_cpu_requirements_are_the_lock_without_cuda(tmp_path):
    """What the CPU image installs besides torch's CPU wheel: the lock, less the CUDA stack."""
    env = {**os.environ, "PATH": f"{os.path.dirname(_uv())}:{os.environ['PATH']}"}
    subprocess.run(["sh", str(INSTALL), "export", str(tmp_path)], cwd=REPO, env=env, check=True)

    def names(text: str) -> dict[str, str]:
        pins = re.findall(r"^([a-z0-9._-]+)==([^ ;\\\n]+)", text, re.M)
        return dict(pins)

    locked = names((tmp_path / "lock.txt").read_text())
    without = (tmp_path / "without-torch.txt").read_text()
    kept = names(without)
    assert locked["torch"] == lock_version("torch")
    assert "vllm" not in locked  # the gpu extra is not in the CPU image
    dropped = set(locked) - set(kept)
    assert "torch" in dropped and any(n.startswith("nvidia-") for n in dropped)
    cuda = {n for n in dropped if re.match(r"nvidia-|cuda-|triton$", n)}
    # torch's own CPU dependencies come back through the constraints (lock.txt), at
    # the lock's versions; nothing else of the lock is left out.
    assert dropped - cuda <= {"torch", "sympy", "mpmath", "networkx", "setuptools"}
    for dep in ("filelock", "typing-extensions", "setuptools", "sympy", "networkx", "jinja2"):
        assert dep in locked, dep
    assert all(kept[n] == locked[n] for n in kept)
    # Every kept requirement is checked against the lock's hashes.
    assert without.count("--hash=sha256:") >= len(kept)


def test_image_starts_as_root_only_to_drop_to_the_volumes_owner():
    assert not [line for line in INSTRUCTIONS if line.startswith("USER ")]
    assert 'ENTRYPOINT ["clab-entrypoint", "clab"]' in INSTRUCTIONS
    assert "COPY docker/entrypoint.sh /usr/local/bin/clab-entrypoint" in INSTRUCTIONS
    assert "chmod 1777 /home/clab" in DOCKERFILE  # HOME for whichever uid runs
    script = ENTRYPOINT.read_text()
    assert "/proc/self/mountinfo" in script
    assert re.search(r'exec setpriv --reuid="\$uid" --regid="\$gid" --clear-groups', script)


def test_entrypoint_needs_a_command():
    res = subprocess.run(["sh", str(ENTRYPOINT)], capture_output=True, text=True)
    assert res.returncode == 2 and "usage: clab-entrypoint COMMAND" in res.stderr


def test_no_service_mounts_into_roots_home():
    """The services do not run as root: a cache mounted under /root is unreadable to them."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name, svc in compose["services"].items():
        for v in svc.get("volumes", []):
            assert ":/root" not in v, f"{name}: {v}"


def test_build_context_leaves_out_what_the_image_does_not_need():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".tools", *VOLUMES} <= set(ignored)
    for needed in ("shared", "services", "docker", "uv.lock", "pyproject.toml", "README.md"):
        assert needed not in ignored


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--bogus"], {}, "unknown argument '--bogus'"),
        ([], {"CLAB_SMOKE_UID": "1000"}, "CLAB_SMOKE_UID must be a uid other than 0 and 1000"),
        ([], {"CLAB_SMOKE_UID": "abc"}, "not 'abc'"),
    ],
)
def test_smoke_script_rejects_bad_input_with_exit_2(args, env, message):
    res = subprocess.run(
        ["bash", str(SMOKE), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_the_smoke_tests_trainer_overrides_are_valid_keys_of_todays_spec():
    """The smoke test runs only where Docker does; a renamed key in its overrides
    must fail here, in seconds, not after a 2-minute image build in CI."""
    import shlex

    from clab.specs import load_spec

    block = re.search(r"mapfile -t train_sets < <\(sets (.*?)\)\n", SMOKE.read_text(), re.S)
    overrides = [a for a in shlex.split(block.group(1).replace("\\\n", " "))]
    assert "model.preset=tiny" in overrides
    spec = load_spec(REPO / "services/curriculum-trainer-3b.yaml", overrides)
    assert spec.model.hidden_size == 64 and spec.model.split_digits
