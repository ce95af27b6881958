"""Helpers for the AWS tests: the template, its translation, an AWS endpoint, the RIE.

- :func:`load_template` / :func:`translate`: ``template.yaml`` (or a built one)
  expanded by aws-sam-translator offline (no IAM lookups: managed policies come
  from :data:`OFFLINE_MANAGED_POLICIES`).
- :func:`iam_statements`: every IAM statement of a CloudFormation template, both
  branches of each ``Fn::If``.
- :func:`aws_endpoint`: ``AWS_ENDPOINT_URL`` when set (LocalStack), else moto's
  ``ThreadedMotoServer`` in this process on a free loopback port.
- :func:`deploy_built_stack`: a ``sam build`` output deployed through CloudFormation.
- :class:`RieProcess`: a built function served by the Lambda Runtime Interface
  Emulator (from the aws-sam-cli wheel) with ``awslambdaric``, on loopback only.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import socket
import subprocess
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "template.yaml"
SAM_VENV = REPO_ROOT / os.environ.get("SAM_VENV", ".venv-sam")
LAMBDA_VENV = REPO_ROOT / os.environ.get("LAMBDA_VENV", ".venv-lambda")
REGION = "us-east-1"
FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

#: What IAM would answer for the managed policies SAM may attach (offline).
OFFLINE_MANAGED_POLICIES = {
    name: f"arn:aws:iam::aws:policy/service-role/{name}"
    for name in (
        "AWSLambdaBasicExecutionRole",
        "AWSLambdaVPCAccessExecutionRole",
        "AWSXrayWriteOnlyAccess",
        "AWSLambdaRole",
    )
}


# --- tools -----------------------------------------------------------------------------
def sam_binary() -> Path:
    return SAM_VENV / "bin" / "sam"


def rie_binary() -> Path | None:
    """The RIE shipped inside the aws-sam-cli wheel (samcli/local/rapid/)."""
    found = sorted(
        SAM_VENV.glob("lib/python3*/site-packages/samcli/local/rapid/aws-lambda-rie-x86_64")
    )
    return found[-1] if found else None


def lambda_python() -> Path:
    """python3.12 with awslambdaric and boto3: the Lambda runtime, on the host."""
    return LAMBDA_VENV / "bin" / "python"


def missing_tools() -> list[str]:
    """What `make test-aws` installs and is not there yet."""
    missing = []
    if not sam_binary().exists():
        missing.append(f"aws-sam-cli ({sam_binary()}: make sam-venv)")
    if rie_binary() is None:
        missing.append("aws-lambda-rie (inside aws-sam-cli: make sam-venv)")
    if not lambda_python().exists():
        missing.append(f"Lambda runtime venv ({lambda_python()}: make lambda-venv)")
    if not sorted((REPO_ROOT / "dist").glob("rhai_py-*manylinux*x86_64.whl")):
        missing.append("rhai-py wheel in dist/ (make wheel)")
    return missing


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the template ----------------------------------------------------------------------
def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse

    parsed: dict[str, Any] = yaml_parse(path.read_text())
    return parsed


def translate(
    template: Mapping[str, Any],
    parameters: Mapping[str, Any] | None = None,
    *,
    code_uris: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The SAM template as plain CloudFormation (what the SAM transform would make).

    ``code_uris`` maps function logical ids to ``s3://`` URIs (as ``sam package``
    would); functions not named get a placeholder URI.
    """
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    sam = copy.deepcopy(dict(template))
    uris = dict(code_uris or {})
    sam.get("Globals", {}).get("Function", {}).pop("CodeUri", None)
    for logical_id, resource in sam["Resources"].items():
        if resource.get("Type") == "AWS::Serverless::Function":
            uri = uris.get(logical_id, f"s3://placeholder-bucket/{logical_id}.zip")
            resource.setdefault("Properties", {})["CodeUri"] = uri
    translator = Translator(None, Parser(), boto_session=boto3.Session(region_name=REGION))
    translated: dict[str, Any] = translator.translate(
        sam,
        parameter_values=dict(parameters or {}),
        get_managed_policy_map=lambda: dict(OFFLINE_MANAGED_POLICIES),
    )
    return translated


@dataclass(frozen=True)
class Statement:
    role: str  # the logical id of the resource that carries it
    policy: str
    body: Mapping[str, Any]

    def values(self, key: str) -> list[Any]:
        raw = self.body.get(key, [])
        return list(raw) if isinstance(raw, list) else [raw]


def _branches(node: Any) -> Iterator[Any]:
    """Every concrete value of a node, following both branches of Fn::If."""
    if isinstance(node, dict) and set(node) == {"Fn::If"}:
        _, yes, no = node["Fn::If"]
        yield from _branches(yes)
        yield from _branches(no)
    elif isinstance(node, dict) and node == {"Ref": "AWS::NoValue"}:
        return
    else:
        yield node


def iam_statements(cfn: Mapping[str, Any]) -> list[Statement]:
    """All IAM statements of roles and policies in a CloudFormation template."""
    found: list[Statement] = []
    for logical_id, resource in cfn["Resources"].items():
        props = resource.get("Properties", {})
        documents: list[tuple[str, Any]] = []
        if resource["Type"] == "AWS::IAM::Role":
            for policy in _branches(props.get("Policies", [])):
                for item in policy if isinstance(policy, list) else [policy]:
                    for concrete in _branches(item):
                        documents.append((concrete["PolicyName"], concrete["PolicyDocument"]))
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            documents.append((props.get("PolicyName", logical_id), props["PolicyDocument"]))
        for name, document in documents:
            for statement in _branches(document.get("Statement", [])):
                for item in statement if isinstance(statement, list) else [statement]:
                    for concrete in _branches(item):
                        found.append(Statement(logical_id, name, concrete))
    return found


def managed_policy_arns(cfn: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Role logical id -> the managed policy ARNs it may attach (all branches)."""
    out: dict[str, list[Any]] = {}
    for logical_id, resource in cfn["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        arns: list[Any] = []
        for value in _branches(resource.get("Properties", {}).get("ManagedPolicyArns", [])):
            for item in value if isinstance(value, list) else [value]:
                arns.extend(_branches(item))
        out[logical_id] = arns
    return out


# --- an AWS endpoint ---------------------------------------------------------------------
@contextlib.contextmanager
def aws_endpoint() -> Iterator[str]:
    """``AWS_ENDPOINT_URL`` (e.g. LocalStack) if set, else moto in this process."""
    given = os.environ.get("AWS_ENDPOINT_URL")
    if given:
        yield given
        return
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def client(service: str, endpoint_url: str) -> Any:
    make: Any = boto3.client  # its overloads want a literal service name
    return make(service, endpoint_url=endpoint_url, region_name=REGION, **FAKE_CREDENTIALS)


def zip_dir(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()


@dataclass(frozen=True)
class Stack:
    name: str
    outputs: dict[str, str]
    resources: dict[str, str]  # logical id -> physical id
    template: dict[str, Any]  # the translated template that was deployed


def deploy_built_stack(
    endpoint_url: str, build_dir: Path, parameters: Mapping[str, str], *, timeout_s: float = 120
) -> Stack:
    """Upload the built functions, translate the built template, create the stack."""
    built = load_template(build_dir / "template.yaml")
    s3 = client("s3", endpoint_url)
    bucket = f"rhailambda-artifacts-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    uris = {}
    for logical_id, resource in built["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        code_dir = build_dir / resource["Properties"]["CodeUri"]
        key = f"{logical_id}.zip"
        s3.put_object(Bucket=bucket, Key=key, Body=zip_dir(code_dir))
        uris[logical_id] = f"s3://{bucket}/{key}"
    cfn_template = translate(built, parameters, code_uris=uris)
    cfn = client("cloudformation", endpoint_url)
    name = f"rhailambda-{uuid.uuid4().hex[:6]}"
    pre = _Resolver(cfn_template, {**_defaults(cfn_template), **parameters}, {}, name)
    cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(_drop_no_values(cfn_template, pre)),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    deadline = time.monotonic() + timeout_s
    while True:
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        status = stack["StackStatus"]
        if status == "CREATE_COMPLETE":
            break
        if status.endswith("FAILED") or status.startswith("ROLLBACK"):
            events = cfn.describe_stack_events(StackName=name)["StackEvents"]
            reasons = [
                e.get("ResourceStatusReason") for e in events if "FAILED" in e["ResourceStatus"]
            ]
            raise RuntimeError(f"stack {name}: {status}: {reasons}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"stack {name} still {status} after {timeout_s:g} s")
        time.sleep(0.2)  # polling the emulator's stack status, not synchronising tests
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    summaries = cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
    resources = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in summaries}
    resolver = _Resolver(cfn_template, {**_defaults(cfn_template), **parameters}, resources, name)
    resources |= _put_skipped_alarms(endpoint_url, cfn_template, resources, resolver, name)
    return Stack(name, outputs, resources, cfn_template)


def _defaults(template: Mapping[str, Any]) -> dict[str, str]:
    return {
        k: str(v["Default"]) for k, v in template.get("Parameters", {}).items() if "Default" in v
    }


class _Resolver:
    """Enough of CloudFormation's intrinsics to resolve the alarms' properties."""

    def __init__(
        self,
        template: Mapping[str, Any],
        parameters: Mapping[str, str],
        physical: Mapping[str, str],
        stack_name: str,
    ) -> None:
        self._template = template
        self._refs = {**parameters, **physical, "AWS::StackName": stack_name, "AWS::Region": REGION}

    def condition(self, name: str) -> bool:
        return bool(self.value(self._template["Conditions"][name]))

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.value(i) for i in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return _NO_VALUE if arg == "AWS::NoValue" else self._refs[arg]
            if key == "Fn::If":
                return self.value(arg[1] if self.condition(arg[0]) else arg[2])
            if key == "Fn::Equals":
                return self.value(arg[0]) == self.value(arg[1])
            if key == "Fn::Not":
                return not self.value(arg[0])
            if key == "Fn::And":
                return all(self.value(a) for a in arg)
            if key == "Fn::Or":
                return any(self.value(a) for a in arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Join":
                return arg[0].join(str(v) for v in self.value(arg[1]))
        out = {k: self.value(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not _NO_VALUE}


_NO_VALUE = object()
_NO_VALUE_REF = {"Ref": "AWS::NoValue"}


def _drop_no_values(node: Any, resolver: _Resolver) -> Any:
    """The list items that are an ``Fn::If`` choosing ``AWS::NoValue``, removed.

    CloudFormation drops such an item; moto keeps it as null (a role's ``Policies``
    with a policy for a false condition, e.g. ``UseTracing``, then fails to create).
    Only the items whose condition picks NoValue go; every other ``Fn::If`` stays.
    """
    if isinstance(node, list):
        kept = []
        for item in node:
            if isinstance(item, dict) and set(item) == {"Fn::If"}:
                condition, yes, no = item["Fn::If"]
                if (yes if resolver.condition(condition) else no) == _NO_VALUE_REF:
                    continue
            kept.append(_drop_no_values(item, resolver))
        return kept
    if isinstance(node, dict):
        return {k: _drop_no_values(v, resolver) for k, v in node.items()}
    return node


def _put_skipped_alarms(
    endpoint_url: str,
    template: Mapping[str, Any],
    physical: Mapping[str, str],
    resolver: _Resolver,
    stack_name: str,
) -> dict[str, str]:
    """Alarms the emulator's CloudFormation skipped (moto has no AWS::CloudWatch::Alarm),
    put through the CloudWatch API with the template's resolved properties."""
    cloudwatch = client("cloudwatch", endpoint_url)
    created: dict[str, str] = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::CloudWatch::Alarm" or logical_id in physical:
            continue
        if "Condition" in resource and not resolver.condition(resource["Condition"]):
            continue
        props = resolver.value(resource["Properties"])
        props.setdefault("AlarmName", f"{stack_name}-{logical_id}")
        props["Threshold"] = float(props["Threshold"])
        cloudwatch.put_metric_alarm(**props)
        created[logical_id] = props["AlarmName"]
    return created


def sam_build(build_dir: Path, *, template: Path = TEMPLATE, log: Path | None = None) -> None:
    """``sam build`` as `make sam-build` runs it (python3.12 on PATH, no Docker)."""
    env = dict(os.environ, SAM_CLI_TELEMETRY="0")
    pip = REPO_ROOT / ".venv" / "bin" / "pip"
    if pip.exists():
        env["LAMBDA_PIP"] = str(pip)
    runtime_bin = LAMBDA_VENV / "bin"  # has python3.12 (a venv of it)
    env["PATH"] = f"{runtime_bin}:{env.get('PATH', '')}"
    cmd = [
        str(sam_binary()), "build", "--template-file", str(template),
        "--build-dir", str(build_dir), "--base-dir", str(REPO_ROOT),
    ]  # fmt: skip
    done = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if log is not None:
        log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(
            f"sam build failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )


# --- the Runtime Interface Emulator ----------------------------------------------------
class RieProcess:
    """One function served by the RIE on 127.0.0.1 (one invocation at a time).

    ``env`` is the function's environment (its configuration); the RIE adds the
    runtime's own variables. ``timeout_s`` is the function timeout.
    """

    def __init__(
        self,
        code_dir: Path,
        handler: str,
        env: Mapping[str, str],
        *,
        timeout_s: int,
        log_path: Path,
        extra_path: tuple[Path, ...] = (),
        function_name: str = "function",
    ) -> None:
        self.port = free_port()
        self._api_port = free_port()
        self._log_path = log_path
        rie = rie_binary()
        if rie is None:
            raise RuntimeError("aws-lambda-rie not found: make sam-venv")
        path = os.pathsep.join([str(code_dir), *(str(p) for p in extra_path)])
        self._env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "C.UTF-8",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_LAMBDA_FUNCTION_NAME": function_name,
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(timeout_s),
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "PYTHONPATH": path,
            "PYTHONDONTWRITEBYTECODE": "1",
            **env,
        }
        self._cmd = [
            str(rie),
            "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
            "--runtime-api-address", f"127.0.0.1:{self._api_port}",
            "--log-level", "warn",
            str(lambda_python()), "-m", "awslambdaric", handler,
        ]  # fmt: skip
        self._code_dir = code_dir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RieProcess:
        log = self._log_path.open("ab")
        self._proc = subprocess.Popen(
            self._cmd, cwd=self._code_dir, env=self._env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 15
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"RIE exited: {self._log_path.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"RIE did not listen on {self.port}")
            time.sleep(0.05)  # polling a child's readiness

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # The RIE and its runtime child share a session of their own: end both.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait(timeout=5)

    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace")

    def __enter__(self) -> RieProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
