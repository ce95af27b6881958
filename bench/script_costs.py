"""What one task costs in Redis calls, per step, standalone against a one-node cluster.

``python -m bench.script_costs [N]`` seeds N tasks (default 20,000) on a standalone
Valkey 9 and on a one-node Valkey 9 cluster (the shape ElastiCache Serverless shows
its clients), then takes each batch of 100 through the steps the shim and the function
run, with the real scripts: *deliver* (the shim's, ``shim.taskslot.DELIVER_LUA``),
*claim*, and the finish (``TaskStore.finish``: one script on a standalone server; stage,
push and clean on a cluster, one script per task's slot). Per step it prints the
server's CPU (utime + stime from /proc) and the caller's CPU (``time.process_time``:
the function's share), in microseconds per task, and the Redis calls made inside
scripts per task (``INFO commandstats``).

A standalone server runs each step as one script over the whole batch; a cluster runs
it once per task (each task's keys live in their own slot), and the reply's slot
differs from the task's, so the finish takes three scripts instead of one. The gap
between the two columns is what the cluster path costs per task.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import redis

from bench.config import REPO
from bench.infra import commandstats, cpu_s, delta, server_pid
from rhailambda.event import TaskRef
from rhailambda.resp import RespClient, from_url
from rhailambda.settings import ProtocolSettings
from rhailambda.shim.taskslot import DELIVER_LUA
from rhailambda.slots import by_group
from rhailambda.taskstore import Finish, TaskStore

sys.path.insert(0, str(REPO / "tests"))
from redis_cluster import ClusterUnderTest
from redis_server import RedisServer

BATCH = 100
STEPS = ("deliver", "claim", "finish")


def _seed(r: redis.Redis, ids: list[str]) -> None:
    pipe = r.pipeline(transaction=False)
    for t in ids:
        pipe.hset(
            f"rhailib:{t}",
            mapping={
                "taskId": t,
                "script": "let x = 10; x * 2",
                "callerId": "bench",
                "contextId": "bench",
                "workerId": "bench",
                "status": "pending",
                "createdAt": "2026-12-02T00:00:00Z",
                "updatedAt": "2026-12-02T00:00:00Z",
            },
        )
    pipe.execute()


def _deliver(client: RespClient, protocol: ProtocolSettings, ids: list[str]) -> list[int]:
    layout = protocol.layout
    task_keys = [layout.task(t) for t in ids]
    script = client.script(DELIVER_LUA)
    calls: list[tuple[list[str], list[str | int]]] = []
    for idx in by_group(range(len(ids)), task_keys, client.slot_group, per_item=2):
        keys = [k for i in idx for k in (task_keys[i], layout.done(ids[i]))]
        calls.append((keys, []))
    return [int(v[1]) for reply in script.many(calls) for v in reply]


def measure(url: str, pid: int, n: int) -> dict[str, dict[str, float]]:
    """Per step: server CPU, caller CPU (µs per task) and Redis calls per task."""
    protocol = ProtocolSettings()
    client = from_url(url)
    store = TaskStore(client, protocol)
    r = redis.Redis.from_url(url)
    ids = [f"cost-{i}" for i in range(n)]
    _seed(r, ids)
    server = dict.fromkeys(STEPS, 0.0)
    caller = dict.fromkeys(STEPS, 0.0)
    calls: dict[str, int] = dict.fromkeys(STEPS, 0)

    def timed(step: str, fn: Callable[[], list[Any]]) -> list[Any]:
        before, s0, c0 = commandstats(r), cpu_s(pid), time.process_time()
        out = fn()
        c1, s1 = time.process_time(), cpu_s(pid)
        caller[step] += c1 - c0
        server[step] += s1 - s0
        made = delta(commandstats(r), before)
        calls[step] += sum(v for k, v in made.items() if k not in ("evalsha", "info"))
        return out

    batches = [ids[start : start + BATCH] for start in range(0, n, BATCH)]
    # one step over every batch at a time: /proc counts CPU in 10 ms ticks
    attempts = timed("deliver", lambda: [_deliver(client, protocol, b) for b in batches])
    refs = [
        [TaskRef(t, a) for t, a in zip(b, at, strict=True)]
        for b, at in zip(batches, attempts, strict=True)
    ]
    claims = timed("claim", lambda: [store.claim(batch) for batch in refs])
    finishes = [
        [Finish(c.ref, c.fields, "completed", output="20") for c in cs if c.fields] for cs in claims
    ]
    timed("finish", lambda: [store.finish(f) for f in finishes])
    client.close()
    r.close()
    return {
        step: {
            "server_us": server[step] * 1e6 / n,
            "caller_us": caller[step] * 1e6 / n,
            "calls": calls[step] / n,
        }
        for step in STEPS
    }


def main(n: int) -> None:
    rows: dict[str, dict[str, dict[str, float]]] = {}
    node = RedisServer(kind="valkey").start()
    try:
        rows["standalone"] = measure(node.url, server_pid(node) or 0, n)
    finally:
        node.stop()
    cluster = ClusterUnderTest("valkey", 1)
    try:
        cluster.start()
        rows["one-node cluster"] = measure(cluster.url, server_pid(cluster.seed) or 0, n)
    finally:
        cluster.close()
    print(f"{n} tasks in batches of {BATCH}; µs of CPU per task (server / caller), Redis calls")
    print(f"{'step':10s}" + "".join(f"{name:>34s}" for name in rows))
    for step in (*STEPS, "total"):
        line = f"{step:10s}"
        for figures in rows.values():
            picked = figures.values() if step == "total" else [figures[step]]
            s = sum(f["server_us"] for f in picked)
            c = sum(f["caller_us"] for f in picked)
            k = sum(f["calls"] for f in picked)
            line += f"{s:14.1f} / {c:5.1f} us {k:6.1f} calls"
        print(line)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
