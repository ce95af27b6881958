"""Fair share across circles, per-circle caps and one-circle batches: real Redis, real shim.

The fairness and cap tests run the real drain loop (``serve``) on the local backend:
worker processes running the real handler and engine, with the probe extension
(tests/circle_probe.py) recording what ran when, per circle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import circle_probe
import redis
from support.shim_doubles import FakeInvoker, wait_until

from rhailambda.client import Client
from rhailambda.event import BatchResponse, InvocationEvent, TaskRef
from rhailambda.protocol import ATTEMPT, KeyLayout
from rhailambda.resp import RespClient
from rhailambda.settings import ProtocolSettings, RedisSettings
from rhailambda.shim.app import serve
from rhailambda.shim.local_backend import LocalInvoker
from rhailambda.shim.settings import (
    BatchSettings,
    FairSettings,
    FlowSettings,
    QueueSettings,
    RetrySettings,
    ShimSettings,
)
from rhailambda.shim.status import CircleStatus, Status, gather_status

L = KeyLayout()
TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src"


def settings(url: str, *, batch: int, concurrency: int, fair: FairSettings) -> ShimSettings:
    return ShimSettings(
        redis=RedisSettings(url),
        protocol=ProtocolSettings(),
        queues=QueueSettings(worker_ids=("w1",), shim_id="s1", lease_s=5.0, block_s=0.5),
        batch=BatchSettings(batch_size=batch),
        flow=FlowSettings(
            max_concurrency=concurrency, per_queue_concurrency=concurrency, shutdown_timeout_s=5
        ),
        fair=fair,
        retry=RetrySettings(max_attempts=3, backoff_base_s=0.01, backoff_cap_s=0.05),
    )


def local_invoker(url: str, workers: int) -> LocalInvoker:
    env = {
        "REDIS_URL": url,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]),
        "RHAILAMBDA_EXTENSIONS": "circle_probe:probe",
        "RHAILAMBDA_LOG_LEVEL": "WARNING",
    }
    return LocalInvoker(
        handler="rhailambda.functions.handler.handler", max_workers=workers,
        idle_timeout_s=60.0, env=env, function_name="fn-fair",
    )  # fmt: skip


def submit(url: str, tasks: list[tuple[str, str]]) -> list[str]:
    """(circle, script) pairs onto w1, in order (the first is the oldest)."""
    with Client(url) as client:
        return client.submit_many([(script, "w1", circle, circle) for circle, script in tasks])


def drain_with_local_backend(
    url: str, client: redis.Redis, shim: ShimSettings, task_ids: list[str], workers: int
) -> None:
    async def scenario() -> None:
        invoker = local_invoker(url, workers)
        # Warm every worker with a real task first (its function connects to Redis then),
        # so what the probe sees starting is what the shim sent, when it sent it.
        with Client(url) as c:
            warm = c.submit_many([("1", "warm", "warm", "warm")] * workers)
        for task_id in warm:
            client.hset(L.task(task_id), ATTEMPT, 1)
        events = [InvocationEvent("warm", (TaskRef(t, 1),)) for t in warm]
        await asyncio.gather(*(invoker.invoke(e, timeout_s=30) for e in events))
        assert replied(client, warm)
        stop = asyncio.Event()
        task = asyncio.create_task(serve(shim, invoker, stop=stop))
        try:
            await wait_until(
                lambda: replied(client, task_ids), timeout_s=90, what="every task's reply"
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await invoker.aclose()

    asyncio.run(scenario())


def replied(client: redis.Redis, task_ids: list[str]) -> bool:
    pipe = client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.exists(L.reply(task_id))
    return all(pipe.execute())


def test_a_small_circle_runs_before_a_floods_backlog_is_half_done(
    redis_client: redis.Redis, redis_url: str
) -> None:
    ids = submit(redis_url, [("a", "probe::work(0)")] * 600 + [("b", "probe::work(0)")] * 20)
    shim = settings(redis_url, batch=10, concurrency=2, fair=FairSettings())
    drain_with_local_backend(redis_url, redis_client, shim, ids, workers=2)
    ran = circle_probe.order(redis_client)
    assert len(ran) == 620
    last_b = max(i for i, (circle, _, _) in enumerate(ran) if circle == "b")
    a_before = sum(1 for circle, _, _ in ran[:last_b] if circle == "a")
    assert a_before < 300, f"b's last task ran after {a_before} of a's 600"


def test_a_circle_capped_at_n_concurrent_never_runs_more(
    redis_client: redis.Redis, redis_url: str
) -> None:
    # all of a's first: without the cap, a alone would fill the 4 workers
    tasks = [(c, "probe::work(40)") for c in ("a", "b") for _ in range(24)]
    ids = submit(redis_url, tasks)
    fair = FairSettings(per_circle_concurrency=2)
    shim = settings(redis_url, batch=1, concurrency=4, fair=fair)
    drain_with_local_backend(redis_url, redis_client, shim, ids, workers=4)
    assert len(circle_probe.order(redis_client)) == 48
    # at most the cap, and the cap is reached: both circles did run side by side
    assert circle_probe.most(redis_client) == {"a": 2, "b": 2}


def test_a_rate_capped_circle_starts_no_faster_than_its_rate(
    redis_client: redis.Redis, redis_url: str
) -> None:
    rate = 25.0
    ids = submit(redis_url, [("a", "probe::work(0)")] * 60)
    shim = settings(redis_url, batch=10, concurrency=2, fair=FairSettings(per_circle_rate=rate))
    drain_with_local_backend(redis_url, redis_client, shim, ids, workers=2)
    starts = [at for _, _, at in circle_probe.order(redis_client)]
    assert len(starts) == 60
    # The bucket holds one second of tokens: the first `rate` tasks may start at once,
    # the rest no faster than the rate (+10 %): an upper bound, not a speed assertion.
    measured = (len(starts) - rate) / (max(starts) - min(starts))
    assert measured <= rate * 1.1, f"{measured:.1f} tasks/s under a cap of {rate:g}/s"


def test_tenant_isolation_never_mixes_circles_and_names_the_tenant(
    redis_client: redis.Redis, redis_url: str
) -> None:
    circles = ["a", "b", "c"]
    ids = submit(redis_url, [(circles[i % 3], "1") for i in range(90)])
    circle_of = {t: circles[i % 3] for i, t in enumerate(ids)}
    seen: list[tuple[str | None, set[str]]] = []

    async def record(event: InvocationEvent) -> BatchResponse:
        seen.append((event.tenant_id, {circle_of[t.task_id] for t in event.tasks}))
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    invoker = FakeInvoker(record)
    shim = settings(redis_url, batch=10, concurrency=2, fair=FairSettings(tenant_isolation=True))

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(shim, invoker, stop=stop))
        try:
            await wait_until(lambda: len(invoker.task_ids) == 90, timeout_s=20, what="90 tasks")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    asyncio.run(scenario())
    assert sorted(invoker.task_ids) == sorted(ids)
    assert all(len(batch) == 1 for _, batch in seen), seen
    assert all(tenant == next(iter(batch)) for tenant, batch in seen), seen
    assert redis_client.llen(L.inflight("w1", "s1")) == 0


def test_status_shows_the_busiest_circles_of_a_queue(
    redis_client: redis.Redis, redis_url: str, resp_client: RespClient
) -> None:
    # Two batches (5 of b's and 5 of a's each, in turns) run and hang; the window holds
    # 60 of a's; the rest wait in the queue, the next 20 of them sampled by status.
    ids = submit(redis_url, [("b", "1")] * 10 + [("a", "1")] * 200)
    release = asyncio.Event()

    async def hang(event: InvocationEvent) -> BatchResponse:
        await release.wait()
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    invoker = FakeInvoker(hang)
    fair = FairSettings(window=60, per_circle_concurrency=10)
    shim = settings(redis_url, batch=10, concurrency=2, fair=fair)
    shim = dataclasses.replace(shim, queues=dataclasses.replace(shim.queues, lease_s=1.5))
    found: list[Status] = []

    def busy() -> bool:
        found[:] = [gather_status(resp_client, L, circle_sample=20)]
        rows = {c.circle: c for q in found[0].queues for c in q.circles}
        return "b" in rows and rows["b"].running == 10 and rows["a"].read_ahead == 60

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(shim, invoker, stop=stop))
        try:
            await wait_until(busy, timeout_s=20, what="status showing both circles")
        finally:
            release.set()
            stop.set()
            await asyncio.wait_for(task, 20)

    asyncio.run(scenario())
    rows = {c.circle: c for c in found[0].queues[0].circles}
    assert rows["b"] == CircleStatus("b", read_ahead=0, running=10, sampled=0)
    assert rows["a"] == CircleStatus("a", read_ahead=60, running=10, sampled=20)
    assert found[0].queues[0].queued == len(ids) - 80  # the window is in flight, not queued
