"""Lambda tenant isolation: the lambda backend, the function's check, the RIE.

moto ignores tenancy, so the backend is run against a stand-in Lambda endpoint in
this process (:class:`StandInLambda`, Lambda's Invoke REST API on 127.0.0.1) that
behaves like a tenant-isolated function: an Invoke without ``X-Amz-Tenant-Id``, or
with one outside Lambda's pattern, is refused with Lambda's
``InvalidParameterValueException``; past its tenant quota it answers Lambda's
``TooManyRequestsException`` "Rate exceeded"; otherwise it runs the real handler
(real Redis, real engine) with a context whose ``tenant_id`` is the header, as
awslambdaric does. Under the real RIE + awslambdaric (``aws`` marker), the header
is shown to reach ``context.tenant_id``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import botocore.session
import pytest
import redis
from support.function_handler import fresh_handler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aws_support import REGION, RieProcess, missing_tools, sam_build
from redis_server import free_port

from rhailambda import protocol as p
from rhailambda.errors import InvocationError, ThrottledError
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.shim.lambda_backend import LambdaInvoker, lambda_client_config
from rhailambda.tenancy import tenant_id_for

pytest.importorskip("rhai_py")

FUNCTION = "rhailambda-script"
LAYOUT = p.KeyLayout()
_INVOKE_PATH = re.compile(r"/2015-03-31/functions/([^/]+)/invocations")
_TENANT_PATTERN = re.compile(r"[a-zA-Z0-9._:/=+\-@ ]{1,256}")


@dataclass
class FakeContext:
    """What awslambdaric hands a handler, ``tenant_id`` included."""

    tenant_id: str | None
    aws_request_id: str = "req-1"
    function_name: str = FUNCTION
    remaining_ms: int = 30_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class StandInLambda:
    """One tenant-isolated function behind Lambda's Invoke REST API, on loopback."""

    handler: Callable[[dict[str, Any], FakeContext], dict[str, Any]]
    max_tenants: int | None = None  # tenant environments before "Rate exceeded"
    tenant_headers: list[str | None] = field(default_factory=list)  # of every Invoke
    environments: list[str] = field(default_factory=list)  # tenants given one
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(
        self, function: str, tenant: str | None, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        with self._lock:  # one invocation at a time: the handler module is shared
            self.tenant_headers.append(tenant)
            if function != FUNCTION:
                return _error(404, "ResourceNotFoundException", f"Function not found: {function}")
            if tenant is None:
                return _error(
                    400, "InvalidParameterValueException",
                    "Tenant ID configuration not specified or passed to a function when "
                    "tenant isolation is not enabled.",
                )  # fmt: skip
            if _TENANT_PATTERN.fullmatch(tenant) is None:
                return _error(400, "InvalidParameterValueException", f"invalid TenantId {tenant!r}")
            if tenant not in self.environments:
                if self.max_tenants is not None and len(self.environments) >= self.max_tenants:
                    return _error(429, "TooManyRequestsException", "Rate exceeded")
                self.environments.append(tenant)
            result = self.handler(json.loads(body), FakeContext(tenant_id=tenant))
            return 200, {"X-Amz-Executed-Version": "$LATEST"}, json.dumps(result).encode()

    @property
    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                match = _INVOKE_PATH.fullmatch(self.path.split("?")[0])
                if match is None:
                    status, headers, payload = _error(404, "UnknownOperationException", self.path)
                else:
                    tenant = self.headers.get("X-Amz-Tenant-Id")
                    status, headers, payload = stand_in.answer(match.group(1), tenant, body)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(payload))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"Type": "User", "message": message}).encode()
    return status, {"x-amzn-ErrorType": code, "Content-Type": "application/json"}, body


@pytest.fixture
def handler_module(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The real Lambda handler, imported as a cold start would, against the test Redis."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RHAILAMBDA_CIRCLE_ENABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "rhailambda-test")
    with fresh_handler() as module:
        yield module


def _serve(stand_in: StandInLambda) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), stand_in.handler_class)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def stand_in(handler_module: ModuleType) -> StandInLambda:
    return StandInLambda(handler_module.handler)


@pytest.fixture
def endpoint(stand_in: StandInLambda) -> Iterator[str]:
    yield from _serve(stand_in)


def _client(endpoint_url: str, session: boto3.Session | None = None) -> Any:
    return (session or boto3.Session()).client(
        "lambda", region_name=REGION, endpoint_url=endpoint_url,
        aws_access_key_id="test", aws_secret_access_key="test",
        config=lambda_client_config(max_concurrency=4, read_timeout_s=30),
    )  # fmt: skip


def _invoke(
    endpoint_url: str,
    event: InvocationEvent,
    session: boto3.Session | None = None,
    function: str = FUNCTION,
) -> Any:
    invoker = LambdaInvoker(function, client=_client(endpoint_url, session))

    async def go() -> Any:
        try:
            return await invoker.invoke(event, timeout_s=30)
        finally:
            await invoker.aclose()

    return asyncio.run(go())


def _put(r: redis.Redis, task_id: str, circle: str, script: str = "40 + 2") -> None:
    """A task of ``circle``, submitted by the circle's owner (who may write its data)."""
    r.hset(
        LAYOUT.task(task_id),
        mapping={
            "taskId": task_id, "callerId": circle, "contextId": circle, "script": script,
            "status": "pending", "createdAt": "2026-01-01T00:00:00Z",
        },
    )  # fmt: skip


def _replies(r: redis.Redis, task_id: str) -> list[dict[str, Any]]:
    return [dict(json.loads(raw)) for raw in r.lrange(LAYOUT.reply(task_id), 0, -1)]


def _reply(r: redis.Redis, task_id: str) -> dict[str, Any]:
    replies = _replies(r, task_id)
    assert len(replies) == 1, f"expected exactly one reply for {task_id}, got {replies}"
    return replies[0]


def _event(tenant: str | None, *task_ids: str) -> InvocationEvent:
    return InvocationEvent("worker1", tuple(TaskRef(t, 1) for t in task_ids), tenant_id=tenant)


# --- the lambda backend sends the tenant --------------------------------------------
def test_a_one_circle_batch_runs_in_its_own_tenant(
    stand_in: StandInLambda, endpoint: str, redis_client: redis.Redis
) -> None:
    circle = "team a=1 / café"  # spaces, the escape character, multi-byte characters
    _put(redis_client, "a1", circle, "6 * 7")
    _put(redis_client, "a2", circle, "CONTEXT_ID")
    response = _invoke(endpoint, _event(circle, "a1", "a2"))
    assert dict(response.outcomes) == {"a1": "completed", "a2": "completed"}
    assert stand_in.tenant_headers == [tenant_id_for(circle)] == ["team=20a=3D1=20/=20caf=C3=A9"]
    assert _reply(redis_client, "a1")["output"] == "42"
    assert _reply(redis_client, "a2")["output"] == circle


def test_an_invoke_without_a_tenant_is_refused_and_nothing_runs(
    stand_in: StandInLambda, endpoint: str, redis_client: redis.Redis
) -> None:
    _put(redis_client, "n1", "alice")
    with pytest.raises(InvocationError) as caught:
        _invoke(endpoint, _event(None, "n1"))
    assert not isinstance(caught.value, ThrottledError)
    assert "InvalidParameterValueException" in str(caught.value)
    assert "Tenant ID" in str(caught.value)
    assert stand_in.tenant_headers == [None] and stand_in.environments == []
    assert _replies(redis_client, "n1") == []
    assert redis_client.hget(LAYOUT.task("n1"), "status") == "pending"


def test_tenants_past_the_environment_quota_are_throttled(
    handler_module: ModuleType, redis_client: redis.Redis
) -> None:
    stand_in = StandInLambda(handler_module.handler, max_tenants=1)
    _put(redis_client, "q1", "alice")
    _put(redis_client, "q2", "bob")
    for endpoint in _serve(stand_in):
        assert dict(_invoke(endpoint, _event("alice", "q1")).outcomes) == {"q1": "completed"}
        with pytest.raises(ThrottledError) as caught:  # the drain spends no attempt on it
            _invoke(endpoint, _event("bob", "q2"))
    assert "TooManyRequestsException" in str(caught.value) and "Rate exceeded" in str(caught.value)
    assert stand_in.environments == ["alice"]
    assert _replies(redis_client, "q2") == []
    assert redis_client.hget(LAYOUT.task("q2"), "status") == "pending"


def test_an_older_botocore_still_sends_the_tenant_header(
    stand_in: StandInLambda, endpoint: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # botocore before 1.41 has no TenantId in Invoke (the Lambda runtime's own boto3
    # runs the poller): a service model without it, loaded ahead of the installed one.
    installed = botocore.session.get_session().get_component("data_loader")
    model = copy.deepcopy(installed.load_service_model("lambda", "service-2"))
    del model["shapes"]["InvocationRequest"]["members"]["TenantId"]
    version = model["metadata"]["apiVersion"]
    (tmp_path / "lambda" / version).mkdir(parents=True)
    (tmp_path / "lambda" / version / "service-2.json").write_text(json.dumps(model))
    old = botocore.session.Session()
    old.set_config_variable("data_path", str(tmp_path))
    session = boto3.Session(botocore_session=old)
    shape = _client(endpoint, session).meta.service_model.operation_model("Invoke").input_shape
    assert "TenantId" not in shape.members  # really the old model
    _put(redis_client, "o1", "alice")
    response = _invoke(endpoint, _event("alice", "o1"), session)
    assert dict(response.outcomes) == {"o1": "completed"}
    assert stand_in.tenant_headers == ["alice"]


# --- the function refuses another circle's tasks ------------------------------------
def test_a_task_of_another_circle_is_refused_and_its_neighbours_run(
    stand_in: StandInLambda, endpoint: str, redis_client: redis.Redis
) -> None:
    _put(redis_client, "m1", "alice", "1")
    _put(redis_client, "m2", "bob", "2")
    _put(redis_client, "m3", "alice", "3")
    response = _invoke(endpoint, _event("alice", "m1", "m2", "m3"))
    assert dict(response.outcomes) == {"m1": "completed", "m2": "error", "m3": "completed"}
    refused = _reply(redis_client, "m2")
    assert refused["status"] == "error"
    assert "refused" in refused["error"] and "tenant isolation" in refused["error"]
    assert "alice" not in refused["error"]  # the reply names no other circle
    assert refused.get("output") in (None, "")  # its script did not run
    assert [_reply(redis_client, t)["output"] for t in ("m1", "m3")] == ["1", "3"]


def test_a_wrong_tenant_runs_none_of_the_batch(
    stand_in: StandInLambda, endpoint: str, redis_client: redis.Redis
) -> None:
    _put(redis_client, "w1", "alice")
    _put(redis_client, "w2", "alice")
    response = _invoke(endpoint, _event("bob", "w1", "w2"))
    assert dict(response.outcomes) == {"w1": "error", "w2": "error"}
    for task_id in ("w1", "w2"):
        assert "refused" in _reply(redis_client, task_id)["error"]


def test_a_circle_spelled_like_another_circles_tenant_is_still_refused(
    handler_module: ModuleType, redis_client: redis.Redis
) -> None:
    # The check compares mapped ids: the circle "a=20b" is not the tenant "a=20b"
    # (that tenant is the circle "a b"), so a task of it cannot ride along.
    _put(redis_client, "s1", "a=20b")
    _put(redis_client, "s2", "a b")
    event = {"workerId": "worker1", "tasks": ["s1", "s2"]}
    response = handler_module.handler(event, FakeContext(tenant_id=tenant_id_for("a b")))
    assert response["outcomes"] == {"s1": "error", "s2": "completed"}


def test_a_refused_task_leaves_its_circle_untouched(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RHAILAMBDA_CIRCLE_ENABLED", "true")
    monkeypatch.setenv("RHAILAMBDA_CIRCLE_BACKEND", "redis")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "rhailambda-test")
    with fresh_handler() as module:
        _refused_task_writes_nothing(module.handler, redis_client)


def _refused_task_writes_nothing(handler: Any, redis_client: redis.Redis) -> None:
    write = 'db::save("notes", "n", #{ by: CONTEXT_ID }); "saved"'
    _put(redis_client, "d1", "alice", write)
    _put(redis_client, "d2", "bob", write)
    # d2 as a redelivery (an earlier attempt claimed it): the receipt check would read
    # bob's circle; refused first, it reads nothing
    redis_client.hset(LAYOUT.task("d2"), "status", p.STATUS_PROCESSING)
    event = {"workerId": "worker1", "tasks": [{"taskId": "d1"}, {"taskId": "d2", "attempt": 2}]}
    response = handler(event, FakeContext(tenant_id=tenant_id_for("alice")))
    assert response["outcomes"] == {"d1": "completed", "d2": "error"}
    read = 'let r = db::get("notes", "n"); if r == () { "none" } else { r.by }'
    _put(redis_client, "d3", "alice", read)
    _put(redis_client, "d4", "bob", read)
    for task_id, circle in (("d3", "alice"), ("d4", "bob")):
        handler({"workerId": "worker1", "tasks": [task_id]}, FakeContext(tenant_id=circle))
    assert _reply(redis_client, "d3")["output"] == "alice"
    assert _reply(redis_client, "d4")["output"] == "none"  # bob's script never wrote


def test_without_tenant_isolation_nothing_is_refused(
    handler_module: ModuleType, redis_client: redis.Redis
) -> None:
    _put(redis_client, "f1", "alice")
    _put(redis_client, "f2", "bob")
    response = handler_module.handler(
        {"workerId": "worker1", "tasks": ["f1", "f2"]}, FakeContext(tenant_id=None)
    )
    assert response["outcomes"] == {"f1": "completed", "f2": "completed"}


# --- the RIE ------------------------------------------------------------------------
PROBE = """
import json
import os


def handler(event, context):
    with open(os.environ["PROBE_LOG"], "a") as log:
        log.write(json.dumps({"tenant_id": context.tenant_id}) + "\\n")
    return {"batchItemFailures": [], "outcomes": {}}
"""


@pytest.fixture(scope="module")
def aws_tools() -> None:
    missing = missing_tools()
    if missing:
        pytest.skip("AWS tools missing (make test-aws installs them): " + "; ".join(missing))


@pytest.fixture(scope="module")
def built_function(aws_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The script function's package as ``sam build`` makes it (python3.12, manylinux)."""
    out = tmp_path_factory.mktemp("sam") / "build"
    sam_build(out, log=out.parent / "sam-build.log")
    return out / "ScriptFunction"


@pytest.mark.aws
def test_the_rie_hands_the_tenant_header_to_context_tenant_id(
    aws_tools: None, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "probe.py").write_text(PROBE)
    log = tmp_path / "probe.log"
    env = {"PROBE_LOG": str(log)}
    with RieProcess(code, "probe.handler", env, timeout_s=10, log_path=tmp_path / "rie.log") as rie:
        circle = "team a=1 / café"
        # the backend, as the shim calls it (the RIE serves the function named "function")
        _invoke(rie.endpoint_url, _event(circle, "t1"), function="function")
        _invoke(rie.endpoint_url, _event(None, "t2"), function="function")
        # the raw header too, to be sure it is the header (not a boto3 quirk) that travels
        request = urllib.request.Request(
            f"{rie.endpoint_url}/2015-03-31/functions/function/invocations",
            data=b"{}", headers={"X-Amz-Tenant-Id": "raw:header"}, method="POST",
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    seen = [json.loads(line)["tenant_id"] for line in log.read_text().splitlines()]
    assert seen == [tenant_id_for(circle), None, "raw:header"]


@pytest.mark.aws
def test_the_built_function_under_the_rie_refuses_another_circles_task(
    built_function: Path, redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # The whole path as deployed: the backend's TenantId, the RIE, awslambdaric's
    # context.tenant_id, the packaged handler's check.
    env = {"REDIS_URL": redis_url, "RHAILAMBDA_CIRCLE_ENABLED": "false"}
    circle = "org/team a"
    _put(redis_client, "r1", circle, "CONTEXT_ID")
    _put(redis_client, "r2", "org/team b", "2")
    rie = RieProcess(
        built_function, "rhailambda.functions.handler.handler", env,
        timeout_s=10, log_path=tmp_path / "rie.log",
    )  # fmt: skip
    with rie:
        try:
            response = _invoke(rie.endpoint_url, _event(circle, "r1", "r2"), function="function")
        except BaseException:
            print(rie.log_text()[-4000:])
            raise
    assert dict(response.outcomes) == {"r1": "completed", "r2": "error"}
    assert _reply(redis_client, "r1")["output"] == circle
    assert "refused" in _reply(redis_client, "r2")["error"]
    assert f'"tenant_id":"{tenant_id_for(circle)}"' in rie.log_text()  # the batch's log line
