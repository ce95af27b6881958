"""Poison ids at take time: each is dead-lettered alone, its neighbours delivered as usual."""

from __future__ import annotations

import asyncio
import json

import redis
from support.shim_doubles import queue_source, seed_tasks

from rhailambda import protocol as p

L = p.KeyLayout()


def test_poison_ids_of_each_kind_leave_ten_good_tasks_untouched(
    redis_client: redis.Redis, redis_url: str
) -> None:
    good = [f"g{i}" for i in range(10)]
    seed_tasks(redis_client, L, "w1", good)
    redis_client.set(L.task("str"), "not a hash")  # the task key holds a string
    redis_client.hset(L.task("badattempt"), mapping={"script": "1", "status": "pending",
                                                     "rhailambdaAttempt": "x"})  # fmt: skip
    redis_client.lpush(L.queue("w1"), "", "str", "badattempt")

    async def take() -> list[str]:
        with queue_source(redis_client, redis_url) as source:
            taken = await source.take("w1", 20, block_s=0)
            assert not (await source.take("w1", 20, block_s=0)).items
            return [t.task_id for t in taken.items]

    assert sorted(asyncio.run(take())) == sorted(good), "the good ones, each once"
    assert all(redis_client.hget(L.task(t), "rhailambdaAttempt") == "1" for t in good)
    dead = redis_client.lrange(L.dead_letter("w1"), 0, -1)
    assert sorted(dead) == ["", "badattempt", "str"]
    for task_id, why in (("str", "not a task hash"), ("badattempt", "not an integer")):
        reply = json.loads(str(redis_client.lpop(L.reply(task_id)) or "{}"))
        assert reply["status"] == "error" and why in reply["error"], reply
    assert redis_client.llen(L.queue("w1")) == 0
    assert redis_client.llen(L.inflight("w1", "s1")) == len(good), "only the good are held"
