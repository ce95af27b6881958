"""The AWS deployment end to end, without Docker or an AWS account.

1. ``sam build`` of template.yaml (the makefile build: cp312 manylinux wheels + rhai-py).
2. The built template, expanded by aws-sam-translator, deployed through
   CloudFormation on moto (or on whatever ``AWS_ENDPOINT_URL`` names, e.g.
   LocalStack): the function, the table, the alarms, the roles and their policies.
3. The BUILT packages run under the Lambda Runtime Interface Emulator with
   python3.12 + awslambdaric, each with the environment the stack gave it:
   the script function, and the poller (the shim as a Lambda) whose boto3 calls
   ``Invoke`` on the script function's RIE. The Redis URL comes from a Secrets
   Manager secret and circle data goes to the stack's DynamoDB table, both on moto.
4. A client submits 200 scripts (and a few that crash or hang the function); the
   poller drains them, retries the failures, dead-letters them with an error
   reply, publishes ``DeadLetterDepth``, hands back and returns before its
   timeout; a task queued while no poller runs waits for the next run.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aws_support import (
    RieProcess,
    Stack,
    aws_endpoint,
    client,
    deploy_built_stack,
    load_template,
    missing_tools,
    sam_build,
)
from redis_server import RedisServer
from support.package_content import find_test_code

from rhailambda.client import Client
from rhailambda.protocol import KeyLayout

pytestmark = [
    pytest.mark.aws,
    # moto's CloudFormation skips these (the alarms are then put through the API).
    pytest.mark.filterwarnings("ignore:Tried to parse AWS:UserWarning"),
]

SCRIPT_TIMEOUT_S = 3  # FunctionTimeout: what the hanging task runs into
POLLER_TIMEOUT_S = 60  # drains for 60 - (3 + 15) s, then hands back
SECOND_POLLER_TIMEOUT_S = 25  # the next run: drains for 7 s
WORKERS = ("w-ok", "w-crash", "w-hang")
TASKS = 200
LAYOUT = KeyLayout()

# A test-only wrapper around the real handler: it crashes the runtime or hangs past
# the timeout on marked task ids, and delegates everything else. The product code
# has no such hook.
FAULTS_MODULE = """
import os
import time

from rhailambda.functions.handler import handler as real_handler


def handler(event, context):
    ids = [t["taskId"] if isinstance(t, dict) else t for t in event.get("tasks", [])]
    if any(i.startswith("crash-") for i in ids):
        os._exit(70)
    if any(i.startswith("hang-") for i in ids):
        time.sleep(3600)
    return real_handler(event, context)
"""


@pytest.fixture(scope="module")
def tools() -> None:
    missing = missing_tools()
    if missing:
        message = "AWS e2e tools missing (make test-aws installs them): " + "; ".join(missing)
        if os.environ.get("RHAILAMBDA_REQUIRE_AWS_TESTS") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def build_dir(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sam") / "build"
    started = time.monotonic()
    sam_build(out, log=out.parent / "sam-build.log")
    print(f"sam build: {time.monotonic() - started:.1f} s")
    return out


@pytest.fixture(scope="module")
def endpoint(tools: None) -> Iterator[str]:
    with aws_endpoint() as url:
        yield url


@pytest.fixture(scope="module")
def redis_module(redis_server: RedisServer) -> Iterator[str]:
    """The session's redis-server, flushed once for this module's tests."""
    if not redis_server.running:
        redis_server.start()
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    r.close()
    yield redis_server.url


@pytest.fixture(scope="module")
def secret_arn(endpoint: str, redis_module: str) -> str:
    sm = client("secretsmanager", endpoint)
    name = f"rhailambda-redis-{time.monotonic_ns()}"
    arn: str = sm.create_secret(Name=name, SecretString=redis_module)["ARN"]
    return arn


@pytest.fixture(scope="module")
def stack(endpoint: str, build_dir: Path, secret_arn: str) -> Stack:
    started = time.monotonic()
    deployed = deploy_built_stack(
        endpoint,
        build_dir,
        {
            "RedisSecretArn": secret_arn,
            "CircleBackend": "dynamodb",
            "FunctionTimeout": str(SCRIPT_TIMEOUT_S),
            "WorkerIds": ",".join(WORKERS),
            "BatchSize": "10",
            "ShimConcurrency": "1",  # the RIE runs one invocation at a time
            "MaxAttempts": "3",
            "LogLevel": "INFO",
        },
    )
    print(f"stack {deployed.name}: {time.monotonic() - started:.1f} s")
    return deployed


def _function_env(endpoint: str, function_name: str) -> dict[str, str]:
    config = client("lambda", endpoint).get_function_configuration(FunctionName=function_name)
    variables = config.get("Environment", {}).get("Variables", {})
    return {k: str(v) for k, v in variables.items()}  # moto may hand back numbers


def _policy(iam: Any, role: str, name: str) -> dict[str, Any]:
    document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    if isinstance(document, str):  # moto keeps CloudFormation's inline policies as text
        text = urllib.parse.unquote(document)
        try:
            document = json.loads(text)
        except ValueError:  # ... sometimes as a Python repr
            document = ast.literal_eval(text)
    statements = document["Statement"]
    document["Statement"] = statements if isinstance(statements, list) else [statements]
    return dict(document)


def test_the_built_function_packages_hold_no_test_code_and_no_moto(build_dir: Path) -> None:
    built = load_template(build_dir / "template.yaml")
    code_dirs = {
        logical_id: build_dir / resource["Properties"]["CodeUri"]
        for logical_id, resource in built["Resources"].items()
        if resource.get("Type") == "AWS::Serverless::Function"
    }
    assert set(code_dirs) == {"ScriptFunction", "PollerFunction"}
    for logical_id, code_dir in code_dirs.items():
        assert (code_dir / "rhailambda" / "functions" / "handler.py").is_file(), logical_id
        assert find_test_code(code_dir) == [], logical_id


def test_stack_creates_function_table_alarms_and_roles(endpoint: str, stack: Stack) -> None:
    lam = client("lambda", endpoint)
    script = lam.get_function_configuration(FunctionName=stack.outputs["ScriptFunctionName"])
    assert script["Handler"] == "rhailambda.functions.handler.handler"
    assert script["Runtime"] == "python3.12"
    assert script["Timeout"] == SCRIPT_TIMEOUT_S
    env = script["Environment"]["Variables"]
    assert env["REDIS_SECRET_ARN"].startswith("arn:aws:secretsmanager:")
    assert "REDIS_URL" not in env  # only the secret
    assert env["RHAILAMBDA_CIRCLE_BACKEND"] == "dynamodb"
    assert env["RHAILAMBDA_CIRCLE_TABLE"] == stack.outputs["CircleTableName"]
    poller = lam.get_function_configuration(FunctionName=stack.outputs["PollerFunctionName"])
    assert poller["Handler"] == "rhailambda.shim.poller.handler"
    assert poller["Environment"]["Variables"]["RHAILAMBDA_FUNCTION_NAME"] == script["FunctionName"]

    table = client("dynamodb", endpoint).describe_table(TableName=stack.outputs["CircleTableName"])
    schema = {k["AttributeName"]: k["KeyType"] for k in table["Table"]["KeySchema"]}
    assert schema == {"pk": "HASH", "sk": "RANGE"}
    assert table["Table"]["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"

    alarms = client("cloudwatch", endpoint).describe_alarms()["MetricAlarms"]
    by_metric = {(a["Namespace"], a["MetricName"]) for a in alarms}
    assert {("AWS/Lambda", "Errors"), ("AWS/Lambda", "Throttles")} <= by_metric
    assert ("rhailambda", "DeadLetterDepth") in by_metric

    iam = client("iam", endpoint)
    role_name = stack.resources["ScriptFunctionRole"]
    names = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
    documents = [_policy(iam, role_name, n) for n in names]
    statements = {s["Sid"]: s for d in documents for s in d["Statement"]}
    assert set(statements) == {"WriteOwnLogGroup", "ReadRedisUrl", "CircleData"}
    assert statements["ReadRedisUrl"]["Resource"] == env["REDIS_SECRET_ARN"]
    assert statements["CircleData"]["Resource"].endswith(
        f":table/{stack.outputs['CircleTableName']}"
    )
    assert iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"] == []
    poller_role = stack.resources["PollerFunctionRole"]
    poller_docs = [
        _policy(iam, poller_role, n)
        for n in iam.list_role_policies(RoleName=poller_role)["PolicyNames"]
    ]
    invoke = [s for d in poller_docs for s in d["Statement"] if s["Sid"] == "InvokeScriptFunction"]
    assert invoke[0]["Resource"] == script["FunctionArn"]


class _PollerRun:
    """One invocation of the poller's RIE, in a thread (it blocks for the whole run)."""

    def __init__(self, rie: RieProcess, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._rie = rie
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        url = f"{self._rie.endpoint_url}/2015-03-31/functions/function/invocations"
        request = urllib.request.Request(url, data=b"{}", method="POST")  # the schedule's event
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s + 30) as response:
                self.result = json.loads(response.read())
        except BaseException as exc:
            self.error = exc
        self.seconds = time.monotonic() - started

    def join(self) -> dict[str, Any]:
        self._thread.join(self._timeout_s + 30)
        assert not self._thread.is_alive(), f"poller still running after {self._timeout_s} s"
        assert self.error is None, self.error
        assert self.result is not None
        return self.result


def _wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # polling Redis state with a deadline


def test_poller_drains_into_the_built_function(
    endpoint: str,
    stack: Stack,
    build_dir: Path,
    redis_module: str,
    tmp_path: Path,
) -> None:
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "rhailambda_faults.py").write_text(FAULTS_MODULE)
    script_env = _function_env(endpoint, stack.outputs["ScriptFunctionName"])
    script_env["AWS_ENDPOINT_URL"] = endpoint  # Secrets Manager and DynamoDB on the emulator
    poller_env = _function_env(endpoint, stack.outputs["PollerFunctionName"])
    poller_env["AWS_ENDPOINT_URL"] = endpoint
    assert poller_env["RHAILAMBDA_POLLER_MODE"] == "on-demand"  # the template's default
    poller_env["RHAILAMBDA_POLLER_IDLE_EXIT_S"] = "10"  # each run ends once drained

    with RieProcess(
        build_dir / "ScriptFunction",
        "rhailambda_faults.handler",
        script_env,
        timeout_s=SCRIPT_TIMEOUT_S,
        log_path=tmp_path / "script-rie.log",
        extra_path=(faults,),
    ) as script_rie:
        # The poller's boto3 Lambda client calls the script function's RIE, which
        # serves the Invoke API for the function named "function".
        poller_env["AWS_ENDPOINT_URL_LAMBDA"] = script_rie.endpoint_url
        poller_env["RHAILAMBDA_FUNCTION_NAME"] = "function"

        def poller(timeout_s: int, log_name: str) -> RieProcess:
            return RieProcess(
                build_dir / "PollerFunction",
                "rhailambda.shim.poller.handler",
                poller_env,
                timeout_s=timeout_s,
                log_path=tmp_path / log_name,
            )

        for step, rie in (
            (_first_run, poller(POLLER_TIMEOUT_S, "poller-rie.log")),
            (_next_run, poller(SECOND_POLLER_TIMEOUT_S, "poller-rie-2.log")),
        ):
            with rie:
                try:
                    step(redis_module, rie, stack)
                except BaseException:
                    print("--- script RIE log ---\n" + script_rie.log_text()[-6000:])
                    print("--- poller RIE log ---\n" + rie.log_text()[-6000:])
                    raise
        poller_log = (tmp_path / "poller-rie.log").read_text()
    # DeadLetterDepth went out as an EMF line in the namespace the alarm watches.
    emf = [
        json.loads(line)
        for line in poller_log.splitlines()
        if line.startswith("{") and '"DeadLetterDepth"' in line
    ]
    assert emf, "no DeadLetterDepth metric in the poller's log"
    assert emf[-1]["DeadLetterDepth"] == [2.0] or emf[-1]["DeadLetterDepth"] == 2.0
    assert emf[-1]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "rhailambda"
    assert emf[-1]["service"] == "rhailambda-shim"


def _first_run(redis_url: str, poller_rie: RieProcess, stack: Stack) -> None:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    started = time.monotonic()
    with Client(redis_url) as c:
        ids = [
            c.submit(f"let x = {i}; x * 2", worker_id="w-ok", context_id="alice", caller_id="alice")
            for i in range(TASKS)
        ]
        circle = c.submit(
            'db::save("notes", "n1", #{ text: "hello" }); db::get("notes", "n1").text',
            worker_id="w-ok",
            context_id="alice",
            caller_id="alice",
        )
        denied = c.submit(
            'db::save("notes", "n2", #{ text: "x" })',
            worker_id="w-ok",
            context_id="alice",
            caller_id="mallory",
        )
        crash = c.submit("1", worker_id="w-crash", context_id="a", caller_id="a", task_id="crash-1")
        hang = c.submit("1", worker_id="w-hang", context_id="a", caller_id="a", task_id="hang-1")
        # On demand: the scheduled run finds the queued work and drains it.
        run = _PollerRun(poller_rie, POLLER_TIMEOUT_S)

        replies = c.wait_many(ids, timeout_s=40)
        assert [replies[t].status for t in ids] == ["completed"] * TASKS
        assert [replies[t].output for t in ids] == [str(i * 2) for i in range(TASKS)]
        took_s = time.monotonic() - started
        print(f"{TASKS} tasks through poller -> Lambda API -> function: {took_s:.1f} s")

        reply = c.wait(circle, timeout_s=20)
        assert (reply.status, reply.output) == ("completed", "hello")
        reply = c.wait(denied, timeout_s=20)
        assert reply.status == "error" and "Insufficient authorization" in (reply.error or "")

        for task_id, symptom in ((crash, "Runtime exited"), (hang, "Task timed out")):
            reply = c.wait(task_id, timeout_s=40)
            print(f"{task_id}: {reply.error}")
            assert reply.status == "error", (symptom, reply)
            assert "dead-lettered after 3 attempts" in (reply.error or ""), (symptom, reply)
            assert symptom in (reply.error or ""), (symptom, reply)
        assert r.lrange(LAYOUT.dead_letter("w-crash"), 0, -1) == [crash]
        assert r.lrange(LAYOUT.dead_letter("w-hang"), 0, -1) == [hang]
        assert r.hget(f"rhailib:{hang}", "rhailambdaAttempt") in (None, "3")

        # The run ends by itself before its timeout: stop taking, hand back, deregister.
        result = run.join()
        assert result["deadLetterDepth"] == 2
        assert result["shimId"] == f"{stack.name}-poller"
        assert run.seconds < POLLER_TIMEOUT_S
        assert r.zcard(LAYOUT.shims()) == 0
        assert [k for k in r.scan_iter(f"{LAYOUT.internal_prefix}inflight:*")] == []

    r.close()


def _next_run(redis_url: str, poller_rie: RieProcess, stack: Stack) -> None:
    """Between runs nothing polls: a new task waits in its queue for the next run."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    with Client(redis_url) as c:
        late = c.submit("40 + 2", worker_id="w-ok", context_id="alice", caller_id="alice")
        _wait_until(lambda: r.llen("rhailib:w-ok") == 1, 5, "the late task to be queued")
        time.sleep(1.0)  # a poller would have taken it by now; none runs
        assert r.llen("rhailib:w-ok") == 1
        run = _PollerRun(poller_rie, SECOND_POLLER_TIMEOUT_S)
        reply = c.wait(late, timeout_s=30)
        assert (reply.status, reply.output) == ("completed", "42")
        assert run.join()["shimId"] == f"{stack.name}-poller"
        assert r.zcard(LAYOUT.shims()) == 0
    r.close()


def test_a_submit_wakes_the_idle_on_demand_poller(
    endpoint: str,
    stack: Stack,
    build_dir: Path,
    redis_module: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No poller runs; the client's wake-up (an Event Invoke of the poller's RIE) drains it."""
    script_env = _function_env(endpoint, stack.outputs["ScriptFunctionName"])
    script_env["AWS_ENDPOINT_URL"] = endpoint
    poller_env = _function_env(endpoint, stack.outputs["PollerFunctionName"])
    poller_env.update(AWS_ENDPOINT_URL=endpoint, RHAILAMBDA_POLLER_IDLE_EXIT_S="2")
    r = redis.Redis.from_url(redis_module, decode_responses=True)
    assert r.zcard(LAYOUT.shims()) == 0  # no live poller lease
    with RieProcess(
        build_dir / "ScriptFunction",
        "rhailambda.functions.handler.handler",
        script_env,
        timeout_s=SCRIPT_TIMEOUT_S,
        log_path=tmp_path / "script-rie.log",
    ) as script_rie:
        poller_env["AWS_ENDPOINT_URL_LAMBDA"] = script_rie.endpoint_url
        poller_env["RHAILAMBDA_FUNCTION_NAME"] = "function"
        with RieProcess(
            build_dir / "PollerFunction",
            "rhailambda.shim.poller.handler",
            poller_env,
            timeout_s=SECOND_POLLER_TIMEOUT_S,
            log_path=tmp_path / "poller-rie.log",
        ) as poller_rie:
            # The client (this process) invokes the poller's RIE, named "function".
            monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", poller_rie.endpoint_url)
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
            monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
            monkeypatch.setenv("RHAILAMBDA_WAKE_FUNCTION", "function")
            with Client(redis_module) as c:
                started = time.monotonic()
                task = c.submit("20 + 22", worker_id="w-ok", context_id="a", caller_id="a")
                assert c.waker is not None and c.waker.sent == 1
                reply = c.wait(task, timeout_s=60)
                took_s = time.monotonic() - started
                assert (reply.status, reply.output) == ("completed", "42")
                print(f"wake-up on submit: reply after {took_s:.2f} s (poller cold start included)")
                # A second submit while the woken run holds its lease sends nothing.
                second = c.submit("1", worker_id="w-ok", context_id="a", caller_id="a")
                assert c.wait(second, timeout_s=30).status == "completed"
                assert c.waker.sent == 1
    r.close()


def test_an_idle_on_demand_run_returns_without_invoking_the_function(
    endpoint: str, stack: Stack, build_dir: Path, redis_module: str, tmp_path: Path
) -> None:
    """Empty queues: each trigger is one Redis round trip; its billed duration is recorded."""
    poller_env = _function_env(endpoint, stack.outputs["PollerFunctionName"])
    poller_env["AWS_ENDPOINT_URL"] = endpoint
    poller_env["AWS_ENDPOINT_URL_LAMBDA"] = "http://127.0.0.1:9"  # nothing may call it
    r = redis.Redis.from_url(redis_module, decode_responses=True)
    assert all(r.llen(LAYOUT.queue(w)) == 0 for w in WORKERS)
    log_path = tmp_path / "poller-rie.log"
    with RieProcess(
        build_dir / "PollerFunction",
        "rhailambda.shim.poller.handler",
        poller_env,
        timeout_s=SECOND_POLLER_TIMEOUT_S,
        log_path=log_path,
    ) as rie:
        results = [_PollerRun(rie, SECOND_POLLER_TIMEOUT_S).join() for _ in range(4)]
    assert [res["outcome"] for res in results] == ["idle"] * 4
    assert r.zcard(LAYOUT.shims()) == 0
    reports = [ln for ln in log_path.read_text().splitlines() if "Billed Duration" in ln]
    assert len(reports) == 4
    durations = [res["checkS"] for res in results]
    record = tmp_path.parent / "poller-idle-check.json"
    record.write_text(json.dumps({"checkS": durations, "reports": reports}))
    print("on-demand idle check (cold, then warm):", durations, *reports, sep="\n  ")
    r.close()
