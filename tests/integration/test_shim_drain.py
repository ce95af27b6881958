"""The drain loop against a real Redis, with an in-memory invoker."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from support.shim_doubles import FakeInvoker, seed_tasks, wait_until

from rhailambda.errors import InvocationError, PayloadTooLargeError, ThrottledError
from rhailambda.event import BatchResponse, InvocationEvent, Outcome
from rhailambda.protocol import ATTEMPT, KeyLayout
from rhailambda.settings import ProtocolSettings, RedisSettings
from rhailambda.shim.app import serve
from rhailambda.shim.settings import (
    BatchSettings,
    FlowSettings,
    QueueSettings,
    RetrySettings,
    ShimSettings,
)

L = KeyLayout()


def make_settings(url: str, workers: tuple[str, ...] = ("w1",), **groups: Any) -> ShimSettings:
    base = ShimSettings(
        redis=RedisSettings(url),
        protocol=ProtocolSettings(),
        queues=QueueSettings(worker_ids=workers, shim_id="s1", lease_s=3.0, block_s=0.5),
        flow=FlowSettings(max_concurrency=2, per_queue_concurrency=2, shutdown_timeout_s=5),
        retry=RetrySettings(max_attempts=3, backoff_base_s=0.01, backoff_cap_s=0.05),
    )
    return dataclasses.replace(base, **groups)


async def run_shim(
    settings: ShimSettings,
    invoker: FakeInvoker,
    until: Callable[[], Any],
    *,
    timeout_s: float = 20,
    during: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve until ``until()`` holds (or fail at the deadline), then stop gracefully."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, invoker, stop=stop))
    try:
        if during is not None:
            await during()
        await wait_until(until, timeout_s=timeout_s, what="the scenario's condition")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def test_takes_oldest_first_and_acks(redis_client: redis.Redis, redis_url: str) -> None:
    tasks = ids("t", 25)
    seed_tasks(redis_client, L, "w1", tasks)
    invoker = FakeInvoker()
    settings = make_settings(redis_url, flow=FlowSettings(1, 1, 5))
    asyncio.run(run_shim(settings, invoker, lambda: len(invoker.task_ids) == 25))
    assert invoker.task_ids == tasks
    assert [len(e.tasks) for e in invoker.events] == [10, 10, 5]
    assert all(t.attempt == 1 for e in invoker.events for t in e.tasks)
    assert redis_client.llen(L.queue("w1")) == 0
    assert redis_client.llen(L.inflight("w1", "s1")) == 0
    assert redis_client.hget(L.task("t00000"), ATTEMPT) == "1"


def test_final_tasks_are_not_delivered_and_missing_hashes_are(
    redis_client: redis.Redis, redis_url: str
) -> None:
    seed_tasks(redis_client, L, "w1", ["done1", "live1"])
    redis_client.hset(L.task("done1"), "status", "completed")
    redis_client.lpush(L.queue("w1"), "nohash")
    invoker = FakeInvoker()
    asyncio.run(run_shim(make_settings(redis_url), invoker, lambda: len(invoker.task_ids) == 2))
    assert sorted(invoker.task_ids) == ["live1", "nohash"]
    assert not redis_client.exists(L.task("nohash"))  # no hash is ever created
    assert redis_client.llen(L.inflight("w1", "s1")) == 0


def test_single_task_on_idle_queue_skips_the_window(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """A 60 s window: were it applied to the lone task, the 20 s deadline would pass."""
    invoker = FakeInvoker()
    settings = make_settings(redis_url, batch=BatchSettings(batch_size=10, window_ms=60_000))

    async def submit() -> None:
        await wait_until(lambda: redis_client.zscore(L.shims(), "s1"), timeout_s=5)
        seed_tasks(redis_client, L, "w1", ["lonely"])

    asyncio.run(run_shim(settings, invoker, lambda: invoker.task_ids, during=submit))
    assert invoker.task_ids == ["lonely"]


def test_window_fills_batches_on_a_busy_queue(redis_client: redis.Redis, redis_url: str) -> None:
    """Ids arriving one by one while a busy queue's window is open go out as one batch.

    Each id is submitted once the previous one is read ahead (a condition, not a pace):
    only a window lapsing before nine reads of a few ms each could split the batch."""
    invoker = FakeInvoker()
    settings = make_settings(
        redis_url, batch=BatchSettings(batch_size=10, window_ms=2000), flow=FlowSettings(1, 1, 5)
    )

    async def trickle() -> None:
        await wait_until(lambda: redis_client.zscore(L.shims(), "s1"), timeout_s=5)
        seed_tasks(redis_client, L, "w1", ["tr000"])  # an idle queue: goes alone, at once
        await wait_until(lambda: invoker.events, timeout_s=5, what="the first batch")
        for i in range(1, 10):  # the queue is busy now: the window holds these
            seed_tasks(redis_client, L, "w1", [f"tr{i:03d}"])
            await wait_until(
                lambda: not redis_client.llen(L.queue("w1")), timeout_s=5, what="the read-ahead"
            )

    asyncio.run(run_shim(settings, invoker, lambda: len(invoker.task_ids) == 10, during=trickle))
    assert [len(e.tasks) for e in invoker.events] == [1, 9]
    assert invoker.task_ids == [f"tr{i:03d}" for i in range(10)]


def test_fair_across_queues_and_per_queue_cap(redis_client: redis.Redis, redis_url: str) -> None:
    seed_tasks(redis_client, L, "big", ids("a", 2000))
    seed_tasks(redis_client, L, "small", ids("b", 10))

    async def slow(event: InvocationEvent) -> BatchResponse:
        await asyncio.sleep(0.005)
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    invoker = FakeInvoker(slow)
    settings = make_settings(
        redis_url, ("big", "small"), flow=FlowSettings(max_concurrency=2, per_queue_concurrency=1)
    )
    small_done = lambda: sum(t.startswith("b") for t in invoker.task_ids) == 10  # noqa: E731
    big_started = lambda: any(t.startswith("a") for t in invoker.task_ids)  # noqa: E731
    # small's 10 may all go before big's first batch (a small read into an empty window
    # is delivered at once): wait for both, so big's cap is seen at work
    asyncio.run(run_shim(settings, invoker, lambda: small_done() and big_started()))
    big_seen = sum(t.startswith("a") for t in invoker.task_ids)
    assert big_seen < 200, big_seen  # small's 10 went through while big was mostly queued
    assert invoker.max_by_worker["big"] == 1
    assert invoker.max_running <= 2


def test_throttling_does_not_spend_attempts(redis_client: redis.Redis, redis_url: str) -> None:
    seed_tasks(redis_client, L, "w1", ["th1"])
    calls: list[int] = []

    async def throttled_thrice(event: InvocationEvent) -> BatchResponse:
        calls.append(event.tasks[0].attempt)
        if len(calls) <= 3:
            raise ThrottledError("TooManyRequestsException", retry_after_s=0.02)
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    invoker = FakeInvoker(throttled_thrice)
    asyncio.run(run_shim(make_settings(redis_url), invoker, lambda: len(calls) == 4))
    assert calls == [1, 1, 1, 1]
    assert redis_client.hget(L.task("th1"), ATTEMPT) == "1"
    assert redis_client.llen(L.inflight("w1", "s1")) == 0


def test_dead_letters_after_max_attempts(redis_client: redis.Redis, redis_url: str) -> None:
    seed_tasks(redis_client, L, "w1", ["bad1", "good1"])

    async def fail_bad(event: InvocationEvent) -> BatchResponse:
        if any(t.task_id == "bad1" for t in event.tasks):
            raise InvocationError("Unhandled: the worker crashed")
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    invoker = FakeInvoker(fail_bad)
    settings = make_settings(redis_url, batch=BatchSettings(batch_size=1))
    asyncio.run(run_shim(settings, invoker, lambda: redis_client.llen(L.reply("bad1"))))
    reply = redis_client.lrange(L.reply("bad1"), 0, -1)
    assert len(reply) == 1
    assert '"status":"error"' in reply[0]
    assert "dead-lettered after 3 attempts: Unhandled: the worker crashed" in reply[0]
    assert redis_client.lrange(L.dead_letter("w1"), 0, -1) == ["bad1"]
    assert [t.attempt for e in invoker.events for t in e.tasks if t.task_id == "bad1"] == [1, 2, 3]
    assert redis_client.llen(L.inflight("w1", "s1")) == 0


def test_batch_item_failures_are_retried_alone(redis_client: redis.Redis, redis_url: str) -> None:
    seed_tasks(redis_client, L, "w1", ["ok1", "flaky1", "ok2"])

    async def flaky(event: InvocationEvent) -> BatchResponse:
        out: dict[str, Any] = {t.task_id: "completed" for t in event.tasks}
        for t in event.tasks:
            if t.task_id == "flaky1" and t.attempt == 1:
                out[t.task_id] = "failed"
        return BatchResponse(out)

    invoker = FakeInvoker(flaky)
    asyncio.run(run_shim(make_settings(redis_url), invoker, lambda: len(invoker.events) == 2))
    assert [[(t.task_id, t.attempt) for t in e.tasks] for e in invoker.events] == [
        [("ok1", 1), ("flaky1", 1), ("ok2", 1)],
        [("flaky1", 2)],
    ]


def test_retry_does_not_wait_behind_an_idle_queue_reader(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """Per-queue concurrency 1 and a 60 s BLMOVE: the retry still goes out right away."""
    seed_tasks(redis_client, L, "w1", ["flaky1"])

    async def flaky(event: InvocationEvent) -> BatchResponse:
        first = all(t.attempt == 1 for t in event.tasks)
        return BatchResponse({t.task_id: "failed" if first else "completed" for t in event.tasks})

    invoker = FakeInvoker(flaky)
    settings = make_settings(redis_url, flow=FlowSettings(1, 1, 5))
    settings = dataclasses.replace(
        settings, queues=dataclasses.replace(settings.queues, block_s=60.0)
    )  # a retry that waited for the blocked reader would miss the 20 s deadline
    asyncio.run(run_shim(settings, invoker, lambda: len(invoker.events) == 2))
    assert [[(t.task_id, t.attempt) for t in e.tasks] for e in invoker.events] == [
        [("flaky1", 1)],
        [("flaky1", 2)],
    ]


def test_non_retryable_error_dead_letters_at_once(
    redis_client: redis.Redis, redis_url: str
) -> None:
    seed_tasks(redis_client, L, "w1", ["huge1"])

    async def too_large(event: InvocationEvent) -> BatchResponse:
        raise PayloadTooLargeError("response exceeds 6 MB")

    invoker = FakeInvoker(too_large)
    asyncio.run(
        run_shim(make_settings(redis_url), invoker, lambda: redis_client.llen(L.reply("huge1")))
    )
    assert len(invoker.events) == 1
    assert "not retryable" in str(redis_client.lindex(L.reply("huge1"), 0))
    assert redis_client.lrange(L.dead_letter("w1"), 0, -1) == ["huge1"]


def test_too_old_tasks_are_dead_lettered_unrun(redis_client: redis.Redis, redis_url: str) -> None:
    seed_tasks(redis_client, L, "w1", ["old1"], created_at="2020-01-01T00:00:00Z")
    invoker = FakeInvoker()
    settings = make_settings(
        redis_url, retry=RetrySettings(max_attempts=3, max_task_age_s=60, backoff_base_s=0.01)
    )
    asyncio.run(run_shim(settings, invoker, lambda: redis_client.llen(L.reply("old1"))))
    assert invoker.events == []
    assert "older than the maximum task age 60 s" in str(redis_client.lindex(L.reply("old1"), 0))


def test_pause_and_resume(redis_client: redis.Redis, redis_url: str) -> None:
    redis_client.set(L.paused("w1"), "1")
    seed_tasks(redis_client, L, "w1", ids("p", 5))
    invoker = FakeInvoker()
    settings = make_settings(redis_url)
    settings = dataclasses.replace(
        settings, queues=dataclasses.replace(settings.queues, pause_poll_s=0.05)
    )

    async def pause_then_resume() -> None:
        await wait_until(lambda: redis_client.zscore(L.shims(), "s1"), timeout_s=5)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # paused: nothing may be taken meanwhile
            assert invoker.events == []
            assert redis_client.llen(L.queue("w1")) == 5
            await asyncio.sleep(0.05)
        redis_client.delete(L.paused("w1"))

    asyncio.run(
        run_shim(settings, invoker, lambda: len(invoker.task_ids) == 5, during=pause_then_resume)
    )


@pytest.mark.parametrize("finish_in_time", [True, False])
def test_graceful_shutdown(redis_client: redis.Redis, redis_url: str, finish_in_time: bool) -> None:
    tasks = ids("g", 8)
    seed_tasks(redis_client, L, "w1", tasks)
    release = asyncio.Event()

    async def blocked(event: InvocationEvent) -> BatchResponse:
        await release.wait()
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    invoker = FakeInvoker(blocked)
    settings = make_settings(
        redis_url, batch=BatchSettings(batch_size=2), flow=FlowSettings(2, 2, 0.3)
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, invoker, stop=stop))
        await wait_until(lambda: invoker.running == 2, timeout_s=5)
        stop.set()
        if finish_in_time:
            release.set()
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(scenario())
    queue = redis_client.lrange(L.queue("w1"), 0, -1)
    assert redis_client.llen(L.inflight("w1", "s1")) == 0
    assert redis_client.zscore(L.shims(), "s1") is None
    if finish_in_time:
        assert queue == tasks[4:][::-1]  # the 4 in flight finished; the rest never taken
    else:
        assert queue == tasks[::-1]  # all handed back, still oldest first


def test_reaper_recovers_a_dead_shims_inflight(redis_client: redis.Redis, redis_url: str) -> None:
    seed_tasks(redis_client, L, "w1", ids("r", 4))
    # A dead shim had taken r00000..r00002 (oldest first) and died; r00003 still queued.
    for _ in range(3):
        redis_client.lmove(L.queue("w1"), L.inflight("w1", "dead"), "RIGHT", "LEFT")
    redis_client.zadd(L.shims(), {"dead": 1})
    redis_client.hset(L.shim_info("dead"), "workers", "w1")
    invoker = FakeInvoker()
    settings = make_settings(redis_url, flow=FlowSettings(1, 1, 5))
    asyncio.run(run_shim(settings, invoker, lambda: len(invoker.task_ids) == 4))
    assert invoker.task_ids == ids("r", 4)  # back at the front, still oldest first
    assert not redis_client.exists(L.inflight("w1", "dead"))
    assert redis_client.zscore(L.shims(), "dead") is None
    assert not redis_client.exists(L.shim_info("dead"))


def test_restart_with_same_id_recovers_at_once(redis_client: redis.Redis, redis_url: str) -> None:
    seed_tasks(redis_client, L, "w1", ids("x", 3))
    for _ in range(3):
        redis_client.lmove(L.queue("w1"), L.inflight("w1", "s1"), "RIGHT", "LEFT")
    far = int(time.time() * 1000) + 3_600_000
    redis_client.zadd(L.shims(), {"s1": far})  # its lease has an hour left
    invoker = FakeInvoker()
    # Waiting for the old lease to lapse would take an hour: run_shim's deadline is 20 s.
    asyncio.run(run_shim(make_settings(redis_url), invoker, lambda: len(invoker.task_ids) == 3))
    assert sorted(invoker.task_ids) == ids("x", 3)


def test_live_shims_are_not_reaped(redis_client: redis.Redis, redis_url: str) -> None:
    seed_tasks(redis_client, L, "w1", ["mine"])
    redis_client.lmove(L.queue("w1"), L.inflight("w1", "other"), "RIGHT", "LEFT")
    redis_client.zadd(L.shims(), {"other": int(time.time() * 1000) + 60_000})
    seed_tasks(redis_client, L, "w1", ["fresh"])
    invoker = FakeInvoker()
    asyncio.run(run_shim(make_settings(redis_url), invoker, lambda: invoker.task_ids == ["fresh"]))
    assert redis_client.lrange(L.inflight("w1", "other"), 0, -1) == ["mine"]


def test_a_task_the_function_rejects_is_dead_lettered_with_its_reason(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """E.g. its reply key holds a hash: no retry can answer it; its neighbours are done."""
    seed_tasks(redis_client, L, "w1", ["ok1", "bad", "ok2"])

    async def reject_bad(event: InvocationEvent) -> BatchResponse:
        outcomes: dict[str, Outcome] = {t.task_id: "completed" for t in event.tasks}
        outcomes["bad"] = "rejected"
        return BatchResponse(outcomes, {"bad": "the reply key is not a list"})

    invoker = FakeInvoker(reject_bad)

    def settled() -> bool:
        return redis_client.llen(L.dead_letter("w1")) == 1 and not redis_client.llen(
            L.inflight("w1", "s1")
        )

    asyncio.run(run_shim(make_settings(redis_url), invoker, settled))
    assert redis_client.lrange(L.dead_letter("w1"), 0, -1) == ["bad"]
    assert invoker.task_ids.count("bad") == 1, "not retried"
    assert redis_client.llen(L.queue("w1")) == 0, "ok1 and ok2 acknowledged, not handed back"


def test_a_queue_key_of_the_wrong_type_is_logged_once_and_spares_other_queues(
    redis_client: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.hset(L.queue("w1"), "someone", "wrote a hash here")
    seed_tasks(redis_client, L, "w2", ids("b", 3))
    invoker = FakeInvoker()
    settings = make_settings(redis_url, workers=("w1", "w2"))

    start = time.monotonic()

    def done() -> bool:  # w1's taker retries meanwhile (0.05 s, doubling): 4 refusals
        return len(invoker.task_ids) == 3 and time.monotonic() - start > 0.8

    with caplog.at_level(logging.ERROR, logger="rhailambda.shim"):
        asyncio.run(run_shim(settings, invoker, done))
    refusals = [r for r in caplog.records if "w1" in r.getMessage()]
    assert len(refusals) == 1 and "WRONGTYPE" in refusals[0].getMessage()
    assert refusals[0].exc_info is None, "one line, no traceback"
    assert sorted(invoker.task_ids) == ids("b", 3), "the other queue drained"
