# Benchmarks: `make bench` (BENCH_QUICK=1 make bench for a smoke run); see bench/README.md.
# The peer queues (dramatiq, celery, rq; arq apart) pin redis-py versions that fight
# ours, so they live in venvs of their own, with rhai_py installed from an abi3 wheel.
BENCH_VENV ?= .venv-bench
BENCH_ARQ_VENV ?= .venv-bench-arq
BENCH_STAMP := $(VENV)/.bench.stamp

.PHONY: bench-venvs

$(BENCH_STAMP): bench/requirements.txt $(STAMP)
	$(PIP) install -q -r bench/requirements.txt
	touch $@

$(BENCH_VENV)/.stamp: bench/peers/requirements.txt
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -r bench/peers/requirements.txt
	$(BENCH_VENV)/bin/pip install -q --force-reinstall --no-deps "$$(bench/rhai_wheel.sh)"
	touch $@

$(BENCH_ARQ_VENV)/.stamp: bench/peers/requirements-arq.txt
	python3 -m venv $(BENCH_ARQ_VENV)
	$(BENCH_ARQ_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_ARQ_VENV)/bin/pip install -q -r bench/peers/requirements-arq.txt
	$(BENCH_ARQ_VENV)/bin/pip install -q --force-reinstall --no-deps "$$(bench/rhai_wheel.sh)"
	touch $@

## bench-venvs: the peers' venvs (.venv-bench, .venv-bench-arq)
bench-venvs: $(BENCH_VENV)/.stamp $(BENCH_ARQ_VENV)/.stamp

## bench: every benchmark; figures into bench/results/ (BENCH_QUICK=1: a quick smoke run)
bench: setup $(BENCH_STAMP) bench-venvs
	$(PY) -m bench
