"""Latency at light load: one client, one task at a time, through the shim (local backend).

``warm``: submit, wait for the reply, repeat (after a warm-up); p50 / p99 of
submit-to-reply. ``idle``: the first task after a pause shorter than the local
pool's idle timeout (the shim blocks in BLMOVE, the workers are warm), and after
a pause longer than it (the pool scaled to zero: a worker is forked from the
pool's template process, which imported the handler once). Beside them, the
template's own memory while the pool is at zero (RSS and PSS): what the fast
start costs at idle.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.config import SCRIPT, BenchConfig
from bench.infra import Shim, descendants
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


def template_memory(shim_pid: int) -> dict[str, Any] | None:
    """RSS / PSS / USS (kB) of the shim's fork-server template, and how many workers
    it has now; None if there is none (a handler that cannot be forked safely)."""
    for pid in descendants(shim_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        if b"rhailambda.shim.forkserver" not in cmdline:
            continue
        kb = {}
        for line in rollup.splitlines():
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                kb[key] = int(value.split()[0])
        return {
            "rss_kb": kb["Rss"],
            "pss_kb": kb["Pss"],
            "uss_kb": kb["Private_Clean"] + kb["Private_Dirty"],
            "workers_now": len(descendants(pid)),
        }
    return None


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
            samples, pings, memory = [], [], []
            for _ in range(reps):
                time.sleep(pause)
                pings.append(_ping_ms(client))  # baseline: a PING after the same pause
                time.sleep(pause)
                if pause > IDLE_TIMEOUT_S:  # the pool is at zero: the template alone
                    memory.append(template_memory(shim.pid))
                samples.append(_one(client))
                shim.check()
            out[name] = {
                "pause_s": pause,
                "median_ms": statistics.median(samples),
                "max_ms": max(samples),
                "samples_ms": samples,
                "ping_after_pause_ms": statistics.median(pings),
            }
            if memory and all(memory):
                out["template_idle"] = memory[-1]
            if tick:
                tick()
    return out
