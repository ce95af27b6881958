"""PROTOCOL.md by hand against the running local stack (``rhailambda shim`` subprocess).

One shim serves the whole module; every test talks raw Redis commands the way
``redis-cli`` or the Rust dispatcher would, and checks what a client sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis_server import RedisServer

WORKER = "worker1"


@pytest.fixture(scope="module")
def stack() -> Iterator[redis.Redis]:
    with RedisServer() as server:
        env = {**os.environ, "REDIS_URL": server.url, "POWERTOOLS_METRICS_DISABLED": "true"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "rhailambda.cli", "shim", "--worker", WORKER,
             "--backend", "local", "--local-workers", "2", "--block-s", "1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=30)
        try:
            yield client
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
            client.close()
        assert proc.returncode == 0, out[-3000:]


def _hset_task(r: redis.Redis, tid: str, **fields: str) -> None:
    r.hset(f"rhailib:{tid}", mapping=dict[Any, Any](fields))
    r.lpush(f"rhailib:{WORKER}", tid)


def _blpop(r: redis.Redis, task_id: str) -> dict[str, Any]:
    got = r.blpop([f"rhailib:reply:{task_id}"], timeout=20)
    assert got is not None, f"no reply for {task_id}"
    return dict(json.loads(got[1]))


STAMP = "2026-01-01T00:00:00Z"


def test_the_exchange_in_protocol_md_returns_20(stack: redis.Redis) -> None:
    _hset_task(stack, "t1", taskId="t1", script="let x = 10; x * 2", callerId="alice",
               contextId="alice", status="pending", createdAt=STAMP, updatedAt=STAMP)  # fmt: skip
    reply = _blpop(stack, "t1")
    assert (reply["status"], reply["output"], reply["error"]) == ("completed", "20", None)
    assert reply["taskId"] == "t1" and reply["callerId"] == "alice"
    assert not stack.exists("rhailib:t1"), "the task hash is cleaned up"
    assert stack.ttl("rhailib:reply:t1") in (-2, *range(1, 3601))


def test_script_error_reply_has_line_and_column(stack: redis.Redis) -> None:
    _hset_task(stack, "e1", taskId="e1", script="let a = 1;\nlet b = a +;", callerId="a",
               contextId="a", status="pending", createdAt=STAMP, updatedAt=STAMP)  # fmt: skip
    reply = _blpop(stack, "e1")
    assert reply["status"] == "error" and reply["output"] is None
    assert "line 2" in reply["error"] and "position" in reply["error"]


@pytest.mark.parametrize(
    ("task_id", "fields", "needle"),
    [
        ("m1", {"callerId": "a", "contextId": "a", "status": "pending"}, "no 'script'"),
        ("m2", {"script": "", "callerId": "a", "contextId": "a", "status": "pending"}, "empty"),
        ("m3", None, "not found"),
        ("m4", {"colour": "blue", "size": "9"}, "malformed task"),
    ],
)
def test_malformed_tasks_get_an_error_reply_and_the_shim_keeps_serving(
    stack: redis.Redis, task_id: str, fields: dict[str, str] | None, needle: str
) -> None:
    if fields is None:
        stack.lpush(f"rhailib:{WORKER}", task_id)  # an id with no hash at all
    else:
        _hset_task(stack, task_id, **fields)
    reply = _blpop(stack, task_id)
    assert reply["status"] == "error" and needle in reply["error"]
    _hset_task(stack, f"{task_id}-ok", script="1 + 1", callerId="a", contextId="a",
               status="pending")  # fmt: skip
    assert _blpop(stack, f"{task_id}-ok")["output"] == "2"


def test_two_contexts_on_one_queue_see_their_own_context(stack: redis.Redis) -> None:
    for task_id, ctx in (("c1", "circle-one"), ("c2", "circle-two")):
        _hset_task(stack, task_id, script="`${CONTEXT_ID}/${CALLER_ID}`", callerId="bob",
                   contextId=ctx, status="pending")  # fmt: skip
    assert _blpop(stack, "c1")["output"] == "circle-one/bob"
    assert _blpop(stack, "c2")["output"] == "circle-two/bob"


def test_snake_case_fields_from_other_clients_work(stack: redis.Redis) -> None:
    _hset_task(stack, "s1", task_id="s1", script="CALLER_ID + CONTEXT_ID", caller_id="x",
               context_id="y", status="pending", created_at=STAMP)  # fmt: skip
    reply = _blpop(stack, "s1")
    assert (reply["status"], reply["output"]) == ("completed", "xy")
