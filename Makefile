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
# The Go parts (e2e/binaries.sh components), longest first: `make dev` builds only what it runs.
DEV_PARTS := kubernetes etcd kwok lws
E2E_PARTS := $(DEV_PARTS) helm kueue kstatus netpol prometheus prometheus-adapter keda syft traefik
# e2e runs on this many local clusters at once (pytest-xdist): each file on one worker, and the tests
# marked `serial` together on one, longest first (e2e/groups.py, e2e/durations.tsv).
E2E_WORKERS ?= 3
# Every run writes each test's time to .times/<suite>.tsv (tests/harness.py); the slowest are printed.
DURATIONS := --durations=15 --durations-min=5

.PHONY: help install torch binaries dev-binaries images image-store manifests lint test test-unit test-e2e test-e2e-netns e2e-durations dev dev-down run bench bench-smoke clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv with kubeforge[dev]

$(VENV)/.installed: pyproject.toml
	@echo "[venv] installing kubeforge[dev] into $(VENV)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

torch: $(VENV)/.torch ## link torch (installed once per machine under ~/.cache/kubeforge) into .venv

$(VENV)/.torch: $(VENV)/.installed hack/install-torch.sh
	hack/install-torch.sh $(VENV)
	touch $@

binaries: ## build (or reuse) every Go part the e2e tests run, under ~/.cache/kubeforge/bin
	e2e/binaries.sh $(E2E_PARTS)

dev-binaries: ## build (or reuse) the Go parts `make dev` runs: the control plane, kwok, LeaderWorkerSet
	e2e/binaries.sh $(DEV_PARTS)

images: install torch ## the operator and trainer images (buildah, no Docker daemon): OCI + docker archives and SBOMs in dist/images
	hack/images.sh release

image-store: install torch ## build (or reuse) both images in the local image store only (what the e2e tests run)
	hack/images.sh build

manifests: install ## regenerate CRDs, the chart's CRDs and docs/api.md from the API models
	$(PY) -m kubeforge.generate

lint: install torch ## pip check, ruff, mypy, import contracts, hadolint, actionlint
	$(BIN)/pip check
	$(BIN)/ruff check operator tests e2e bench
	$(BIN)/ruff format --check operator tests e2e bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint images/*/Dockerfile
	"$$(e2e/binaries.sh actionlint | tail -n 1)/actionlint" .github/workflows/*.yml

test-unit: install torch ## unit and integration tests (real Triton, torch on CPU); no cluster
	$(BIN)/pytest tests $(DURATIONS) $(PYTEST_ARGS)

test-e2e: install torch binaries image-store ## end-to-end tests on E2E_WORKERS local clusters at once (a file, or the serial tests, per worker); not the netns ones
	$(BIN)/pytest e2e -m "not netns" -n $(E2E_WORKERS) --dist loadfile --no-loadscope-reorder $(DURATIONS) $(PYTEST_ARGS)

test-e2e-netns: install torch binaries ## the e2e tests that need pods with real IPs (a Gateway routing to them), in a network namespace of their own (hack/netns.sh)
	hack/netns.sh $(BIN)/pytest e2e -m netns $(DURATIONS) $(PYTEST_ARGS)

e2e-durations: install ## write e2e/durations.tsv (the order groups go to the e2e workers) from the last e2e run
	$(PY) -m e2e.durations

test: ## everything: lint, unit, integration, e2e, in timed phases (hack/test.sh, .ci/budgets.tsv)
	hack/test.sh

dev: ## local cluster + operator + examples, shown Ready (the venv and the Go parts it runs build side by side)
	@$(MAKE) --no-print-directory -j2 install dev-binaries
	$(PY) -m e2e.dev up

dev-down: ## stop everything `make dev` started
	test -x $(PY) && $(PY) -m e2e.dev down || true

run: install ## run the operator in the foreground against $$KUBECONFIG
	$(BIN)/kubeforge run --verbose

bench: install torch binaries ## the benchmarks; results into bench/results/
	$(PY) -m bench.run
	$(PY) -m bench.resilience
	$(PY) -m bench.autoscaling
	$(PY) -m bench.language_model
	$(PY) -m bench.multinode
	$(PY) -m bench.model_cache
	$(PY) -m bench.rollout

bench-smoke: install torch binaries ## a tiny run of the benchmark harness
	$(PY) -m bench.run --smoke
	$(PY) -m bench.language_model --smoke
	$(PY) -m bench.model_cache --smoke

clean: dev-down
	rm -rf $(VENV) .dev .e2e .times
