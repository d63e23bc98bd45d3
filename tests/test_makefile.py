"""The Makefile: one target per everyday command, each doing what its name says."""

import re
import shutil
import subprocess

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
TARGETS = ("help", "sync", "lint", "test", "demo", "data", "dummy-data", "bench", "docker-smoke")


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        check=True,
    )


def clab_runs(target: str) -> list[str]:
    """The specs that `make <target>` would run, read off a dry run."""
    return re.findall(r"clab run (\S+)", make("-n", target).stdout)


def test_data_targets_run_their_own_generator():
    assert clab_runs("data") == ["services/data-generator.yaml"]
    assert clab_runs("dummy-data") == ["services/tinyzero-dummy-generator.yaml"]


def test_no_target_is_defined_twice():
    res = make("-n", "help")
    assert "warning" not in res.stderr.lower(), res.stderr


def test_help_lists_every_target_once_and_is_the_default():
    listed = re.findall(r"^\s*make (\S+)\s+\S", make("help").stdout, flags=re.M)
    assert sorted(listed) == sorted(TARGETS)
    assert make("-n").stdout == make("-n", "help").stdout  # dry runs: the default is help


def test_docker_smoke_runs_the_smoke_script_and_ci_runs_it_after_the_tests():
    assert make("-n", "docker-smoke").stdout.split() == ["docker/smoke.sh"]
    ci = [
        line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("make ")
    ]
    assert ci == ["make test", "make docker-smoke SMOKE_FLAGS=--skip-without-engine"]
