"""The function's batch runner on a real redis-server and the real compiled engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from support.function_handler import fresh_handler
from support.lambda_context import FakeContext

from rhailambda import protocol as p
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.functions.runner import BatchRunner
from rhailambda.functions.settings import FunctionSettings
from rhailambda.resp import RespClient, from_url
from rhailambda.settings import ProtocolSettings
from rhailambda.taskstore import TaskStore

pytest.importorskip("rhai_py")

LAYOUT = p.KeyLayout()


def _put(r: redis.Redis, task_id: str, script: str | None = "40 + 2", **fields: str) -> None:
    body: dict[Any, Any] = {
        "taskId": task_id,
        "callerId": "alice",
        "contextId": "alice",
        "status": "pending",
        "createdAt": "2026-01-01T00:00:00Z",
        "updatedAt": "2026-01-01T00:00:00Z",
        **fields,
    }
    if script is not None:
        body["script"] = script
    r.hset(LAYOUT.task(task_id), mapping=body)


def _reply(r: redis.Redis, task_id: str) -> dict[str, Any]:
    replies = r.lrange(LAYOUT.reply(task_id), 0, -1)
    assert len(replies) == 1, f"expected exactly one reply for {task_id}, got {replies}"
    return dict(json.loads(replies[0]))


@pytest.fixture
def runner(redis_url: str) -> Iterator[BatchRunner]:
    settings = FunctionSettings(circle_enabled=False)
    with from_url(redis_url) as client:
        yield BatchRunner(settings, TaskStore(client, settings.protocol))


def _run(runner: BatchRunner, *ids: str, attempt: int = 1, budget_s: float = 30) -> dict[str, str]:
    event = InvocationEvent("worker1", tuple(TaskRef(t, attempt) for t in ids))
    return dict(runner.run(event, budget_s).outcomes)


def test_protocol_md_exchange_gives_20(runner: BatchRunner, redis_client: redis.Redis) -> None:
    _put(redis_client, "t1", "let x = 10; x * 2")
    assert _run(runner, "t1") == {"t1": "completed"}
    reply = _reply(redis_client, "t1")
    assert (reply["status"], reply["output"], reply["error"]) == ("completed", "20", None)
    assert reply["taskId"] == "t1" and reply["workerId"] == "worker1"
    assert not redis_client.exists(LAYOUT.task("t1")), "the hash is deleted after the reply"
    assert 0 < redis_client.ttl(LAYOUT.reply("t1")) <= 3600


@pytest.mark.parametrize(
    ("script", "output"),
    [('"hello"', "hello"), ("()", ""), ("[1, 2]", "[1, 2]"), ("true", "true"), ("1.5", "1.5")],
)
def test_output_is_rendered_as_rhai_displays_it(
    runner: BatchRunner, redis_client: redis.Redis, script: str, output: str
) -> None:
    _put(redis_client, "t1", script)
    _run(runner, "t1")
    assert _reply(redis_client, "t1")["output"] == output


def test_script_sees_its_ids(runner: BatchRunner, redis_client: redis.Redis) -> None:
    _put(
        redis_client,
        "t7",
        "`${CALLER_ID}|${CONTEXT_ID}|${WORKER_ID}|${TASK_ID}`",
        callerId="bob",
        contextId="circle9",
    )
    _run(runner, "t7")
    assert _reply(redis_client, "t7")["output"] == "bob|circle9|worker1|t7"


def test_runtime_error_has_line_and_column(runner: BatchRunner, redis_client: redis.Redis) -> None:
    _put(redis_client, "t1", "let x = 1;\nx + nope")
    assert _run(runner, "t1") == {"t1": "error"}
    reply = _reply(redis_client, "t1")
    assert reply["status"] == "error" and reply["output"] is None
    assert "nope" in reply["error"] and "line 2" in reply["error"]


def test_syntax_error_has_line_and_column(runner: BatchRunner, redis_client: redis.Redis) -> None:
    _put(redis_client, "t1", "let x = ;")
    _run(runner, "t1")
    error = _reply(redis_client, "t1")["error"]
    assert error.startswith("syntax error") and "line 1" in error


@pytest.mark.parametrize(
    ("script", "extra", "needle"),
    [(None, {}, "no 'script'"), ("   ", {}, "empty"), ("1", {"contextId": ""}, "contextId")],
)
def test_malformed_tasks_get_an_error_reply(
    runner: BatchRunner,
    redis_client: redis.Redis,
    script: str | None,
    extra: dict[str, str],
    needle: str,
) -> None:
    _put(redis_client, "bad", script, **extra)
    _put(redis_client, "good", "1 + 1")
    assert _run(runner, "bad", "good") == {"bad": "error", "good": "completed"}
    assert needle in _reply(redis_client, "bad")["error"]
    assert _reply(redis_client, "good")["output"] == "2"


def test_unknown_field_set_gets_an_error_reply(
    runner: BatchRunner, redis_client: redis.Redis
) -> None:
    redis_client.hset(LAYOUT.task("odd"), mapping={"foo": "bar", "baz": "1"})
    assert _run(runner, "odd") == {"odd": "error"}
    assert "malformed task" in _reply(redis_client, "odd")["error"]


def test_missing_hash_gets_an_error_reply(runner: BatchRunner, redis_client: redis.Redis) -> None:
    assert _run(runner, "ghost") == {"ghost": "error"}
    assert "not found" in _reply(redis_client, "ghost")["error"]


def test_duplicate_delivery_runs_once_and_replies_once(
    runner: BatchRunner, redis_client: redis.Redis
) -> None:
    _put(redis_client, "t1", "40 + 2")
    assert _run(runner, "t1", "t1") == {"t1": "completed"}
    assert _run(runner, "t1") == {"t1": "skipped"}
    assert _reply(redis_client, "t1")["output"] == "42"


def test_hostile_script_hits_a_limit(runner: BatchRunner, redis_client: redis.Redis) -> None:
    _put(redis_client, "loop", "loop {}")
    _put(redis_client, "next", "1")
    assert _run(runner, "loop", "next", budget_s=2.0) == {"loop": "error", "next": "completed"}
    assert "limit" in _reply(redis_client, "loop")["error"]


def test_no_budget_left_hands_tasks_back(runner: BatchRunner, redis_client: redis.Redis) -> None:
    _put(redis_client, "t1")
    assert _run(runner, "t1", budget_s=0.1) == {"t1": "failed"}
    assert redis_client.llen(LAYOUT.reply("t1")) == 0
    assert _run(runner, "t1", attempt=2) == {"t1": "completed"}, "the next delivery may claim it"


def test_two_contexts_on_one_queue(runner: BatchRunner, redis_client: redis.Redis) -> None:
    _put(redis_client, "a", "CONTEXT_ID", contextId="circle-a")
    _put(redis_client, "b", "CONTEXT_ID", contextId="circle-b")
    _run(runner, "a", "b")
    assert _reply(redis_client, "a")["output"] == "circle-a"
    assert _reply(redis_client, "b")["output"] == "circle-b"


def test_preserve_tasks_keeps_the_hash(resp_client: RespClient, redis_client: redis.Redis) -> None:
    settings = FunctionSettings(
        circle_enabled=False, protocol=ProtocolSettings(preserve_tasks=True)
    )
    runner = BatchRunner(settings, TaskStore(resp_client, settings.protocol))
    _put(redis_client, "t1", "6 * 7")
    _run(runner, "t1")
    task = redis_client.hgetall(LAYOUT.task("t1"))
    assert (task["status"], task["output"]) == ("completed", "42")


def test_lambda_handler_end_to_end(
    redis_url: str,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RHAILAMBDA_CIRCLE_ENABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "rhailambda-test")
    _put(redis_client, "t1", "let x = 10; x * 2")
    _put(redis_client, "t2", "let x = 10; x * ")
    with fresh_handler() as handler_module:
        response = handler_module.handler(
            {"workerId": "worker1", "tasks": [{"taskId": "t1", "attempt": 1}, "t2"]}, FakeContext()
        )
    assert response == {"batchItemFailures": [], "outcomes": {"t1": "completed", "t2": "error"}}
    assert _reply(redis_client, "t1")["output"] == "20"
    emf = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "rhailambda-test"


def test_print_and_debug_reach_the_hooks_with_their_task(
    resp_client: RespClient, redis_client: redis.Redis
) -> None:
    printed: list[tuple[str, str, str]] = []
    debugged: list[tuple[str, str, int | None]] = []
    settings = FunctionSettings(circle_enabled=False)
    runner = BatchRunner(
        settings,
        TaskStore(resp_client, settings.protocol),
        on_print=lambda ctx, text: printed.append((ctx.task_id, ctx.context_id, text)),
        on_debug=lambda ctx, text, src, line, col: debugged.append((ctx.task_id, text, line)),
    )
    _put(redis_client, "p1", 'print("hello"); 1', contextId="circle-a")
    _put(redis_client, "p2", 'let x = 2;\ndebug("dbg"); x', contextId="circle-b")
    _run(runner, "p1", "p2")
    assert printed == [("p1", "circle-a", "hello")]
    assert len(debugged) == 1 and debugged[0][0] == "p2" and "dbg" in debugged[0][1]
    assert debugged[0][2] == 2
    assert _reply(redis_client, "p2")["output"] == "2"


def test_oversized_script_gets_an_error_reply(
    resp_client: RespClient, redis_client: redis.Redis
) -> None:
    settings = FunctionSettings(circle_enabled=False, max_script_bytes=1000)
    runner = BatchRunner(settings, TaskStore(resp_client, settings.protocol))
    _put(redis_client, "big", "1 + " * 400 + "1")
    _put(redis_client, "large-but-fine", "// " + "x" * 20_000 + "\n6 * 7")
    settings_ok = FunctionSettings(circle_enabled=False)
    assert _run(runner, "big") == {"big": "error"}
    assert "script too large" in _reply(redis_client, "big")["error"]
    ok_runner = BatchRunner(settings_ok, TaskStore(resp_client, settings_ok.protocol))
    assert _run(ok_runner, "large-but-fine") == {"large-but-fine": "completed"}
    assert _reply(redis_client, "large-but-fine")["output"] == "42"


def test_unknown_status_is_a_malformed_task(runner: BatchRunner, redis_client: redis.Redis) -> None:
    _put(redis_client, "odd", "1 + 1", status="cancelled")
    assert _run(runner, "odd") == {"odd": "error"}
    assert "unknown status 'cancelled'" in _reply(redis_client, "odd")["error"]
