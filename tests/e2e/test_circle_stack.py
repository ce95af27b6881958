"""Circle data through the whole local stack: client -> Redis -> shim -> function -> store.

Scripts are submitted with :class:`rhailambda.client.Client` and run by a real shim
subprocess (local backend, several workers). The same suite runs with the circle
data in Redis and in DynamoDB (an in-process moto server, or ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.aws_emulator import DUMMY_AWS_ENV, create_table, dynamodb_client

from rhailambda.client import Client, Reply

pytest.importorskip("rhai_py")

ROOT = Path(__file__).resolve().parents[2]
WORKER = "circle-e2e"
TIMEOUT_S = 30.0


@dataclass
class Stack:
    client: Client
    backend: str

    def run(self, script: str, *, context: str, caller: str | None = None) -> Reply:
        task_id = self.client.submit(
            script, worker_id=WORKER, context_id=context, caller_id=caller or context
        )
        return self.client.wait(task_id, timeout_s=TIMEOUT_S)

    def ok(self, script: str, *, context: str, caller: str | None = None) -> str:
        reply = self.run(script, context=context, caller=caller)
        assert reply.status == "completed", reply.error
        return reply.output or ""


@pytest.fixture(scope="module", params=["redis", "dynamodb"])
def stack(request: pytest.FixtureRequest, redis_server: object) -> Iterator[Stack]:
    redis_url: str = request.getfixturevalue("redis_server").url
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "RHAILAMBDA_CIRCLE_BACKEND": request.param,
        "RHAILAMBDA_LOCAL_WORKERS": "3",
        "RHAILAMBDA_MAX_CONCURRENCY": "3",
        "RHAILAMBDA_BATCH_SIZE": "4",
        "RHAILAMBDA_BLOCK_S": "1",
        "RHAILAMBDA_LOG_LEVEL": "WARNING",
    }
    if request.param == "dynamodb":
        endpoint = request.getfixturevalue("moto_endpoint")
        table = f"circle-e2e-{uuid.uuid4().hex[:8]}"
        create_table(dynamodb_client(endpoint), table)
        env |= DUMMY_AWS_ENV | {"AWS_ENDPOINT_URL": endpoint, "RHAILAMBDA_CIRCLE_TABLE": table}
    shim = subprocess.Popen(
        [sys.executable, "-m", "rhailambda.cli", "shim", "--redis-url", redis_url,
         "--workers", WORKER, "--backend", "local"],
        env=env,
        cwd=ROOT,
    )  # fmt: skip
    client = Client(redis_url)
    try:
        stack = Stack(client, request.param)
        assert stack.ok("40 + 2", context="warmup") == "42"
        yield stack
    finally:
        shim.terminate()
        try:
            shim.wait(timeout=15)
        except subprocess.TimeoutExpired:
            shim.kill()
            shim.wait(timeout=5)
        client.close()


def circle_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_examples_run(stack: Stack) -> None:
    alice = circle_id("alice")
    counter = (ROOT / "examples" / "circle_counter.rhai").read_text()
    assert [stack.ok(counter, context=alice) for _ in range(2)] == ["1", "2"]
    todo = (ROOT / "examples" / "circle_todo.rhai").read_text()
    assert stack.ok(todo, context=alice).startswith("[")
    members = (ROOT / "examples" / "circle_members.rhai").read_text()
    assert '"members": ["bob"]' in stack.ok(members, context=alice)


def test_a_circle_cannot_reach_another(stack: Stack) -> None:
    alice, bob = circle_id("alice"), circle_id("bob")
    stack.ok('db::save("notes", "secret", #{ text: "alice only" })', context=alice)
    probes = [
        'db::get("notes", "secret")',
        'db::list("notes").len()',
        'db::find("notes", "text", "alice only").len()',
        f'db::get("notes", "{alice}:secret")',
        f'db::get("notes", "{{{alice}}}:rec:notes")',
    ]
    for probe in probes:
        assert stack.ok(probe, context=bob) in ("", "0")
    for bad in (f'db::get("{alice}:notes", "secret")', 'db::get("notes}:x", "secret")'):
        reply = stack.run(bad, context=bob)
        assert reply.status == "error" and "invalid collection name" in (reply.error or "")
    # bob calling into alice's circle is a stranger there
    reply = stack.run('db::get("notes", "secret")', context=alice, caller=bob)
    assert "Insufficient authorization" in (reply.error or "")


def test_owner_member_and_stranger(stack: Stack) -> None:
    alice = circle_id("alice")
    stack.ok('db::save("todo", "1", #{ by: CALLER_ID })', context=alice)
    reply = stack.run('db::save("todo", "1", #{ by: CALLER_ID })', context=alice, caller="eve")
    assert reply.status == "error" and "Insufficient authorization" in (reply.error or "")
    reply = stack.run('circle::add_member("eve")', context=alice, caller="eve")
    assert "Insufficient authorization" in (reply.error or "")

    stack.ok('circle::add_member("bob")', context=alice)
    stack.ok('db::save("todo", "2", #{ by: CALLER_ID })', context=alice, caller="bob")
    assert stack.ok('db::list("todo").map(|r| r.by)', context=alice) == '["' + alice + '", "bob"]'
    reply = stack.run('circle::add_member("eve")', context=alice, caller="bob")
    assert "Insufficient authorization" in (reply.error or "")
    assert stack.ok("circle::members()", context=alice) == '["bob"]'


def test_a_failing_script_changes_nothing(stack: Stack) -> None:
    alice = circle_id("alice")
    reply = stack.run(
        'db::save("todo", "1", #{ n: 1 }); circle::add_member("bob"); throw "boom";',
        context=alice,
    )
    assert reply.status == "error" and "boom" in (reply.error or "")
    assert stack.ok('db::get("todo", "1")', context=alice) == ""
    assert stack.ok("circle::members()", context=alice) == "[]"


def test_parallel_increments_all_count(stack: Stack) -> None:
    alice = circle_id("alice")
    script = """
        let c = db::get("counters", "n");
        let n = if c == () { 0 } else { c.count };
        db::save("counters", "n", #{ count: n + 1 });
        n + 1
    """
    task_ids = [
        stack.client.submit(script, worker_id=WORKER, context_id=alice, caller_id=alice)
        for _ in range(100)
    ]
    replies = [stack.client.wait(t, timeout_s=60) for t in task_ids]
    assert [r.error for r in replies if r.status != "completed"] == []
    assert sorted(int(r.output or 0) for r in replies) == list(range(1, 101))
    assert stack.ok('db::get("counters", "n").count', context=alice) == "100"
