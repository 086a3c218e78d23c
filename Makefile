# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a step they depend on.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_VENV := $(VENV)/.installed
STAMP_SYS := .deps/.installed
ZIPAPP := dist/basenode
export PATH := $(CURDIR)/.deps/bin:$(PATH)

IMAGE ?= basenode
BASE_IMAGE := debian:bookworm-slim

.PHONY: all deps venv system-deps zipapp test test-unit test-integration test-faults test-property test-docker lint \
	bench bench-floor soak demo clean clean-venv base-image image cluster-demo

all: zipapp

deps: venv system-deps

venv: $(STAMP_VENV)
$(STAMP_VENV): requirements/runtime.lock requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/dev.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

system-deps: $(STAMP_SYS)
$(STAMP_SYS): scripts/install-system-deps.sh
	scripts/install-system-deps.sh
	touch $@

zipapp: $(ZIPAPP)
$(ZIPAPP): $(STAMP_VENV) $(shell find basenode templates -type f -not -name '*.pyc') scripts/build-zipapp.sh scripts/zipapp_main.py
	scripts/build-zipapp.sh $(PY) $@

lint: $(STAMP_VENV)
	$(VENV)/bin/ruff check basenode tests bench scripts
	$(VENV)/bin/ruff format --check basenode tests bench scripts

# One family after another: the Docker family beside the others (they share no port or container)
# saves about 3 minutes, but the load of its image builds made timing-heavy tests (two WAN-joined
# datacenters, leastconn) fail now and then on a 2-core machine.
test: deps zipapp lint
	$(PY) -m pytest -q tests/unit tests/integration tests/faults tests/property tests/docker

test-unit: $(STAMP_VENV)
	$(PY) -m pytest -q tests/unit

test-integration: deps zipapp
	$(PY) -m pytest -q tests/integration

test-faults: deps zipapp
	$(PY) -m pytest -q tests/faults

# Hypothesis, deterministic: the same 500 examples on every run (tests/property/conftest.py).
test-property: deps zipapp  # test_hostile_clients runs dist/basenode
	$(PY) -m pytest -q tests/property

test-docker: deps zipapp
	$(PY) -m pytest -q tests/docker

bench: deps zipapp
	$(PY) bench/run.py --out docs/benchmarks.md

# Propagation beside its floor (issue 11) again, alone: about 5 minutes.
bench-floor: deps zipapp
	$(PY) bench/run.py --only floor --out docs/benchmarks.md

# Not part of `make test`: about 11 minutes. A quick check: $(PY) bench/soak.py --changes 500
soak: deps zipapp
	$(PY) bench/soak.py --out docs/benchmarks.md

demo: deps zipapp
	scripts/demo.sh

# No registry here: the Dockerfile's FROM image is built from Debian's packages (debootstrap,
# docker import) and tagged with the name the Dockerfile uses. Where a registry is reachable,
# `docker build` pulls the real one instead.
base-image:
	scripts/build-base-image.sh bookworm $(BASE_IMAGE)

image: zipapp base-image
	docker build -t $(IMAGE) .

cluster-demo: image
	scripts/docker-cluster-demo.sh

clean:
	rm -rf build dist .pytest_cache

clean-venv:
	rm -rf $(VENV)
