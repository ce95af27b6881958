"""Latency at light load: one client, one task at a time, through the shim (local backend).

``warm``: submit, wait for the reply, repeat (after a warm-up); p50 / p99 of
submit-to-reply. ``idle``: the first task after a pause shorter than the local
pool's idle timeout (the shim blocks in BLMOVE, the workers are warm), and after
a pause longer than it (the pool scaled to zero: a worker cold start is included).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.config import SCRIPT, BenchConfig
from bench.infra import Shim
from rhailambda.client import Client

__all__ = ["IDLE_TIMEOUT_S", "WORKER", "latency", "warm"]

WORKER = "bench-lat"
IDLE_TIMEOUT_S = 3.0  # the pool's idle timeout for this section (default 300 s)
SHORT_PAUSE_S = 1.0
LONG_PAUSE_S = IDLE_TIMEOUT_S + 2.0


def _one(client: Client) -> float:
    started = time.perf_counter()
    task_id = client.submit(SCRIPT, worker_id=WORKER, context_id="bench", caller_id="bench")
    reply = client.wait(task_id, 30)
    elapsed = time.perf_counter() - started
    if reply.output != "20":
        raise RuntimeError(f"unexpected reply {reply.raw}")
    return elapsed * 1e3


def _ping_ms(client: Client) -> float:
    """One bare Redis round trip from the client: the machine's own wake-up cost."""
    started = time.perf_counter()
    client._redis.execute("PING")
    return (time.perf_counter() - started) * 1e3


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def warm(
    client: Client, runs: int, samples: int, tick: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Warm p50 / p99 / mean of ``samples`` one-at-a-time tasks, the median of ``runs``.

    A shim serving ``WORKER`` must be running against the client's Redis.
    """
    for _ in range(50):  # warm: both workers started, scripts compiled, connections open
        _one(client)
    rows = []
    for _ in range(runs):
        got = [_one(client) for _ in range(samples)]
        rows.append(
            {
                "p50_ms": _pct(got, 0.5),
                "p99_ms": _pct(got, 0.99),
                "mean_ms": statistics.fmean(got),
            }
        )
        if tick:
            tick()
    return {"warm": {k: statistics.median(r[k] for r in rows) for k in rows[0]}, "warm_runs": rows}


def latency(
    cfg: BenchConfig,
    url: str,
    shim_args: Sequence[str],
    log: Path,
    tick: Callable[[], None] | None = None,
) -> dict[str, Any]:
    args = [
        *shim_args,
        "--local-workers",
        str(cfg.processes),
        "--idle-timeout-s",
        str(IDLE_TIMEOUT_S),
    ]
    reps = 2 if cfg.quick else 5
    out: dict[str, Any] = {"shim_args": " ".join(args)}
    with Shim(url, WORKER, args, log=log) as shim, Client(url) as client:
        out |= warm(client, cfg.runs, cfg.latency_samples, tick)
        for name, pause in (
            ("after_short_pause", SHORT_PAUSE_S),
            ("after_long_pause", LONG_PAUSE_S),
        ):
            samples, pings = [], []
            for _ in range(reps):
                time.sleep(pause)
                pings.append(_ping_ms(client))  # baseline: a PING after the same pause
                time.sleep(pause)
                samples.append(_one(client))
                shim.check()
            out[name] = {
                "pause_s": pause,
                "median_ms": statistics.median(samples),
                "max_ms": max(samples),
                "samples_ms": samples,
                "ping_after_pause_ms": statistics.median(pings),
            }
            if tick:
                tick()
    return out
