# modelloop — the project's verbs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: help setup tools kueue argocd test test-unit test-integration test-faults test-cluster cluster cluster-down demo crds crds-check lint bench images kind-e2e clean

help: ## list the verbs
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-18s %s\n", $$1, $$2}'

$(PIP_STAMP): pyproject.toml
	@echo "[setup] creating $(VENV) and installing modelloop with all extras (first time: a few minutes, torch is large)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[operator,trainer,server,dev]'
	@touch $@

setup: $(PIP_STAMP) tools ## create the virtualenv and build the pinned tools (cached outside the repo)

tools: ## build the Kubernetes control plane and node, CoreDNS, MinIO, Helm; install containerd, runc, CNI, buildah, promtool, lua5.1
	@bash hack/packages.sh
	@bash hack/tools.sh >/dev/null

kueue: ## build Kueue's controller manager and copy its CRDs (hack/kueue.sh; the cluster tier's Kueue test runs it)
	@bash hack/kueue.sh >/dev/null

argocd: ## build Argo CD (controller, repo-server, CLI) and copy its CRDs (hack/argocd.sh; the GitOps steps of the cluster tier run it)
	@bash hack/argocd.sh >/dev/null

test: setup kueue argocd ## everything CI runs: lint, CRD drift, unit, integration, e2e, fault and cluster tests
	@$(MAKE) --no-print-directory lint crds-check
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(PIP_STAMP) ## pure tests only (no processes started)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup argocd ## tests against a real kube-apiserver and MinIO
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-faults: setup ## the fault suite (operator killed, MinIO stopped, API server restarted, ...)
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

test-cluster: setup kueue argocd ## the README's install steps and the loop on a real single-node cluster (root; builds the images)
	$(PY) -m pytest tests/cluster $(PYTEST_ARGS)

cluster: setup ## a real single-node cluster on this machine (containerd, kubelet, kube-proxy, CoreDNS) until Ctrl-C; ARGS=--images loads ours
	$(PY) -m modelloop_dev.cluster up $(ARGS)

cluster-down: ## remove every trace of a cluster whose run was killed (processes, containers, mounts, bridge, rules)
	$(PY) -m modelloop_dev.cluster down

demo: setup ## the whole loop on this machine: control plane, MinIO, operator, server + sidecar, training, hot swap; ARGS=--keep leaves it up
	$(PY) -m modelloop_dev.demo $(ARGS)

crds: $(PIP_STAMP) ## regenerate crds/*.yaml, the chart's copy and docs/api.md from the pydantic models
	$(PY) -m modelloop.api.crdgen --out crds --chart charts/modelloop/crds --docs docs/api.md

crds-check: $(PIP_STAMP) ## fail if the committed CRDs differ from the models
	$(PY) -m modelloop.api.crdgen --out crds --chart charts/modelloop/crds --docs docs/api.md --check

lint: $(PIP_STAMP) ## ruff, mypy --strict on the packages, import-linter layer contract
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: setup ## benchmarks: each prints its baseline, its own figure and the ratio
	$(PY) -m bench

images: ## build the operator, trainer and server images from ./Dockerfile: buildah as root, or Docker when it runs (IMAGE_BUILDER=docker|buildah); MODELLOOP_CONTAINERD_ADDRESS=SOCKET imports them
	bash hack/images.sh

kind-e2e: ## for users with Docker: kind cluster, images, MinIO, chart, example policy, wait for Active
	bash hack/kind-e2e.sh

clean: ## remove the virtualenv and caches (the built tools stay in ~/.cache/modelloop)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
