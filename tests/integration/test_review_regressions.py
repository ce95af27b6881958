"""Regressions found in review: each failed before its fix.

Poison ids, transient Redis errors, late redeliveries of finished tasks, stale acks
after a reap, an id twice in a batch, a cancelled limiter waiter, and a password in
a URL's query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
import redis
from support.shim_doubles import FakeInvoker, queue_source, seed_tasks, wait_until

from rhailambda import protocol as p
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.functions.runner import BatchRunner
from rhailambda.functions.settings import FunctionSettings
from rhailambda.resp import from_url, parse_url
from rhailambda.resp_async import AsyncRespClient
from rhailambda.settings import ProtocolSettings, RedisSettings
from rhailambda.shim.app import serve
from rhailambda.shim.health import Health
from rhailambda.shim.limiter import FairLimiter
from rhailambda.shim.redis_lease import RedisLeaseStore
from rhailambda.shim.settings import FlowSettings, QueueSettings, RetrySettings, ShimSettings
from rhailambda.taskstore import TaskStore

L = p.KeyLayout()


def make_settings(url: str, workers: tuple[str, ...] = ("w1",)) -> ShimSettings:
    return ShimSettings(
        redis=RedisSettings(url),
        protocol=ProtocolSettings(),
        queues=QueueSettings(worker_ids=workers, shim_id="s1", lease_s=3.0, block_s=0.5),
        flow=FlowSettings(max_concurrency=2, per_queue_concurrency=2, shutdown_timeout_s=5),
        retry=RetrySettings(max_attempts=3, backoff_base_s=0.01, backoff_cap_s=0.05),
    )


async def _serve_for(
    settings: ShimSettings, invoker: FakeInvoker, seconds: float, during: Any = None
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, invoker, stop=stop))
    try:
        if during is not None:
            await during()
        await asyncio.sleep(seconds)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


# --- 1. one id whose task key is not a hash kills the queue's taker ---------------
def test_poison_id_kills_the_taker_and_strands_the_batch(
    redis_client: redis.Redis, redis_url: str
) -> None:
    seed_tasks(redis_client, L, "w1", ["t0", "t1"])
    redis_client.set(L.task("poison"), "x")  # any non-hash key, e.g. another
    redis_client.lpush(L.queue("w1"), "poison")  # worker's queue or a reply list
    seed_tasks(redis_client, L, "w1", ["t2", "t3"])
    invoker = FakeInvoker()

    async def later() -> None:
        await asyncio.sleep(1.0)
        seed_tasks(redis_client, L, "w1", ["t4"])  # a task submitted afterwards

    asyncio.run(_serve_for(make_settings(redis_url), invoker, 3.0, during=later))
    # healthy tasks submitted before and after the poison id must all be run
    assert sorted(invoker.task_ids) == ["t0", "t1", "t2", "t3", "t4"]


# --- 2. a transient non-connection Redis error (OOM, READONLY...) kills the taker ----
def test_transient_oom_kills_the_taker_for_good(private_redis_server: Any) -> None:
    url = private_redis_server.url
    r = redis.Redis.from_url(url, decode_responses=True)
    invoker = FakeInvoker()

    async def scenario() -> None:
        await wait_until(lambda: r.zscore(L.shims(), "s1"), timeout_s=5)
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", "100000")  # Redis is full for ~2 s
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            r.lpush("probe", "x")
        await asyncio.sleep(2.0)
        r.config_set("maxmemory", "0")  # memory is back
        seed_tasks(r, L, "w1", ["after-oom"])

    asyncio.run(_serve_for(make_settings(url), invoker, 3.0, during=scenario))
    r.close()
    assert invoker.task_ids == ["after-oom"]


# --- 3. a redelivered finished task gets a second reply ------------------------------
def test_redelivery_after_finish_pushes_a_second_reply(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """Shim A takes t1, the function finishes it (reply, hash deleted), the client
    collects the reply; A dies before its ack. Shim B reaps A and delivers t1 again."""
    seed_tasks(redis_client, L, "w1", ["t1"])
    settings = FunctionSettings(circle_enabled=False)
    sync = from_url(redis_url)
    runner = BatchRunner(settings, TaskStore(sync, settings.protocol))

    async def scenario() -> tuple[int, list[str]]:
        client = AsyncRespClient(parse_url(redis_url))
        health = Health(redis_url=redis_url)
        proto = ProtocolSettings()
        with contextlib.ExitStack() as sources:
            sources.callback(client.close)  # last, after the sources
            a = sources.enter_context(
                queue_source(client, redis_url, "shimA", health=health, protocol=proto)
            )
            a_lease = RedisLeaseStore(client, L, "shimA", health)
            await a_lease.heartbeat({"workers": "w1"}, lease_s=0.05)
            taken = (await a.take("w1", 10, block_s=0)).items
            runner.run(
                InvocationEvent("w1", tuple(TaskRef(t.task_id, t.attempt) for t in taken)), 30
            )
            first = redis_client.blpop([L.reply("t1")], timeout=1)  # the client gets its reply
            assert first is not None and json.loads(first[1])["status"] == "completed"
            # shim A crashes here, before ack; its lease expires; shim B reaps and takes
            await asyncio.sleep(0.1)
            b_lease = RedisLeaseStore(client, L, "shimB", health)
            await b_lease.reap_expired(["w1"])
            b = sources.enter_context(
                queue_source(client, redis_url, "shimB", health=health, protocol=proto)
            )
            taken2 = (await b.take("w1", 10, block_s=0)).items
            runner.run(
                InvocationEvent("w1", tuple(TaskRef(t.task_id, t.attempt) for t in taken2)), 30
            )
            extra = [str(r) for r in redis_client.lrange(L.reply("t1"), 0, -1)]
        return len(taken2), extra

    n, extra = asyncio.run(scenario())
    sync.close()
    assert n == 0  # recognised by its done marker and dropped at take time
    assert extra == [], f"a second reply for t1: {extra}"


# --- 4. the same id twice in one batch runs the script twice --------------------------
def test_duplicate_id_in_a_batch_runs_the_script_twice(
    redis_client: redis.Redis, redis_url: str
) -> None:
    seed_tasks(redis_client, L, "w1", ["t1"])
    redis_client.hset(L.task("t1"), "script", 'print("ran"); 1')
    redis_client.lpush(L.queue("w1"), "t1")  # the id queued twice
    prints: list[str] = []
    settings = FunctionSettings(circle_enabled=False)
    sync = from_url(redis_url)
    runner = BatchRunner(
        settings,
        TaskStore(sync, settings.protocol),
        on_print=lambda ctx, text: prints.append(ctx.task_id),
    )

    async def take() -> tuple[Any, ...]:
        with queue_source(redis_client, redis_url) as src:
            return (await src.take("w1", 10, block_s=0)).items

    items = asyncio.run(take())
    runner.run(InvocationEvent("w1", tuple(TaskRef(t.task_id, t.attempt) for t in items)), 30)
    sync.close()
    assert [(t.task_id, t.attempt) for t in items] == [("t1", 1), ("t1", 2)]
    assert prints == ["t1"], f"script ran {len(prints)} times in one batch"


# --- 5. limiter: cancel + release in the same tick raises ValueError -----------------
def test_limiter_cancel_then_release_raises_valueerror() -> None:
    async def scenario() -> BaseException | None:
        lim = FairLimiter(1)
        await lim.acquire()
        waiter = asyncio.create_task(lim.acquire())
        await asyncio.sleep(0)  # waiter is queued
        waiter.cancel()  # shutdown cancels it...
        lim.release()  # ...as an invocation ends
        try:
            await waiter
        except BaseException as exc:
            return exc
        return None

    exc = asyncio.run(scenario())
    assert isinstance(exc, asyncio.CancelledError), repr(exc)


# --- 6. a password in the URL's query string is logged ----------------------------
def test_redact_url_hides_a_query_string_password() -> None:
    import redis.connection

    from rhailambda.settings import redact_url

    url = "unix:///var/run/redis.sock?password=hunter2"  # redis-py's documented form
    assert redis.connection.parse_url(url)["password"] == "hunter2"
    assert "hunter2" not in redact_url(url)
    assert "hunter2" not in redact_url("redis://10.0.0.1:6379/0?password=hunter2")


# --- 7. a stale delivery's ack removes the newer delivery's in-flight entry ----------
def test_stale_ack_after_reap_loses_the_task(redis_client: redis.Redis, redis_url: str) -> None:
    seed_tasks(redis_client, L, "w1", ["t1"])

    async def scenario() -> None:
        client = AsyncRespClient(parse_url(redis_url))
        health = Health(redis_url=redis_url)
        proto = ProtocolSettings()
        b = queue_source(client, redis_url, "shimB", health=health, protocol=proto)
        try:
            await RedisLeaseStore(client, L, "shimB", health).heartbeat(
                {"workers": "w1"}, lease_s=0.05
            )
            first = (await b.take("w1", 10, block_s=0)).items  # delivery 1 (invoking)
            await asyncio.sleep(0.1)  # B stalls: lease lapses
            await RedisLeaseStore(client, L, "shimA", health).reap_expired(["w1"])  # A reaps B
            second = (await b.take("w1", 10, block_s=0)).items  # B takes t1 again
            assert [t.attempt for t in first] == [1] and [t.attempt for t in second] == [2]
            await b.ack("w1", first)  # delivery 1's function found the claim taken: "skipped"
            again = await b.redeliver("w1", ["t1"])  # delivery 2 failed (worker crash): retry
            assert again, "the retry of delivery 2 was dropped"
        finally:
            b.close()
            await client.aclose()

    try:
        asyncio.run(scenario())
    finally:
        where = {
            k: redis_client.lrange(k, 0, -1)
            for k in (L.queue("w1"), L.inflight("w1", "shimB"), L.reply("t1"))
        }
        print("t1 is now:", redis_client.hget(L.task("t1"), "status"), where)
