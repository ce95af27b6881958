"""The biggest reads a script may make, on a real redis-server: nobody else waits on them.

A probe process PINGs Redis while a script runs ``db::find`` / ``db::list``
over the largest data the limits allow; the slowest PING must stay short. Time inside
``db::`` calls counts against the script's timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from rhailambda import protocol as p
from rhailambda.circle.extension import CircleExtension
from rhailambda.circle.names import encode_context
from rhailambda.circle.redis_store import RedisCircleStore
from rhailambda.circle.settings import Limits
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.functions.runner import BatchRunner
from rhailambda.functions.settings import EngineLimits, FunctionSettings
from rhailambda.resp import from_url
from rhailambda.taskstore import TaskStore

pytest.importorskip("rhai_py")

LAYOUT = p.KeyLayout()
RECORD_BYTES = 60_000
LIMITS = Limits()


def _seed(r: redis.Redis, count: int) -> None:
    rec = LAYOUT.circle(encode_context("alice"), "rec", "big")
    idx = LAYOUT.circle(encode_context("alice"), "idx", "big")
    pipe = r.pipeline(transaction=False)
    for i in range(count):
        body = json.dumps({"k": i % 100, "pad": "x" * RECORD_BYTES}, separators=(",", ":"))
        pipe.hset(rec, f"{i:06d}", f"v1|{body}")
        pipe.zadd(idx, {f"{i:06d}": 0})
        if i % 50 == 49:
            pipe.execute()
    pipe.execute()


_PROBE = """
import sys, time, redis
r = redis.Redis.from_url(sys.argv[1], socket_timeout=30)
r.ping()
print("ready", flush=True)
worst, pings = 0.0, 0
while not sys.stdin.closed:
    started = time.perf_counter()
    r.ping()
    worst, pings = max(worst, time.perf_counter() - started), pings + 1
    if select.select([sys.stdin], [], [], 0.002)[0]:
        break
print(worst, pings, flush=True)
""".replace("import sys", "import select, sys")


class Probe:
    """PINGs from its own process (the runner's Python cannot delay it: no shared GIL)
    until stopped; reports the slowest round trip. Redis's own SLOWLOG is watched too:
    it times each call on the server alone, so a loaded machine does not move it."""

    def __init__(self, url: str, client: redis.Redis) -> None:
        self._url, self._r = url, client
        self.worst_s = 0.0
        self.pings = 0
        self.slow: list[object] = []

    def __enter__(self) -> Probe:
        self._r.config_set("slowlog-log-slower-than", 50_000)  # µs: the 50 ms rule
        self._r.slowlog_reset()
        self._proc = subprocess.Popen([sys.executable, "-c", _PROBE, self._url], text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert self._proc.stdout is not None and self._proc.stdout.readline() == "ready\n"
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self._proc.communicate("stop\n", timeout=60)
        worst, pings = out.split()
        self.worst_s, self.pings = float(worst), int(pings)
        self.slow = list(self._r.slowlog_get(128))
        self._r.config_set("slowlog-log-slower-than", 10_000)


@pytest.fixture
def runner(redis_url: str) -> Iterator[BatchRunner]:
    settings = FunctionSettings(limits=EngineLimits(timeout_s=30.0))
    tasks_client, circle_client = from_url(redis_url), from_url(redis_url)
    circle = CircleExtension(RedisCircleStore(circle_client), LIMITS)
    yield BatchRunner(settings, TaskStore(tasks_client, settings.protocol), [circle])
    tasks_client.close()
    circle_client.close()


def _run(r: redis.Redis, runner: BatchRunner, script: str, budget_s: float = 60) -> dict[str, str]:
    r.hset(LAYOUT.task("t"), mapping={"taskId": "t", "script": script, "callerId": "alice",
                                      "contextId": "alice", "status": "pending",
                                      "createdAt": "now"})  # fmt: skip
    runner.run(InvocationEvent("w", (TaskRef("t", 1),)), budget_s)
    reply: dict[str, str] = json.loads(str(r.lpop(LAYOUT.reply("t")) or "{}"))
    return reply


def test_the_biggest_find_and_list_do_not_block_redis(
    redis_url: str, redis_client: redis.Redis, runner: BatchRunner
) -> None:
    # the most db::find may read: max_scan_bytes of records
    count = LIMITS.max_scan_bytes // (RECORD_BYTES + 20)
    _seed(redis_client, count)
    with Probe(redis_url, redis_client) as probe:
        found = _run(redis_client, runner, 'db::find("big", "k", 7).len()')
        page = LIMITS.max_result_bytes // (RECORD_BYTES + 20)
        listed = _run(redis_client, runner, f'db::list("big", 0, {page}).len()')
    assert (found["status"], found["output"]) == ("completed", str(len(range(7, count, 100))))
    assert (listed["status"], listed["output"]) == ("completed", str(page))
    assert probe.pings > 10
    assert not probe.slow, f"Redis ran calls over 50 ms: {probe.slow}"
    # The words: a probe PING stays under 100 ms. The worst of hundreds of
    # PINGs, from a process of its own; 2x the 50 ms per-call rule SLOWLOG checks
    # above, which leaves room for one scheduling hiccup of this 2-core machine.
    assert probe.worst_s < 0.1, f"a PING waited {probe.worst_s * 1000:.0f} ms"


def test_past_the_limits_the_script_gets_a_clear_error(
    redis_client: redis.Redis, runner: BatchRunner
) -> None:
    count = LIMITS.max_scan_bytes // (RECORD_BYTES + 20) + 20
    _seed(redis_client, count)
    found = _run(redis_client, runner, 'db::find("big", "k", 7).len()')
    assert found["status"] == "error" and "page through it with db::list" in found["error"]
    listed = _run(redis_client, runner, 'db::list("big", 0, 1000).len()')
    assert listed["status"] == "error" and "ask for fewer" in listed["error"], listed


def test_time_in_db_calls_counts_against_the_script_timeout(
    redis_url: str, redis_client: redis.Redis
) -> None:
    _seed(redis_client, 100)
    settings = FunctionSettings(limits=EngineLimits(timeout_s=0.5))
    client = from_url(redis_url)
    circle = CircleExtension(RedisCircleStore(client), LIMITS)
    runner = BatchRunner(settings, TaskStore(client, settings.protocol), [circle])
    started = time.monotonic()
    reply = _run(redis_client, runner, 'loop { db::find("big", "k", 1); }')
    elapsed = time.monotonic() - started
    client.close()
    assert reply["status"] == "error" and "timed out" in reply["error"], reply
    assert elapsed < 2.0, f"a 0.5 s script ran {elapsed:.1f} s"
