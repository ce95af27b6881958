# One command per developer action. The README shows the two a newcomer needs:
#   make run    start Redis + the shim (local backend), submit examples/, keep serving
#   make test   set everything up, then run every test
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.stamp
RUN_DIR := .run

.PHONY: help setup run test test-fast lint lock fmt bench build clean redis-server

help:
	@echo "make run     local stack: Redis + shim + examples, until Ctrl-C"
	@echo "make test    set up, then run every test (standalone Redis 7, then the backend matrix)"
	@echo "make test-fast  set up, then the quick tests (no slow e2e/chaos, no AWS emulation)"
	@echo "make test-cluster CLUSTER=valkey-cluster3   integration + e2e on one cluster backend"
	@echo "make lint    ruff, mypy --strict (tests relaxed), cargo fmt/clippy, the lock checks"
	@echo "make lock    requirements-dev.lock from requirements-dev.txt + pyproject.toml"
	@echo "make bench   benchmarks (rhai-py and end to end)"
	@echo "make build   the Lambda wheel and sam build"

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The pinned environment (requirements-dev.lock, from requirements-dev.txt and
# pyproject.toml by mk/devlock.py; `make lock` after changing either).
$(STAMP): $(PY) requirements-dev.lock
	$(PIP) install -q --require-hashes -r requirements-dev.lock
	touch $@

redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (apt)"; \
	  (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null; }

## setup: venv, Python deps, the rhai-py build, this package, redis-server
setup: $(STAMP) redis-server
	$(MAKE) -C rhai-py develop VENV=$(abspath $(VENV))
	$(PIP) install -q --no-deps --no-build-isolation -e .

run: setup
	$(PY) -m rhailambda.devstack

## test: every test on standalone Redis 7, then the integration + e2e suites on the other
## Redis backends (test-matrix, mk/matrix.mk); the AWS e2e needs the wheel, aws-sam-cli and
## a python3.12 venv. Both parts always run; the target fails if either failed.
test: setup wheel sam-venv lambda-venv valkey-server
	@status=0; \
	RHAILAMBDA_REQUIRE_AWS_TESTS=1 $(PY) -m pytest -q || status=1; \
	$(MAKE) --no-print-directory test-matrix || status=1; \
	exit $$status

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not aws"

lint: setup
	$(PY) mk/requirements.py --check
	$(PY) mk/devlock.py --check
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy
	$(MAKE) -C rhai-py lint VENV=$(abspath $(VENV))
	$(MAKE) validate

## lock: requirements-dev.lock again from its inputs (LOCK_ARGS=--upgrade: newest versions)
lock: $(STAMP)
	$(PY) mk/devlock.py $(LOCK_ARGS)

fmt:
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

clean:
	rm -rf $(RUN_DIR) .aws-sam dist build rhai-py/target

-include mk/*.mk
