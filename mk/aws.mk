# AWS: SAM build / validate / deploy, and the AWS e2e tests (included by the root Makefile).
#
#   make build       rhai-py wheel + `sam build` (no Docker; pip downloads cp312 manylinux wheels)
#   make validate    cfn-lint + sam validate --lint
#   make deploy      build, then sam deploy (guided on the first deploy only; SAM_ARGS="...")
#   make test-aws    the AWS e2e: sam build, stack on moto, the built function under the RIE
#
# aws-sam-cli lives in its own venv (.venv-sam): it pins many packages that would
# fight the project's. The Lambda runtime's Python (3.12) runs the built function
# under the Runtime Interface Emulator from .venv-lambda (awslambdaric + boto3, as
# in Lambda).
SAM_VENV ?= .venv-sam
SAM := $(SAM_VENV)/bin/sam
SAM_STAMP := $(SAM_VENV)/.stamp
SAM_CLI_SPEC ?= aws-sam-cli>=1.120,<2
LAMBDA_VENV ?= .venv-lambda
LAMBDA_STAMP := $(LAMBDA_VENV)/.stamp
SAM_TEMPLATE ?= template.yaml
SAM_BUILD_DIR ?= .aws-sam/build
SAM_ARGS ?=

# python3.12 (the template's runtime): on PATH, else a pyenv 3.12.x.
PYTHON312 ?= $(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null || \
  PYENV_VERSION=$$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12' | tail -1) \
  python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null)
# sam build: python3.12 first on PATH (its runtime check), the project's pip for the
# cross-platform downloads, no telemetry.
SAM_ENV = SAM_CLI_TELEMETRY=0 LAMBDA_PIP="$(abspath $(PIP))" \
  PATH="$(if $(PYTHON312),$(dir $(PYTHON312)):)$$PATH"

.PHONY: sam-venv lambda-venv wheel sam-build build validate deploy test-aws

$(SAM_STAMP):
	python3 -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install -q --upgrade pip
	$(SAM_VENV)/bin/pip install -q "$(SAM_CLI_SPEC)"
	touch $@

## sam-venv: aws-sam-cli in its own venv
sam-venv: $(SAM_STAMP)

$(LAMBDA_STAMP):
	@test -n "$(PYTHON312)" || { echo "python3.12 not found (PATH or pyenv): it runs the" \
	  "built function under the RIE; set PYTHON312=/path/to/python3.12" >&2; exit 2; }
	$(PYTHON312) -m venv $(LAMBDA_VENV)
	$(LAMBDA_VENV)/bin/pip install -q --upgrade pip
	$(LAMBDA_VENV)/bin/pip install -q "awslambdaric>=3" "boto3>=1.34"
	touch $@

## lambda-venv: python3.12 + awslambdaric + boto3, the runtime the RIE runs the build with
lambda-venv: $(LAMBDA_STAMP)

## wheel: the rhai-py manylinux abi3 wheel in dist/
wheel: $(STAMP)
	$(MAKE) -C rhai-py wheel VENV=$(abspath $(VENV))

## sam-build: sam build only (needs dist/rhai_py-*.whl)
sam-build: $(SAM_STAMP) $(STAMP)
	$(SAM_ENV) $(SAM) build --template-file $(SAM_TEMPLATE) --build-dir $(SAM_BUILD_DIR)

## build: the wheel, then sam build into .aws-sam/build
build: wheel
	$(MAKE) sam-build

## validate: cfn-lint and sam validate --lint
validate: $(SAM_STAMP) $(STAMP)
	$(VENV)/bin/cfn-lint $(SAM_TEMPLATE)
	SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} \
	  $(SAM) validate --lint --template-file $(SAM_TEMPLATE)

STACK_NAME ?= rhailambda
# The stack exists (then deploy unguided with samconfig.toml), else the first deploy is guided.
STACK_EXISTS = $(SAM_VENV)/bin/python -c 'import sys, boto3; \
  boto3.client("cloudformation").describe_stacks(StackName=sys.argv[1])' $(STACK_NAME) 2>/dev/null

## deploy: build, then sam deploy (guided only on the first deploy; settings in samconfig.toml)
deploy: build
	if $(STACK_EXISTS); then guided=; else guided=--guided; fi; \
	  SAM_CLI_TELEMETRY=0 $(SAM) deploy $$guided --config-file samconfig.toml \
	  --stack-name $(STACK_NAME) --template-file $(SAM_BUILD_DIR)/template.yaml $(SAM_ARGS)

## test-aws: the AWS e2e tests (moto + RIE; no Docker, no AWS account)
test-aws: setup wheel $(SAM_STAMP) $(LAMBDA_STAMP)
	RHAILAMBDA_REQUIRE_AWS_TESTS=1 $(PY) -m pytest -q tests/unit/test_template_iam.py \
	  tests/unit/test_lambda_backend.py tests/unit/test_lambda_backend_poller.py \
	  tests/e2e/test_aws_stack.py
