"""An OOM window mid-drain: the shim keeps running, says it is unhealthy, and once memory
is back every task is answered exactly once, with no restart (issue 17, item 5)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis_server import RedisServer
from support.shim_doubles import queue_source, seed_tasks
from support.waiting import wait_for

from rhailambda.client import Client
from rhailambda.errors import RedisResponseError
from rhailambda.protocol import ATTEMPT, KeyLayout

L = KeyLayout()
N = 200
#: a few ms of work per task, so the drain is under way when memory runs out
SCRIPT = "let x = 0; for i in 0..20000 { x += i; } x"


def shim_row(url: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "rhailambda.cli", "status", "--redis-url", url, "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr  # status only reads: it works while Redis is full
    (shim,) = json.loads(out.stdout)["shims"]
    return dict(shim)


def answered(r: redis.Redis, task_ids: list[str]) -> int:
    pipe = r.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.llen(L.reply(task_id))
    return sum(1 for n in pipe.execute() if n)


def test_an_oom_window_mid_drain_is_waited_out_and_every_task_answered_once(
    private_redis_server: RedisServer,
) -> None:
    url = private_redis_server.url
    r = redis.Redis.from_url(url, decode_responses=True)
    env = {**os.environ, "REDIS_URL": url, "POWERTOOLS_METRICS_DISABLED": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhailambda.cli", "shim", "--worker", "w1", "--shim-id", "m1",
         "--block-s", "1", "--lease-s", "6", "--local-workers", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: r.zscore(L.shims(), "m1"), 30, "the shim's registration")
        with Client(url) as client:
            ids = client.submit_many([(SCRIPT, "w1", "alice", "alice")] * N)
            wait_for(lambda: answered(r, ids) >= 5, 60, "the drain under way")
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", "1")  # every write is refused from here on
            stuck = answered(r, ids)
            assert stuck < N, "the OOM window must come mid-drain"
            during = wait_for(
                lambda: (row := shim_row(url)) and not row["healthy"] and row,
                30,
                "status to call the shim unhealthy",
            )
            assert during["live"] and "heartbeat" in during["problem"], during
            assert proc.poll() is None, "the shim keeps running"
            assert answered(r, ids) == stuck, "no progress while Redis refuses writes"
            r.config_set("maxmemory", "0")  # memory is back
            replies = client.wait_many(ids, timeout_s=120)
        assert all(reply.status == "completed" for reply in replies.values()), [
            reply.error for reply in replies.values() if reply.status != "completed"
        ]
        assert answered(r, ids) == 0, "no second reply for any task"
        after = wait_for(lambda: (row := shim_row(url))["healthy"] and row, 30, "healthy again")
        assert "OOM" in after["info"]["last_error"], after["info"]
        assert r.llen(L.dead_letter("w1")) == 0 and r.llen(L.queue("w1")) == 0
        wait_for(lambda: r.llen(L.inflight("w1", "m1")) == 0, 30, "every id acknowledged")
        assert proc.poll() is None, "no restart"
    finally:
        r.config_set("maxmemory", "0")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        r.close()
    assert proc.returncode == 0, out[-3000:]
    assert "OOM" in out and "retrying" in out, "the health line names the error"


def test_a_deliver_redis_refuses_raises_redis_error_and_counts_no_attempt(
    private_redis_server: RedisServer,
) -> None:
    """Memory runs out between the move and the deliver: the deliver step must fail
    with Redis's own error (which the shim's health waits out), not a crash of the
    take (it raised ValueError from zipping a refused group's verdicts)."""
    url = private_redis_server.url
    r = redis.Redis.from_url(url, decode_responses=True)
    ids = ["a", "b", "c"]
    seed_tasks(r, L, "w1", ids)
    source = queue_source(r, url)

    async def deliver_once() -> None:
        async def once(what: str, op: Callable[[], Any]) -> Any:
            return await op()  # no health retries: the refusal comes straight back

        with source:
            await source._delivered("w1", ids, once)

    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1")
    try:
        with pytest.raises(RedisResponseError) as caught:
            asyncio.run(deliver_once())
    finally:
        r.config_set("maxmemory", "0")
    assert caught.value.code == "OOM"
    assert [r.hget(L.task(t), ATTEMPT) for t in ids] == [None, None, None]
    r.close()
