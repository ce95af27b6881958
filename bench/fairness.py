"""Fair share across circles (``BENCH_ONLY=fairness``): one circle's flood, another's wait.

Per mode (``RHAILAMBDA_FAIR_SHARE`` on, then off; ``BENCH_RUNS`` rounds, each figure
the median), on a shim with ``SHIM_ARGS`` and 2 local workers, warmed first:

1. *alone*: circle B submits 100 tasks to the empty queue; each one's wait is its
   reply's ``updatedAt`` (the function finished it) minus its ``createdAt`` (the
   client submitted it): p50 / p99.
2. *flood*: circle A submits ``FLOOD`` tasks, then B its 100 at once: B's waits as
   above, and A's throughput (A's tasks / first A submit to last A finish).

Every task runs ``SCRIPT_5MS`` (a loop of about 5 ms on a quiet machine). One batch's
time is measured: ``BATCH`` tasks to the idle queue, submit to their replies. The
target (issue 14): with fair share, B's p99 in the flood is at most twice its p99
alone plus one batch, and A's
throughput drops by at most 10 % against fair share off.

Also: one circle's throughput on the trivial script with fair share on and off
(``BENCH_SHIM_ARGS``, interleaved runs: a queue with one circle keeps its speed), the
shim's memory per read-ahead id (tracemalloc over the scheduler and the source's
bookkeeping of 50,000 ids), and Redis's time per ack on a 50,000-id in-flight list,
scanning from the old end (``LREM -1``, what acks do) against from the new end.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from bench.config import SCRIPT, BenchConfig
from bench.infra import Shim
from rhailambda.client import Client, Reply

__all__ = ["fairness"]

WORKER = "fair"
SCRIPT_5MS = "let s = 0; for i in 0..25000 { s += i; } s"  # ~5 ms on a quiet machine
SHIM_ARGS = ("--batch-size", "20", "--max-concurrency", "2", "--local-workers", "2")
BATCH = 20
B_TASKS = 100
Tick = Callable[[], None]


def _ts(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _waits(replies: dict[str, Reply]) -> list[float]:
    return [_ts(r.raw["updatedAt"]) - _ts(r.raw["createdAt"]) for r in replies.values()]


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _batch_s(client: Client) -> float:
    """One batch's time: BATCH tasks to an idle queue go out as one invocation, and
    every reply of a batch carries the batch's finish time (one finish script)."""
    client.wait_many(client.submit_many([(SCRIPT_5MS, WORKER, "warm", "warm")] * 40), 120)
    ids = client.submit_many([(SCRIPT_5MS, WORKER, "warm", "warm")] * BATCH)
    replies = client.wait_many(ids, 120).values()
    return max(_ts(r.raw["updatedAt"]) for r in replies) - min(
        _ts(r.raw["createdAt"]) for r in replies
    )


def _mode(url: str, flood: int, fair: bool, log: Path) -> dict[str, Any]:
    env = {"RHAILAMBDA_FAIR_SHARE": "true" if fair else "false"}
    with Shim(url, WORKER, SHIM_ARGS, log=log, env=env), Client(url) as client:
        batch_s = _batch_s(client)
        ids = client.submit_many([(SCRIPT_5MS, WORKER, "b", "b")] * B_TASKS)
        alone = _waits(client.wait_many(ids, 120))
        a_ids = client.submit_many([(SCRIPT_5MS, WORKER, "a", "a")] * flood)
        b_ids = client.submit_many([(SCRIPT_5MS, WORKER, "b", "b")] * B_TASKS)
        b_replies = client.wait_many(b_ids, 1200)
        a_replies = client.wait_many(a_ids, 1200)
    bad = [r for r in (*a_replies.values(), *b_replies.values()) if r.output != "312487500"]
    if bad:
        raise RuntimeError(f"{len(bad)} wrong replies, e.g. {bad[0]}")
    waits = _waits(b_replies)
    a_start = min(_ts(r.raw["createdAt"]) for r in a_replies.values())
    a_end = max(_ts(r.raw["updatedAt"]) for r in a_replies.values())
    b_done = max(_ts(r.raw["updatedAt"]) for r in b_replies.values())
    a_before_b = sum(1 for r in a_replies.values() if _ts(r.raw["updatedAt"]) < b_done)
    return {
        "batch_s": batch_s,
        "b_alone_p50_s": _p(alone, 0.5),
        "b_alone_p99_s": _p(alone, 0.99),
        "b_flood_p50_s": _p(waits, 0.5),
        "b_flood_p99_s": _p(waits, 0.99),
        "a_done_before_b_done": a_before_b,
        "a_rate": flood / (a_end - a_start),
    }


def _one_circle(cfg: BenchConfig, url: str, log: Path, runs: int) -> dict[str, Any]:
    """Trivial-script throughput of one circle, fair share on and off, interleaved."""
    rates: dict[str, list[float]] = {"on": [], "off": []}
    args = (*cfg.shim_args, "--local-workers", str(cfg.processes))
    for _ in range(runs):
        for mode in ("on", "off"):
            env = {"RHAILAMBDA_FAIR_SHARE": "true" if mode == "on" else "false"}
            with Shim(url, WORKER, args, log=log, env=env), Client(url) as client:
                client.wait_many(client.submit_many([(SCRIPT, WORKER, "c", "c")] * 1000), 120)
                started = time.perf_counter()
                ids = client.submit_many([(SCRIPT, WORKER, "c", "c")] * cfg.n_tasks)
                replies = client.wait_many(ids, 600)
                rates[mode].append(cfg.n_tasks / (time.perf_counter() - started))
            if sum(r.output == "20" for r in replies.values()) != cfg.n_tasks:
                raise RuntimeError("one-circle run: wrong replies")
    return {m: {"median": statistics.median(v), "runs": v} for m, v in rates.items()}


def _memory_per_id(n: int = 50_000) -> float:
    """Bytes of shim memory per read-ahead id: the scheduler's entry and the source's."""
    from rhailambda.shim.fair import CircleScheduler
    from rhailambda.shim.source import Ahead

    ids = [str(uuid.uuid4()) for _ in range(n)]  # ids as a client makes them (36 chars)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    sched: CircleScheduler[Ahead] = CircleScheduler()
    held: Counter[str] = Counter()
    for i, task_id in enumerate(ids):
        sched.push(f"circle{i % 10}", Ahead(task_id, f"circle{i % 10}"))
        held[task_id] += 1
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / n


def _ack_cost(url: str, n: int = 50_000, acks: int = 1000) -> dict[str, float]:
    """Redis µs per LREM of an old id from an n-id in-flight list, by scan direction."""
    client = redis.Redis.from_url(url)
    out: dict[str, float] = {}
    try:
        for count in (-1, 1):
            client.delete("bench:inflight")
            ids = [f"id{i:06d}" for i in range(n)]
            for i in range(0, n, 5000):
                client.lpush("bench:inflight", *ids[i : i + 5000])  # newest on the left
            client.config_resetstat()
            pipe = client.pipeline(transaction=False)
            for task_id in ids[:acks]:  # the oldest: read ahead first, acked first
                pipe.lrem("bench:inflight", count, task_id)
            pipe.execute()
            stats = client.info("commandstats")["cmdstat_lrem"]
            out["old_end" if count == -1 else "new_end"] = float(stats["usec_per_call"])
        client.delete("bench:inflight")
    finally:
        client.close()
    return out


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    out["runs"] = runs
    return out


def fairness(cfg: BenchConfig, url: str, logs: Path, tick: Tick) -> dict[str, Any]:
    flood = 2_000 if cfg.quick else 20_000
    # Rounds of on then off, so load from elsewhere on a shared machine falls on both.
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    for _ in range(cfg.runs):
        for fair in (True, False):
            found = _mode(url, flood, fair, logs / "fairness-shim.log")
            runs["on" if fair else "off"].append(found)
            redis.Redis.from_url(url).flushall()
        tick()
    modes = {k: _median(v) for k, v in runs.items()}
    on, off = modes["on"], modes["off"]
    batch_s = on["batch_s"]
    return {
        "flood": flood,
        "b_tasks": B_TASKS,
        "shim_args": " ".join(SHIM_ARGS),
        "script": SCRIPT_5MS,
        "modes": modes,
        "batch_s": batch_s,
        "target_b_p99_s": 2 * on["b_alone_p99_s"] + batch_s,
        "a_rate_drop": 1 - on["a_rate"] / off["a_rate"],
        "one_circle": _one_circle(cfg, url, logs / "fairness-one-circle.log", cfg.runs),
        "bytes_per_read_ahead_id": _memory_per_id(),
        "lrem_usec_50k": _ack_cost(url),
    }


def markdown(r: dict[str, Any]) -> list[str]:
    """The fairness section's tables for RESULTS.md (none when it did not run)."""
    f = r.get("fairness")
    if not f:
        return []
    on, off = f["modes"]["on"], f["modes"]["off"]
    met_b = on["b_flood_p99_s"] <= f["target_b_p99_s"]
    met_a = f["a_rate_drop"] <= 0.10
    one = f["one_circle"]
    lrem = f["lrem_usec_50k"]
    return [
        "",
        f"## Fair share across circles (`BENCH_ONLY=fairness`; shim `{f['shim_args']}`)",
        "",
        f"Circle A floods {f['flood']:,} tasks of `{f['script']}` "
        f"then circle B submits {f['b_tasks']}; a wait is submit to finish (a reply comes "
        f"when its batch ends). One batch of {BATCH} to an idle queue, submit to "
        f"replies: {f['batch_s']:.2f} s.",
        "",
        "| fair share | B p50 / p99 alone (s) | B p50 / p99 in the flood (s) "
        "| A tasks finished before B's last | A tasks/s |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {m['b_alone_p50_s']:.2f} / {m['b_alone_p99_s']:.2f} "
            f"| {m['b_flood_p50_s']:.2f} / {m['b_flood_p99_s']:.2f} "
            f"| {m['a_done_before_b_done']:,} | {m['a_rate']:,.0f} |"
            for name, m in (("on", on), ("off", off))
        ),
        "",
        f"- B's p99 in the flood, fair share on: {on['b_flood_p99_s']:.2f} s; target "
        f"(2 x p99 alone + one batch) {f['target_b_p99_s']:.2f} s: "
        f"{'met' if met_b else 'NOT met'}.",
        f"- A's throughput, fair share on against off: {-f['a_rate_drop']:+.1%} "
        f"(target: a drop of at most 10 %): {'met' if met_a else 'NOT met'}.",
        f"- One circle, `let x = 10; x * 2`: {one['on']['median']:,.0f} tasks/s with fair "
        f"share on, {one['off']['median']:,.0f} off (runs: "
        f"{', '.join(f'{x:,.0f}' for x in one['on']['runs'])} / "
        f"{', '.join(f'{x:,.0f}' for x in one['off']['runs'])}).",
        f"- Shim memory per read-ahead id: {f['bytes_per_read_ahead_id']:.0f} bytes "
        f"(50,000 ids: {f['bytes_per_read_ahead_id'] * 50_000 / 1e6:.1f} MB).",
        f"- Redis time per ack (LREM) of an old id in a 50,000-id in-flight list: "
        f"{lrem['old_end']:.1f} µs scanning from the old end (`LREM -1`, as acks do), "
        f"{lrem['new_end']:,.0f} µs from the new end.",
    ]
