"""Upgrading from the untagged key layout: a new shim adopts what old shims left."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis

from rhailambda.protocol import KeyLayout, now_rfc3339

L = KeyLayout()
OLD = L.internal_prefix
pytestmark = pytest.mark.standalone_only("the old layout ran on a standalone server only")


def _task(r: redis.Redis, task_id: str, worker: str) -> None:
    now = now_rfc3339()
    r.hset(L.task(task_id), mapping={
        "taskId": task_id, "script": "40 + 2", "callerId": "c", "contextId": "c",
        "workerId": worker, "status": "pending", "createdAt": now, "updatedAt": now,
    })  # fmt: skip


def test_a_new_shim_adopts_the_old_layouts_in_flight_dead_letters_and_pauses(
    redis_client: redis.Redis, redis_url: str
) -> None:
    r = redis_client
    expired_ms = int(time.time() * 1000) - 60_000
    live_ms = int(time.time() * 1000) + 3_600_000
    stranded = [f"old-{i}" for i in range(5)]
    for t in stranded:
        _task(r, t, "w1")
    r.lpush(f"{OLD}inflight:w1:old-dead", *stranded)  # the old shim died holding them
    r.zadd(f"{OLD}shims", {"old-dead": expired_ms, "old-live": live_ms})
    r.hset(f"{OLD}shim:old-dead", "workers", "w1")
    _task(r, "kept-by-live", "w1")
    r.lpush(f"{OLD}inflight:w1:old-live", "kept-by-live")
    r.lpush(f"{OLD}dlq:w1", "dead-1")
    r.sadd(f"{OLD}paused", "w2")

    env = {**os.environ, "REDIS_URL": redis_url, "RHAILAMBDA_WORKERS": "w1,w2",
           "RHAILAMBDA_LOCAL_WORKERS": "1", "RHAILAMBDA_BLOCK_S": "1"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhailambda", "shim", "--shim-id", "new1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not all(r.llen(L.reply(t)) for t in stranded):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the old shim's in-flight ids were not run"
            time.sleep(0.05)  # an outside process's effect, polled with a deadline
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    for t in stranded:
        assert r.llen(L.reply(t)) == 1 and '"42"' in str(r.lindex(L.reply(t), 0)), t
    assert not r.exists(f"{OLD}inflight:w1:old-dead")
    assert r.zscore(f"{OLD}shims", "old-dead") is None
    assert r.lrange(L.dead_letter("w1"), 0, -1) == ["dead-1"]
    assert r.exists(L.paused("w2")) and not r.exists(f"{OLD}paused")
    # a live old shim keeps its ids until its lease expires
    assert r.lrange(f"{OLD}inflight:w1:old-live", 0, -1) == ["kept-by-live"]
    assert r.llen(L.reply("kept-by-live")) == 0
    assert "old shim old-dead back on w1" in out


def test_the_upgrade_pass_takes_the_same_few_round_trips_for_many_queues(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """Every queue's old dead letters and pause, and every expired old shim's in-flight
    lists, go in one batched call per step: 30 queues cost no more round trips than 1."""
    import asyncio
    from typing import Any

    from rhailambda.resp_async import AsyncRespClient
    from rhailambda.settings import RedisSettings
    from rhailambda.shim.health import Health
    from rhailambda.shim.upgrade import LegacyKeys

    r = redis_client
    workers = [f"q{i}" for i in range(30)]
    expired_ms = int(time.time() * 1000) - 60_000
    for w in workers:
        r.lpush(f"{OLD}dlq:{w}", f"dead-{w}")
        r.sadd(f"{OLD}paused", w)
    for shim in ("old-a", "old-b", "old-c"):
        r.zadd(f"{OLD}shims", {shim: expired_ms})
        r.hset(f"{OLD}shim:{shim}", "workers", ",".join(workers))
        for w in workers:
            r.lpush(f"{OLD}inflight:{w}:{shim}", f"{shim}-{w}")

    async def go() -> tuple[int, int]:
        client = AsyncRespClient(RedisSettings(redis_url).address())
        sent = 0
        real = client.round_trip

        async def counted(commands: Any, **kwargs: Any) -> Any:
            nonlocal sent
            sent += 1
            return await real(commands, **kwargs)

        client.round_trip = counted  # type: ignore[method-assign]
        try:
            keys = LegacyKeys(client, L, Health(redis_url=redis_url))
            return await keys.adopt(workers), sent
        finally:
            client.close()

    moved, round_trips = asyncio.run(go())
    assert moved == 30 + 3 * 30
    # PING, ZRANGE+TYPE, dead letters, pauses, HGETs, in-flight lists, ZREM+DEL
    assert round_trips <= 7, round_trips
    for w in workers:
        assert r.lrange(L.dead_letter(w), 0, -1) == [f"dead-{w}"]
        assert sorted(r.lrange(L.queue(w), 0, -1)) == [f"old-{x}-{w}" for x in "abc"]
        assert r.exists(L.paused(w))
    assert not r.exists(f"{OLD}shims") and not r.exists(f"{OLD}paused")
