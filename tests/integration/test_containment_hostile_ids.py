"""Task ids that collide with protocol keys, written by hand (an unmodified client or
redis-cli can), through a running shim and local worker (issue 17, items 3 and 8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import redis
from support.shim_doubles import RUNS_KEY
from support.waiting import wait_for

from rhailambda.protocol import KeyLayout, now_rfc3339

L = KeyLayout()
GOOD = [f"g{i}" for i in range(10)]


def write_task(r: redis.Redis, task_id: str, worker_id: str) -> None:
    """What a client that does not check ids writes: the hash at rhailib:<id>."""
    stamp = now_rfc3339()
    r.hset(L.task(task_id), mapping={
        "taskId": task_id, "script": "probe::ran(TASK_ID); TASK_ID", "callerId": "c",
        "contextId": "c", "workerId": worker_id, "status": "pending",
        "createdAt": stamp, "updatedAt": stamp,
    })  # fmt: skip


@pytest.fixture
def shim(redis_client: redis.Redis, redis_url: str) -> Iterator[Callable[..., None]]:
    procs: list[subprocess.Popen[str]] = []

    def start(*workers: str) -> None:
        env = {**os.environ, "REDIS_URL": redis_url, "POWERTOOLS_METRICS_DISABLED": "true",
               "RHAILAMBDA_EXTENSIONS": "support.shim_doubles:run_counter"}  # fmt: skip
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "rhailambda.cli", "shim", "--worker", ",".join(workers),
             "--shim-id", "h1", "--block-s", "1", "--batch-size", "20", "--local-workers", "1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
        wait_for(lambda: redis_client.zscore(L.shims(), "h1"), 30, "the shim's registration")

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    redis_client.delete(RUNS_KEY)


def reply_of(r: redis.Redis, task_id: str) -> dict[str, Any]:
    got = r.blpop([L.reply(task_id)], timeout=60)
    assert got is not None, f"no reply for {task_id!r}"
    return dict(json.loads(got[1]))


def assert_ran_once_each(r: redis.Redis, task_ids: list[str]) -> None:
    for task_id in task_ids:
        reply = reply_of(r, task_id)
        assert reply["status"] == "completed" and reply["output"] == task_id, reply
        assert r.llen(L.reply(task_id)) == 0, f"a second reply for {task_id}"
    runs = r.hgetall(RUNS_KEY)
    assert all(runs.get(t) == "1" for t in task_ids), runs


def test_a_reply_prefixed_id_leaves_its_victims_reply_alone(
    redis_client: redis.Redis, shim: Callable[..., None]
) -> None:
    r = redis_client
    for task_id in [*GOOD, "X"]:
        write_task(r, task_id, "w1")
    write_task(r, "reply:X", "w1")  # its hash sits on X's reply key
    r.lpush(L.queue("w1"), *GOOD[:5], "reply:X", "X", *GOOD[5:])  # one batch
    shim("w1")
    hostile = reply_of(r, "reply:X")
    # X's client could not even BLPOP (WRONGTYPE) while the hostile hash sat there. On a
    # cluster the finish pushes the error reply before it cleans the hash up: wait for it.
    wait_for(lambda: r.type(L.reply("X")) != "hash", 30, "the dead-letter removing the hash")
    assert_ran_once_each(r, ["X", *GOOD])
    assert hostile["status"] == "error" and "reply:" in hostile["error"], hostile
    assert "reply:X" not in r.hgetall(RUNS_KEY), "the hostile task did not run"
    assert r.lrange(L.dead_letter("w1"), 0, -1) == ["reply:X"]
    write_task(r, "after", "w1")  # the queue keeps working
    r.lpush(L.queue("w1"), "after")
    assert_ran_once_each(r, ["after"])


def test_an_id_naming_a_queue_is_contained_and_the_queue_keeps_working(
    redis_client: redis.Redis, shim: Callable[..., None]
) -> None:
    r = redis_client
    for task_id in GOOD:
        write_task(r, task_id, "w2")
    write_task(r, "w1", "w2")  # the hash lands on w1's queue key
    r.lpush(L.queue("w2"), *GOOD[:5], "w1", *GOOD[5:])
    write_task(r, "w3", "w3")  # `submit --task-id w3 --worker w3`: the hash is the queue
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.lpush(L.queue("w3"), "w3")
    shim("w1", "w2", "w3")
    assert_ran_once_each(r, GOOD)
    for bad, worker in (("w1", "w2"), ("w3", "w3")):
        reply = wait_for(partial(r.lpop, L.reply(bad)), 30, f"{bad}'s error reply")
        body = json.loads(reply)
        assert body["status"] == "error" and "queue" in body["error"], body
        assert bad in wait_for(partial(r.lrange, L.dead_letter(worker), 0, -1), 30, "dlq")
    assert not r.hgetall(RUNS_KEY).get("w1") and not r.hgetall(RUNS_KEY).get("w3")
    for worker in ("w1", "w3"):  # both queues work again
        write_task(r, f"after-{worker}", worker)
        r.lpush(L.queue(worker), f"after-{worker}")
        assert_ran_once_each(r, [f"after-{worker}"])


@pytest.mark.parametrize("value", ["string", "hash"])
def test_a_reply_key_of_the_wrong_type_dead_letters_its_task_alone(
    redis_client: redis.Redis, shim: Callable[..., None], value: str
) -> None:
    r = redis_client
    for task_id in [*GOOD, "bad"]:
        write_task(r, task_id, "w1")
    if value == "string":
        r.set(L.reply("bad"), "squatter")
    else:
        r.hset(L.reply("bad"), "squatter", "1")
    r.lpush(L.queue("w1"), *GOOD[:5], "bad", *GOOD[5:])  # one batch
    shim("w1")
    assert_ran_once_each(r, GOOD)
    assert wait_for(lambda: r.lrange(L.dead_letter("w1"), 0, -1), 30, "dlq") == ["bad"]
    wait_for(lambda: r.llen(L.inflight("w1", "h1")) == 0, 30, "nothing left in flight")
    assert r.type(L.reply("bad")) == value, "the squatter's value is not touched"
    write_task(r, "after", "w1")  # the queue keeps working
    r.lpush(L.queue("w1"), "after")
    assert_ran_once_each(r, ["after"])
