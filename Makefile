# make demo: the whole stack at tiny scale on a CPU; make test: lint and tests;
# make data: the full curriculum data set.
# uv is bootstrapped with pip into .tools/ when it is not on PATH.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)

.PHONY: demo test lint data dummy-data bench sync

# A venv where python3-venv exists; else pip's --target (which also puts uv in .tools/bin).
$(UV):
	($(PYTHON) -m venv .tools && .tools/bin/pip install --quiet uv) || \
	  $(PYTHON) -m pip install --quiet --target .tools uv || \
	  $(PYTHON) -m pip install --quiet --break-system-packages --target .tools uv

sync: $(UV)
	$(UV) sync --frozen

lint: sync
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

test: lint
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(UV) run --frozen pytest

demo: sync
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(UV) run --frozen clab demo

data: sync
	$(UV) run --frozen clab run services/data-generator.yaml

dummy-demo: sync
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(UV) run --frozen clab demo

data: sync
	$(UV) run --frozen clab run services/tinyzero-dummy-generator.yaml

bench: sync
	$(UV) run --frozen python benchmarks/bench_countdown_data.py
	$(UV) run --frozen python benchmarks/bench_reward.py
	$(UV) run --frozen python benchmarks/bench_rl_overhead.py
	$(UV) run --frozen python benchmarks/bench_demo.py
