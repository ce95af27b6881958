"""A task whose circle writes were committed is never applied twice, whatever dies when.

The function's batch runner on a real redis-server (tasks) with the circle data in
memory, Redis or DynamoDB (moto). An invocation "dies" between committing a
script's writes and finishing its task; the shim then delivers the task again under
a higher attempt number.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
import redis
from support.aws_emulator import create_table, dynamodb_client

from rhailambda import protocol as p
from rhailambda.circle import CircleExtension, CircleSession
from rhailambda.circle.dynamo_store import DynamoCircleStore
from rhailambda.circle.memory_store import MemoryCircleStore
from rhailambda.circle.redis_store import RedisCircleStore
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.extension import Extension, Receipt, ScriptContext, task_fingerprint
from rhailambda.functions.runner import BatchRunner, TaskResult
from rhailambda.functions.settings import FunctionSettings
from rhailambda.resp import RespClient, from_url
from rhailambda.taskstore import Finish, TaskStore

pytest.importorskip("rhai_py")

LAYOUT = p.KeyLayout()
SETTINGS = FunctionSettings(circle_enabled=False)  # extensions are passed in
INCREMENT = """
    let c = db::get("counters", "n");
    let n = if c == () { 0 } else { c.count };
    db::save("counters", "n", #{ count: n + 1 });
    `count ${n + 1}`
"""
HELD_INCREMENT = INCREMENT.replace("db::save", "gate::hold();\n    db::save")


class Killed(Exception):
    """The invocation died here (SIGKILL, a timeout): nothing after it happens."""


class DiesBeforeFinish(TaskStore):
    def finish(self, finishes: Sequence[Finish]) -> list[int]:
        raise Killed


class _GateSession:
    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    def modules(self) -> Mapping[str, Mapping[str, Callable[..., Any]]]:
        return {"gate": {"hold": self._gate.hold}}

    def commit(self) -> None:
        pass

    def discard(self) -> None:
        pass


class Gate:
    """``gate::hold()``: the first call blocks until the test releases it."""

    name = "gate"

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    def hold(self) -> None:
        if not self.reached.is_set():
            self.reached.set()
            assert self.release.wait(timeout=20), "the test never released the gate"

    def open(self, ctx: ScriptContext) -> _GateSession:
        return _GateSession(self)


@pytest.fixture(params=["memory", "redis", "dynamodb"])
def circle(request: pytest.FixtureRequest) -> Iterator[CircleExtension]:
    if request.param == "memory":
        yield CircleExtension(MemoryCircleStore())
    elif request.param == "redis":
        client = from_url(request.getfixturevalue("redis_url"))
        yield CircleExtension(RedisCircleStore(client))
        client.close()
    else:
        dynamo = dynamodb_client(request.getfixturevalue("moto_endpoint"))
        table = f"circle-{uuid.uuid4().hex[:12]}"
        create_table(dynamo, table)
        yield CircleExtension(DynamoCircleStore(dynamo, table))


@pytest.fixture
def tasks(resp_client: RespClient) -> TaskStore:
    return TaskStore(resp_client, SETTINGS.protocol)


def _put(
    r: redis.Redis, task_id: str, script: str, context: str = "alice", status: str = "pending"
) -> None:
    r.hset(
        LAYOUT.task(task_id),
        mapping={
            "taskId": task_id,
            "script": script,
            "callerId": context,
            "contextId": context,
            "status": status,
            "createdAt": f"2026-01-01T00:00:00.{task_id}",
            "updatedAt": "2026-01-01T00:00:00Z",
        },
    )


def _replies(r: redis.Redis, task_id: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.lrange(LAYOUT.reply(task_id), 0, -1)]


def _run(
    runner: BatchRunner, *ids: str, attempt: int, results: list[TaskResult] | None = None
) -> dict[str, str]:
    class Observer:
        def task_done(self, result: TaskResult) -> None:
            if results is not None:
                results.append(result)

    event = InvocationEvent("worker1", tuple(TaskRef(t, attempt) for t in ids))
    return dict(runner.run(event, 30.0, Observer()).outcomes)


def _count(circle: CircleExtension, context: str = "alice") -> int | None:
    record = CircleSession(
        circle.store, ScriptContext(context, context, "w", "probe"), circle.limits
    )
    found = record.get("counters", "n")
    return None if found is None else int(found["count"])


def test_a_task_run_again_after_a_crash_applies_its_writes_once(
    circle: CircleExtension, tasks: TaskStore, resp_client: RespClient, redis_client: redis.Redis
) -> None:
    _put(redis_client, "t1", INCREMENT)
    dying = BatchRunner(SETTINGS, DiesBeforeFinish(resp_client, SETTINGS.protocol), [circle])
    with pytest.raises(Killed):
        _run(dying, "t1", attempt=1)
    assert _count(circle) == 1 and _replies(redis_client, "t1") == []

    results: list[TaskResult] = []
    runner = BatchRunner(SETTINGS, tasks, [circle])
    assert _run(runner, "t1", attempt=2, results=results) == {"t1": "completed"}
    assert _count(circle) == 1, "the writes of attempt 1 were applied again"
    [reply] = _replies(redis_client, "t1")
    assert (reply["status"], reply["output"]) == ("completed", "count 1")
    assert results[0].runs == 0, "the script ran again"
    assert _run(runner, "t1", attempt=3) == {"t1": "skipped"}
    assert len(_replies(redis_client, "t1")) == 1


@pytest.fixture
def circle_client(redis_url: str) -> Iterator[RespClient]:
    """A client of the circle store's own (the task store has the session's)."""
    with from_url(redis_url) as client:
        yield client


def test_only_deliveries_after_the_first_look_for_receipts_once_per_batch(
    circle_client: RespClient, tasks: TaskStore, redis_client: redis.Redis
) -> None:
    round_trips: list[int] = []
    real_round_trip = circle_client.round_trip

    def counted(*args: Any, **kwargs: Any) -> list[Any]:
        round_trips.append(1)
        return real_round_trip(*args, **kwargs)

    circle_client.round_trip = counted  # type: ignore[method-assign]
    runner = BatchRunner(SETTINGS, tasks, [CircleExtension(RedisCircleStore(circle_client))])
    for i in range(3):
        _put(redis_client, f"a{i}", "40 + 2", context=f"circle-{i}")
        # claimed before by a delivery that died: only such a task may have a receipt
        _put(redis_client, f"b{i}", "40 + 2", context=f"circle-{i}", status="processing")
    assert set(_run(runner, "a0", "a1", "a2", attempt=1).values()) == {"completed"}
    assert round_trips == [], "a first delivery pays nothing for receipts"
    assert set(_run(runner, "b0", "b1", "b2", attempt=2).values()) == {"completed"}
    assert round_trips == [1], "one pipeline for the whole batch"


def test_a_failing_receipt_lookup_hands_the_tasks_back(
    circle: CircleExtension, tasks: TaskStore, redis_client: redis.Redis
) -> None:
    class Down:
        name = "circle"

        def open(self, ctx: ScriptContext) -> CircleSession:
            return circle.open(ctx)

        def recall(self, tasks: Sequence[ScriptContext]) -> list[Receipt | None]:
            raise ConnectionError("store down")

    down: Extension = Down()
    _put(redis_client, "t1", INCREMENT, status="processing")  # claimed before
    assert _run(BatchRunner(SETTINGS, tasks, [down]), "t1", attempt=2) == {"t1": "failed"}
    assert _count(circle) is None and _replies(redis_client, "t1") == []
    assert _run(BatchRunner(SETTINGS, tasks, [circle]), "t1", attempt=3) == {"t1": "completed"}
    assert _count(circle) == 1


def _in_thread(work: Callable[[], dict[str, str]]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # re-raised by the test
            out.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, out


def test_overlapping_deliveries_of_one_task_apply_its_writes_once(
    circle: CircleExtension, tasks: TaskStore, redis_client: redis.Redis
) -> None:
    """Attempt 1 is still running (its shim was reaped) when attempt 2 runs and commits."""
    gate = Gate()
    runner = BatchRunner(SETTINGS, tasks, [circle, gate])
    _put(redis_client, "t1", HELD_INCREMENT)
    thread, out = _in_thread(lambda: _run(runner, "t1", attempt=1))
    assert gate.reached.wait(timeout=20)  # attempt 1 has read the counter (0)
    assert _run(runner, "t1", attempt=2) == {"t1": "completed"}
    gate.release.set()
    thread.join(timeout=20)
    assert out == [{"t1": "skipped"}], out  # its commit found attempt 2's receipt
    assert _count(circle) == 1
    [reply] = _replies(redis_client, "t1")
    assert reply["output"] == "count 1"


def test_a_conflict_inside_one_invocation_still_runs_the_script_again(
    circle: CircleExtension, tasks: TaskStore, redis_client: redis.Redis
) -> None:
    gate = Gate()
    runner = BatchRunner(SETTINGS, tasks, [circle, gate])
    _put(redis_client, "x", HELD_INCREMENT)
    _put(redis_client, "y", INCREMENT)
    results: list[TaskResult] = []
    thread, out = _in_thread(lambda: _run(runner, "x", attempt=1, results=results))
    assert gate.reached.wait(timeout=20)  # x has read the counter (0)
    assert _run(runner, "y", attempt=1) == {"y": "completed"}
    gate.release.set()
    thread.join(timeout=20)
    assert out == [{"x": "completed"}], out
    assert results[0].runs == 2, "x lost the race once and ran again"
    assert _count(circle) == 2
    assert [_replies(redis_client, t)[0]["output"] for t in ("y", "x")] == ["count 1", "count 2"]
    created = redis_client.hget(LAYOUT.task("x"), "createdAt")
    assert created is None  # finished: the hash is gone, the receipt stays
    assert circle.recall([ScriptContext("alice", "alice", "worker1", "x")]) == [
        Receipt(
            "x",
            "count 2",
            1,
            task_fingerprint(HELD_INCREMENT, "alice", "alice", "2026-01-01T00:00:00.x"),
        )
    ]


def test_a_task_id_reused_with_the_same_created_at_runs_as_a_new_task(
    circle: CircleExtension, tasks: TaskStore, redis_client: redis.Redis
) -> None:
    """The README's hand example: ``HSET rhailib:t1 ... createdAt <fixed>`` again and again."""
    runner = BatchRunner(SETTINGS, tasks, [circle])
    outputs = []
    for _ in range(3):
        _put(redis_client, "t1", INCREMENT)  # the same script, caller, context and createdAt
        assert _run(runner, "t1", attempt=1) == {"t1": "completed"}
        outputs.append(_replies(redis_client, "t1")[0]["output"])
        redis_client.delete(LAYOUT.reply("t1"), LAYOUT.done("t1"))  # the client read it
    assert outputs == ["count 1", "count 2", "count 3"]
    assert _count(circle) == 3
    other = 'db::save("notes", "a", #{ text: "saved" }); "other"'
    _put(redis_client, "t1", other)  # a different script under the same id
    assert _run(runner, "t1", attempt=1) == {"t1": "completed"}
    assert _replies(redis_client, "t1")[0]["output"] == "other"
    probe = CircleSession(circle.store, ScriptContext("alice", "alice", "w", "p"), circle.limits)
    assert probe.get("notes", "a") == {"text": "saved"}


def test_a_reused_id_redelivered_before_it_ran_still_runs(
    circle: CircleExtension, tasks: TaskStore, redis_client: redis.Redis
) -> None:
    """Attempt 2 of a fresh task (the first delivery died before its claim): not a replay."""
    runner = BatchRunner(SETTINGS, tasks, [circle])
    _put(redis_client, "t1", INCREMENT)
    assert _run(runner, "t1", attempt=1) == {"t1": "completed"}
    redis_client.delete(LAYOUT.reply("t1"), LAYOUT.done("t1"))
    _put(redis_client, "t1", INCREMENT)
    assert _run(runner, "t1", attempt=2) == {"t1": "completed"}
    assert _replies(redis_client, "t1")[0]["output"] == "count 2"
    assert _count(circle) == 2
