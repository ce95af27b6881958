"""``rhailambda status`` with a hash at a queue key: that queue's row says so, the
others are right, the command says which queue and exits non-zero (issue 17, item 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis
from support.shim_doubles import seed_tasks

from rhailambda.protocol import KeyLayout

L = KeyLayout()


def status(url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rhailambda.cli", "status", "--redis-url", url,
         "--worker", "w1", "--worker", "w2", "--worker", "w3", *flags],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip


def test_a_hash_at_a_queue_key_is_reported_for_that_queue_alone(
    redis_client: redis.Redis, redis_url: str
) -> None:
    redis_client.hset(L.queue("w1"), "someone", "wrote a hash here")
    seed_tasks(redis_client, L, "w2", ["a", "b", "c"])
    redis_client.lpush(L.dead_letter("w2"), "old")
    redis_client.set(L.paused("w3"), "1")

    out = status(redis_url, "--json")
    assert out.returncode == 1, "a queue that cannot be read is a problem worth an exit code"
    queues = {q["worker_id"]: q for q in json.loads(out.stdout)["queues"]}
    assert "WRONGTYPE" in queues["w1"]["error"] and "rhailib:w1" in queues["w1"]["error"]
    assert (queues["w2"]["queued"], queues["w2"]["dead_letters"], queues["w2"]["error"]) == (
        3,
        1,
        "",
    )
    assert queues["w3"]["paused"] and not queues["w3"]["error"]
    (line,) = out.stderr.splitlines()
    assert line.startswith("rhailambda status: queue w1: ") and "Traceback" not in out.stderr

    table = status(redis_url)
    assert table.returncode == 1 and "w2" in table.stdout and "WRONGTYPE" in table.stdout
    assert table.stderr.splitlines() == [line]

    redis_client.delete(L.queue("w1"))
    assert status(redis_url, "--json").returncode == 0, "all readable again"
