# kubetrade: `make demo` runs a bot end to end on this machine; `make test` runs every check.
# Both install what they need into .venv first (Python 3.11, pip, network to PyPI).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
KT := $(VENV)/bin/kubetrade
STAMP := $(VENV)/.installed
TRAIN_STAMP := $(VENV)/.installed-train
# The trading core compiled with mypyc (setup.py, kubetrade/trading/compiled.py), redone when a
# source changes; a stale build is never run (the package falls back to its sources and warns).
CORE := $(VENV)/.compiled
CORE_SOURCES := setup.py $(wildcard kubetrade/trading/*.py)
# The checkout holds a folder named `operator` (packaged as kubetrade.operator): keep Python from
# putting the working directory first on sys.path, where it would shadow the standard library's
# `operator` in an interpreter that has not imported it yet (a fresh venv's `python -m pip`).
export PYTHONSAFEPATH := 1
export BENTOML_DO_NOT_TRACK := true
export ORT_DISABLE_TELEMETRY := 1
export BENTOML_HOME ?= $(HOME)/bentoml

# mypy and import-linter read this view of the installed layout (tools/package_view.py).
VIEW := build/package-view

DEMO_BOT ?= k8s/examples/synthetic-paper.yaml
DEMO_MODEL ?= kubetrade-baseline

.PHONY: install install-train demo test test-fast lint format crds bench bench-operator controlplane test-controlplane clean

install: $(CORE)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(CORE): $(STAMP) $(CORE_SOURCES)
	KUBETRADE_COMPILE=1 $(PY) -m pip install --quiet --no-deps -e .
	touch $(CORE)

## install-train: also PyTorch (a large CUDA build, ~5 GB) and Optuna for the neural models and their tests
install-train: $(TRAIN_STAMP)

# After the compile: never two pip runs in the environment at once (make -j).
$(TRAIN_STAMP): $(CORE)
	$(PY) -m pip install --quiet -e '.[dev,torch]'
	touch $(TRAIN_STAMP)

## demo: train the baseline model on synthetic candles, then run a paper bot on embedded NATS and PostgreSQL
demo: install
	$(KT) train --synthetic --name $(DEMO_MODEL)
	$(KT) run $(DEMO_BOT) --report-dir reports/demo

## test: lint, type-check, then every test tier: unit, integration (real NATS, PostgreSQL, ONNX
## Runtime, BentoML), control plane, one-node cluster with the image, promtool rule tests.
## Builds (or reuses, from ~/.cache/kubetrade) the control plane, the node, the image and promtool.
test: lint controlplane cluster image promtool
	$(PY) -m pytest -q -ra

test-fast: install-train
	$(PY) -m pytest -q -ra -m "not integration and not controlplane and not cluster"

## lint: ruff, then mypy --strict and the import contract (pyproject.toml) on the installed layout
lint: install-train
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tools/package_view.py $(VIEW) >/dev/null
	cd $(VIEW) && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/.mypy_cache
	cd $(VIEW) && $(CURDIR)/$(VENV)/bin/lint-imports --no-logo --no-cache $(CURDIR)/pyproject.toml

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## crds: regenerate crds/tradingbot.yaml from kubetrade/spec.py
crds: install
	$(PY) -m kubetrade.crd --write
	cp crds/tradingbot.yaml charts/kubetrade/crds/tradingbot.yaml
	$(PY) k8s/generate.py

bench: install
	$(PY) bench/pipeline.py
	$(PY) bench/inference.py

## bench-operator: 500 bots against the real control plane (needs make controlplane)
bench-operator: install controlplane
	$(PY) bench/operator.py

## controlplane: build kube-apiserver, kube-controller-manager, kubectl (Kubernetes v1.37.2) and etcd v3.7.0 once into ~/.cache/kubetrade/controlplane (~10 min cold, instant when cached)
controlplane:
	python3 tests/controlplane/build.py build

## test-controlplane: only the real-Kubernetes tier; builds first if needed; a missing build is an error, not a skip
test-controlplane: install controlplane
	KUBETRADE_REQUIRE_CONTROLPLANE=1 $(PY) -m pytest -q -ra -m controlplane

.PHONY: promtool

## promtool: build promtool (pinned in tests/promtool/build.py) once into ~/.cache/kubetrade/promtool for the alerting-rule unit tests in tests/test_alerts.py (~6 min cold, instant when cached)
promtool:
	python3 tests/promtool/build.py build

.PHONY: image cluster test-cluster

## image: the container image from ./Dockerfile, built with buildah on a Debian base made by mmdebstrap and a host wheelhouse (no registry, no index inside the build); OCI archive under ~/.cache/kubetrade/image
image:
	python3 tests/cluster/build.py image

## cluster: kubelet, kube-scheduler, kube-proxy, CoreDNS beside the control plane; containerd, runc, CNI plugins, iptables, conntrack from Debian; a pause image (cached)
cluster: controlplane
	python3 tests/cluster/build.py node
	python3 tests/cluster/helm.py

## test-cluster: the one-node cluster tier (the image on a real node); builds first if needed; a missing build is an error, not a skip
test-cluster: install cluster image
	KUBETRADE_REQUIRE_CLUSTER=1 $(PY) -m pytest -q -ra -m cluster tests/cluster

clean:
	rm -rf reports .mypy_cache .ruff_cache .pytest_cache
	rm -f kubetrade/trading/*.so kubetrade/trading/compiled.json $(CORE)
