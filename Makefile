# Kubeforge: `make dev` (local cluster + operator + examples) and `make test` (everything).
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
CACHE ?= $(HOME)/.cache/kubeforge
export KUBEFORGE_CACHE := $(CACHE)
# A missing real part (torch, tritonserver, ...) fails the tests, and so does any skipped or deselected
# test (tests/harness.py); KUBEFORGE_ALLOW_SKIP=1 (or PYTEST_ARGS=--allow-skip) skips on purpose.
PYTEST_ARGS ?=

.PHONY: help install binaries manifests lint test test-unit test-e2e dev dev-down run bench bench-smoke clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv with kubeforge[dev] (+ torch, installed once per machine)

$(VENV)/.installed: pyproject.toml hack/install-torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	hack/install-torch.sh $(VENV)
	touch $@

binaries: ## build (or reuse) etcd, kube-*, kwok, helm, kueue, lws, kstatus, prometheus(-adapter), keda under ~/.cache/kubeforge/bin
	e2e/binaries.sh etcd kubernetes kwok helm kueue lws kstatus prometheus prometheus-adapter keda

manifests: install ## regenerate CRDs, the chart's CRDs and docs/api.md from the API models
	$(PY) -m kubeforge.generate

lint: install ## pip check, ruff, mypy, import contracts, hadolint
	$(BIN)/pip check
	$(BIN)/ruff check operator tests e2e bench
	$(BIN)/ruff format --check operator tests e2e bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint images/*/Dockerfile

test-unit: install ## unit and integration tests (real Triton, torch on CPU); no cluster
	$(BIN)/pytest tests $(PYTEST_ARGS)

test-e2e: install binaries ## end-to-end tests against the local control plane
	$(BIN)/pytest e2e $(PYTEST_ARGS)

test: lint test-unit test-e2e ## everything: lint, unit, integration, e2e

dev: install binaries ## local cluster + operator + examples, shown Ready
	$(PY) -m e2e.dev up

dev-down: ## stop everything `make dev` started
	test -x $(PY) && $(PY) -m e2e.dev down || true

run: install ## run the operator in the foreground against $$KUBECONFIG
	$(BIN)/kubeforge run --verbose

bench: install binaries ## the benchmarks; results into bench/results/
	$(PY) -m bench.run
	$(PY) -m bench.resilience
	$(PY) -m bench.autoscaling
	$(PY) -m bench.language_model
	$(PY) -m bench.multinode
	$(PY) -m bench.model_cache

bench-smoke: install binaries ## a tiny run of the benchmark harness
	$(PY) -m bench.run --smoke
	$(PY) -m bench.language_model --smoke
	$(PY) -m bench.model_cache --smoke

clean: dev-down
	rm -rf $(VENV) .dev .e2e
