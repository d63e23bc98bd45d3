# clab's everyday commands; `make help` lists them.
# uv is bootstrapped with pip into .tools/ when it is not on PATH.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
.DEFAULT_GOAL := help

.PHONY: help sync lint test demo data dummy-data bench docker-smoke

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /\1\t/' | \
	  while IFS=$$'\t' read -r target text; do printf '  make %-11s %s\n' "$$target" "$$text"; done

# A venv where python3-venv exists; else pip's --target (which also puts uv in .tools/bin).
$(UV):
	($(PYTHON) -m venv .tools && .tools/bin/pip install --quiet uv) || \
	  $(PYTHON) -m pip install --quiet --target .tools uv || \
	  $(PYTHON) -m pip install --quiet --break-system-packages --target .tools uv

sync: $(UV) ## install the locked dependencies into .venv
	$(UV) sync --frozen

lint: sync ## ruff check and format check
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

# Two pytest-xdist workers, a file each at a time (tests/conftest.py gives each one thread).
PYTEST_WORKERS ?= 2

test: lint ## lint, then the whole test suite
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(UV) run --frozen pytest -n $(PYTEST_WORKERS) --dist loadfile

demo: sync ## the whole stack at tiny scale on this machine's CPU
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(UV) run --frozen clab demo

data: sync ## the curriculum data set (services/data-generator.yaml)
	$(UV) run --frozen clab run services/data-generator.yaml

dummy-data: sync ## the random-split control (services/tinyzero-dummy-generator.yaml)
	$(UV) run --frozen clab run services/tinyzero-dummy-generator.yaml

bench: sync ## the benchmarks under benchmarks/
	$(UV) run --frozen python benchmarks/bench_countdown_data.py
	$(UV) run --frozen python benchmarks/bench_reward.py
	$(UV) run --frozen python benchmarks/bench_rl_overhead.py
	$(UV) run --frozen python benchmarks/bench_demo.py
	$(UV) run --frozen python benchmarks/bench_dpo.py

docker-smoke: ## build the CPU image, run the CPU services in it (docker/smoke.sh)
	docker/smoke.sh $(SMOKE_FLAGS)
