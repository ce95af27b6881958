"""Graceful shutdown of the drain loop against a real Redis: what may still start, what
goes back to the queue and when, and cancellations that Python 3.11 can lose.

Each test failed before its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from typing import Any

import pytest
import redis
from support.shim_doubles import FakeInvoker, queue_source, seed_tasks, wait_until

from rhailambda.errors import InvocationError
from rhailambda.event import BatchResponse, InvocationEvent
from rhailambda.protocol import ATTEMPT, KeyLayout
from rhailambda.resp import parse_url
from rhailambda.resp_async import AsyncRespClient
from rhailambda.settings import ProtocolSettings, RedisSettings
from rhailambda.shim.app import serve
from rhailambda.shim.drain import Drainer
from rhailambda.shim.health import Health
from rhailambda.shim.settings import (
    BatchSettings,
    FlowSettings,
    QueueSettings,
    RetrySettings,
    ShimSettings,
)

L = KeyLayout()


def make_settings(url: str, *, backoff_s: float, block_s: float = 0.5) -> ShimSettings:
    return ShimSettings(
        redis=RedisSettings(url),
        protocol=ProtocolSettings(),
        queues=QueueSettings(worker_ids=("w1",), shim_id="s1", lease_s=3.0, block_s=block_s),
        batch=BatchSettings(batch_size=1),
        flow=FlowSettings(max_concurrency=2, per_queue_concurrency=2, shutdown_timeout_s=5),
        retry=RetrySettings(max_attempts=3, backoff_base_s=backoff_s, backoff_cap_s=backoff_s),
    )


class _LongestBackoff(random.Random):
    """Jitter that always picks the longest delay, so a retry is surely still pending."""

    def uniform(self, a: float, b: float) -> float:
        return b


def started(invoker: FakeInvoker) -> list[tuple[str, int]]:
    return sorted((t.task_id, t.attempt) for e in invoker.events for t in e.tasks)


def started_attempt(client: redis.Redis, task_id: str) -> Any:
    return client.hget(L.task(task_id), ATTEMPT)


def test_a_retry_due_during_the_shutdown_wait_is_handed_back_not_started(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """A batch fails after shutdown began while another still runs: its retry (due in
    10 ms) used to start a new invocation that shutdown neither awaited nor stopped."""
    seed_tasks(redis_client, L, "w1", ["fails", "slow"])
    settings = make_settings(redis_url, backoff_s=0.01)

    async def scenario() -> None:
        release_fails, release_slow = asyncio.Event(), asyncio.Event()

        async def behaviour(event: InvocationEvent) -> BatchResponse:
            (task,) = event.tasks
            if task.task_id == "fails" and task.attempt == 1:
                await release_fails.wait()
                raise InvocationError("the worker crashed")
            if task.task_id == "slow":
                await release_slow.wait()
            return BatchResponse({task.task_id: "completed"})

        client = AsyncRespClient(parse_url(redis_url))
        invoker = FakeInvoker(behaviour)
        source = queue_source(client, redis_url, protocol=settings.protocol)
        drainer = Drainer(settings, source, invoker)
        try:
            drainer.start()
            await wait_until(lambda: invoker.running == 2, timeout_s=5, what="both batches")
            await drainer.stop_taking()  # shutdown begins (SIGTERM)
            finishing = asyncio.create_task(drainer.finish_invocations(5))
            release_fails.set()  # fails while "slow" still runs: the shutdown wait goes on
            await wait_until(
                lambda: redis_client.llen(L.queue("w1")) or len(invoker.events) > 2,
                timeout_s=5,
                what="the failed id to be handed back (or retried)",
            )
            assert started(invoker) == [("fails", 1), ("slow", 1)], "a retry started"
            # Back at the front of the queue at once, for another shim to take.
            assert redis_client.lrange(L.queue("w1"), 0, -1) == ["fails"]
            assert redis_client.lrange(L.inflight("w1", "s1"), 0, -1) == ["slow"]
            release_slow.set()
            assert await asyncio.wait_for(finishing, 5) == 0  # "slow" was awaited, not cut
            assert invoker.running == 0 and drainer.running_invocations == 0
        finally:
            source.close()
            await client.aclose()

    asyncio.run(scenario())
    assert started_attempt(redis_client, "fails") == "1"  # no new delivery was counted
    assert redis_client.llen(L.inflight("w1", "s1")) == 0


def test_a_pending_retry_goes_back_to_the_queue_when_shutdown_begins(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """A retry 30 s away when SIGTERM arrives: its id goes back at once, not after the
    grace period spent waiting for the other invocation."""
    seed_tasks(redis_client, L, "w1", ["fails", "slow"])
    settings = make_settings(redis_url, backoff_s=30.0)

    async def scenario() -> None:
        release_slow = asyncio.Event()

        async def behaviour(event: InvocationEvent) -> BatchResponse:
            (task,) = event.tasks
            if task.task_id == "fails":
                raise InvocationError("the worker crashed")
            await release_slow.wait()
            return BatchResponse({task.task_id: "completed"})

        client = AsyncRespClient(parse_url(redis_url))
        invoker = FakeInvoker(behaviour)
        source = queue_source(client, redis_url, protocol=settings.protocol)
        drainer = Drainer(settings, source, invoker, rng=_LongestBackoff())
        try:
            drainer.start()
            await wait_until(
                lambda: drainer.stats.retried == 1 and invoker.running == 1,
                timeout_s=5,
                what="a retry pending while another batch runs",
            )
            await drainer.stop_taking()
            assert redis_client.lrange(L.queue("w1"), 0, -1) == ["fails"]
            assert redis_client.lrange(L.inflight("w1", "s1"), 0, -1) == ["slow"]
            release_slow.set()
            assert await asyncio.wait_for(drainer.finish_invocations(5), 5) == 0
        finally:
            source.close()
            await client.aclose()
        assert started(invoker) == [("fails", 1), ("slow", 1)]

    asyncio.run(scenario())
    assert redis_client.llen(L.inflight("w1", "s1")) == 0


def test_shutdown_abandons_invocations_whose_cancel_never_ends(
    redis_client: redis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Invocations past the grace period are cancelled; one whose invoker's clean-up
    then never finishes used to hang shutdown forever. Now it is abandoned 2 s after
    its cancel, logged, and its ids still go back to the queue."""
    seed_tasks(redis_client, L, "w1", ["stuck-1", "stuck-2"])
    grace_s, bound_s = 0.2, 2.0
    settings = make_settings(redis_url, backoff_s=0.01)
    flow = FlowSettings(max_concurrency=2, per_queue_concurrency=2, shutdown_timeout_s=grace_s)
    settings = dataclasses.replace(settings, flow=flow)

    async def scenario() -> None:
        let_go = asyncio.Event()

        async def cleanup_never_ends(event: InvocationEvent) -> BatchResponse:
            try:
                await asyncio.Event().wait()  # runs until cancelled
            finally:
                while not let_go.is_set():  # a clean-up deaf to further cancels
                    with contextlib.suppress(asyncio.CancelledError):
                        await let_go.wait()
            raise AssertionError("unreachable")

        invoker = FakeInvoker(cleanup_never_ends)
        stop = asyncio.Event()
        shim = asyncio.create_task(serve(settings, invoker, stop=stop))
        try:
            await wait_until(lambda: invoker.running == 2, timeout_s=5, what="both invocations")
            stop.set()
            began = time.monotonic()
            await asyncio.wait({shim}, timeout=grace_s + bound_s + 5)
            took_s = time.monotonic() - began
            assert shim.done(), "shutdown hangs on the cancelled invocations"
            shim.result()
            assert took_s < grace_s + bound_s + 2.5, f"shutdown took {took_s:.2f} s"
            assert invoker.running == 2  # abandoned, not ended: their clean-up still hangs
            queue = redis_client.lrange(L.queue("w1"), 0, -1)
            assert sorted(queue) == ["stuck-1", "stuck-2"]
            assert redis_client.llen(L.inflight("w1", "s1")) == 0
        finally:
            let_go.set()  # else asyncio.run would wait for them at exit
            await asyncio.wait_for(shim, 10)
        await wait_until(lambda: invoker.running == 0, timeout_s=5, what="the clean-ups to end")

    with caplog.at_level(logging.WARNING, logger="rhailambda.shim"):
        asyncio.run(scenario())
    abandoned = [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()]
    assert len(abandoned) == 1 and "stuck-1" in abandoned[0] and "stuck-2" in abandoned[0]
    assert started_attempt(redis_client, "stuck-1") == "1"  # handed back, not retried


# --- a cancel lost in redis-py (Python 3.11's asyncio.wait_for) -------------------------
#
# redis-py writes every command under asyncio.wait_for; on Python 3.11 a cancel that
# lands after the write finished but before wait_for resumed is swallowed (CPython
# gh-86296, fixed in 3.12). The sweeps below cancel at each step of a call in turn,
# so one of them lands in that window.


def test_stopping_takers_is_prompt_even_when_a_cancel_is_lost_in_blmove(redis_url: str) -> None:
    """An idle queue's taker blocks in a 5 s BLMOVE. Stopping used to take the 2 s bound
    whenever the cancel landed in redis-py's write, and the taker ran on afterwards."""
    settings = make_settings(redis_url, backoff_s=0.01, block_s=5.0)

    async def scenario() -> list[tuple[int, float]]:
        client = AsyncRespClient(parse_url(redis_url))
        in_blmove: list[asyncio.Event] = []
        slow: list[tuple[int, float]] = []
        sources = contextlib.ExitStack()
        try:
            for steps in range(12):
                in_blmove.append(asyncio.Event())
                health = Health(redis_url=redis_url)
                source = sources.enter_context(
                    queue_source(client, redis_url, health=health, protocol=settings.protocol)
                )
                channel = source._channel("w1")
                real_round_trip = channel.round_trip

                async def blmove(commands: Any, real: Any = real_round_trip, **kw: Any) -> Any:
                    if any(c[0] == "BLMOVE" for c in commands):
                        in_blmove[-1].set()
                    return await real(commands, **kw)

                channel.round_trip = blmove  # type: ignore[method-assign]
                drainer = Drainer(settings, source, FakeInvoker())
                drainer.start()
                await asyncio.wait_for(in_blmove[-1].wait(), 5)
                for _ in range(steps):
                    await asyncio.sleep(0)  # step the taker's call to a given await
                began = time.monotonic()
                await drainer.stop_taking()
                took_s = time.monotonic() - began
                running = [t for t in asyncio.all_tasks() if t.get_name() == "take:w1"]
                assert running == [], f"a taker outlived stop_taking (steps={steps})"
                if took_s > 1.0:
                    slow.append((steps, round(took_s, 2)))
        finally:
            sources.close()
            await client.aclose()
        return slow

    assert asyncio.run(scenario()) == []


def test_a_cancel_lost_inside_a_redis_call_still_cancels(redis_url: str) -> None:
    """Else a task cancelled at that moment runs on: the lease keeper's loop then never
    ends and shutdown waits for it forever."""

    async def scenario() -> list[tuple[int, str]]:
        client = AsyncRespClient(parse_url(redis_url))
        health = Health(redis_url=redis_url)
        await client.execute("SET", "k", "v")
        lost: list[tuple[int, str]] = []
        try:
            for steps in range(12):
                task = asyncio.create_task(health.call("get", lambda: client.execute("GET", "k")))
                for _ in range(steps):
                    await asyncio.sleep(0)
                if not task.cancel():
                    continue  # already finished: nothing to cancel
                await asyncio.wait({task}, timeout=5)
                if not task.cancelled():
                    lost.append((steps, repr(task.result())))
        finally:
            await client.aclose()
        return lost

    assert asyncio.run(scenario()) == []
