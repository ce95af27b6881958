"""A lone task's wake-up in one round trip on a standalone server (shim.quick_take)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import redis
from support.shim_doubles import seed_tasks

from rhailambda.protocol import ATTEMPT, KeyLayout
from rhailambda.redis_url import parse_url
from rhailambda.resp_async import AsyncRespClient
from rhailambda.settings import ProtocolSettings
from rhailambda.shim.health import Health
from rhailambda.shim.redis_lease import RedisLeaseStore
from rhailambda.shim.redis_queue import RedisQueueSource

L = KeyLayout()
T = TypeVar("T")
pytestmark = pytest.mark.standalone_only("a cluster takes in two steps (every task its own slot)")


def _with_source(url: str, body: Callable[[RedisQueueSource, AsyncRespClient], Awaitable[T]]) -> T:
    async def run() -> T:
        client = AsyncRespClient(parse_url(url))
        await client.refresh()
        source = RedisQueueSource(
            client, ProtocolSettings(), "s1", Health(redis_url="redis://test"), ["w1"]
        )
        try:
            return await body(source, client)
        finally:
            source.close()
            await client.aclose()

    return asyncio.run(run())


def _evalsha_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_read_into_an_empty_window_delivers_as_it_moves(
    redis_client: redis.Redis, redis_url: str
) -> None:
    seed_tasks(redis_client, L, "w1", ["t1", "t2"])  # circle "c"

    async def body(source: RedisQueueSource, _: AsyncRespClient) -> None:
        ahead = await source.read_ahead("w1", 10, block_s=0.5, unread_up_to=lambda: 10)
        assert [a.task_id for a in ahead.items] == ["t1", "t2"]  # oldest first
        assert [a.circle for a in ahead.items] == ["c", "c"], "the circle came with the read"
        assert redis_client.hget(L.task("t1"), ATTEMPT) == "1", "its attempt is counted"
        assert redis_client.llen(L.inflight("w1", "s1")) == 2
        assert not redis_client.exists(L.stage("w1", "s1")), "the stage list is left empty"
        before = _evalsha_calls(redis_client)
        taken = await source.deliver("w1", ahead.items)
        assert [(t.task_id, t.attempt, t.circle) for t in taken] == [("t1", 1, "c"), ("t2", 1, "c")]
        assert _evalsha_calls(redis_client) == before, "the delivery made no second trip"
        assert redis_client.hget(L.task("t1"), ATTEMPT) == "1", "counted once"

    _with_source(redis_url, body)


def test_a_backlog_comes_back_undelivered_for_fair_share_to_pick(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """More ids than a batch are no lone wake-up: they fill the window with their circles
    read, and none has an attempt counted before fair share picks it."""
    seed_tasks(redis_client, L, "w1", ["a1", "a2", "b1"])
    redis_client.hset(L.task("b1"), "contextId", "b")
    redis_client.lpush(L.queue("w1"), "reply:x")  # an odd id: no circle to read

    async def body(source: RedisQueueSource, _: AsyncRespClient) -> None:
        ahead = await source.read_ahead("w1", 10, block_s=0.5, unread_up_to=lambda: 1)
        assert [(a.task_id, a.circle) for a in ahead.items] == [
            ("a1", "c"), ("a2", "c"), ("b1", "b"), ("reply:x", "")]  # fmt: skip
        assert all(redis_client.hget(L.task(t), ATTEMPT) is None for t in ("a1", "a2", "b1"))
        assert redis_client.llen(L.inflight("w1", "s1")) == 4
        assert not redis_client.exists(L.stage("w1", "s1"))
        taken = await source.deliver("w1", [ahead.items[2]])  # fair share picked b1
        assert [(t.task_id, t.attempt, t.circle) for t in taken] == [("b1", 1, "b")]

    _with_source(redis_url, body)


def test_ids_that_are_no_plain_task_go_the_long_way(
    redis_client: redis.Redis, redis_url: str
) -> None:
    seed_tasks(redis_client, L, "w1", ["good"])
    redis_client.lpush(L.queue("w1"), "ghost")  # no hash: the long way checks the done marker
    redis_client.lpush(L.queue("w1"), "reply:x")  # its "task key" is a reply key: poison
    redis_client.set(L.done("ghost"), "1")  # ghost finished before: dropped, not run

    async def body(source: RedisQueueSource, _: AsyncRespClient) -> None:
        ahead = await source.read_ahead("w1", 10, block_s=0.5, unread_up_to=lambda: 10)
        assert [a.task_id for a in ahead.items] == ["good", "ghost", "reply:x"]
        taken = await source.deliver("w1", ahead.items)
        assert [t.task_id for t in taken] == ["good"]

    _with_source(redis_url, body)
    assert redis_client.lrange(L.dead_letter("w1"), 0, -1) == ["reply:x"]
    assert redis_client.lrange(L.inflight("w1", "s1"), 0, -1) == ["good"]


def test_a_paused_queue_keeps_its_order(redis_client: redis.Redis, redis_url: str) -> None:
    seed_tasks(redis_client, L, "w1", ["a", "b", "c"])
    redis_client.set(L.paused("w1"), "1")

    async def body(source: RedisQueueSource, _: AsyncRespClient) -> bool:
        ahead = await source.read_ahead("w1", 10, block_s=0.5, unread_up_to=lambda: 10)
        return ahead.paused

    assert _with_source(redis_url, body)
    assert redis_client.lrange(L.queue("w1"), 0, -1) == ["c", "b", "a"], "a still next"
    assert not redis_client.exists(L.stage("w1", "s1"), L.inflight("w1", "s1"))
    assert redis_client.hget(L.task("a"), ATTEMPT) is None, "nothing delivered"


def test_a_dead_shims_stage_list_goes_back_to_the_queue(
    redis_client: redis.Redis, redis_url: str
) -> None:
    seed_tasks(redis_client, L, "w1", ["old", "new"])
    redis_client.lmove(L.queue("w1"), L.stage("w1", "dead"), "RIGHT", "LEFT")  # died right there
    redis_client.zadd(L.shims(), {"dead": 1})
    redis_client.hset(L.shim_info("dead"), "workers", "w1")

    async def body(_: RedisQueueSource, client: AsyncRespClient) -> dict[str, int]:
        store = RedisLeaseStore(client, L, "s1", Health(redis_url="redis://test"))
        return await store.reap_expired(["w1"])

    assert _with_source(redis_url, body) == {"dead": 1}
    assert redis_client.lrange(L.queue("w1"), 0, -1) == ["new", "old"], "old is next again"
    assert not redis_client.exists(L.stage("w1", "dead"))
