"""End-to-end throughput: N tasks submitted at once, every reply awaited; tasks per second.

Ours: the shim (local backend) as a child process, our client as another
(``bench.load``). Peers: their workers and clients in their venvs
(``bench.peers``). Each system is warmed first (workers started, one small run),
then measured ``runs`` times on the same redis-server; the figure is the median.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from bench.config import BenchConfig
from bench.infra import PY, Shim, cpu_s, descendants, run_json
from bench.peers import PEER_NOTES, PeerWorkers, commands

__all__ = ["ours", "peer", "sweep"]

WORKER = "bench"
Tick = Callable[[], None] | None


def _check(res: dict[str, Any], who: str) -> None:
    if res["ok"] != res["n"]:
        raise RuntimeError(f"{who}: {res['ok']} of {res['n']} replies were right")


def _summary(rates: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(rates), "runs": rates, "min": min(rates), "max": max(rates)}


class CpuMeter:
    """CPU seconds used by Redis, the shim, its workers and our client over one run."""

    def __init__(self, redis_pid: int | None, shim_pid: int) -> None:
        self._pids = {
            "redis": [redis_pid] if redis_pid else [],
            "shim": [shim_pid],
            "workers": descendants(shim_pid),
        }
        self._before = self._read()

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pids in self._pids.items():
            total = 0.0
            for pid in pids:
                with contextlib.suppress(OSError):  # a worker that retired meanwhile
                    total += cpu_s(pid)
            out[name] = total
        return out

    def per_1000(self, n: int, client_cpu_s: float) -> dict[str, float]:
        """ms of CPU per 1,000 tasks; the client's as it measured itself (start-up excluded)."""
        after = self._read()
        out = {k: (after[k] - self._before[k]) * 1e6 / n for k in after}
        out["client"] = client_cpu_s * 1e6 / n
        return out


def ours(
    cfg: BenchConfig,
    url: str,
    shim_args: Sequence[str],
    log: Path,
    runs: int,
    tick: Tick = None,
    redis_pid: int | None = None,
    *,
    signed: bool = False,
    plain_ids: bool = False,
) -> dict[str, Any]:
    """Our throughput; ``signed``: the client signs every task, the function verifies it;
    ``plain_ids``: plain UUID task ids (no slot tag on a cluster, as the Rust dispatcher's)."""
    args = [*shim_args, "--local-workers", str(cfg.processes)]
    rates, cpu = [], []
    extra = (["signed"] if signed else []) + (["plain"] if plain_ids else [])
    with Shim(url, WORKER, args, log=log) as shim:
        warm = run_json(
            [PY, "-m", "bench.load", url, WORKER, str(min(1000, cfg.n_tasks)), *extra],
            timeout_s=300,
        )
        _check(warm, "ours (warm-up)")
        for _ in range(runs):
            meter = CpuMeter(redis_pid, shim.pid)
            res = run_json(
                [PY, "-m", "bench.load", url, WORKER, str(cfg.n_tasks), *extra], timeout_s=900
            )
            cpu.append(meter.per_1000(cfg.n_tasks, res["cpu_s"]))
            _check(res, "ours")
            shim.check()
            rates.append(res["rate"])
            if tick:
                tick()
    cpu_ms = {k: statistics.median(c[k] for c in cpu) for k in cpu[0]}
    return {
        **_summary(rates),
        "settings": " ".join(args),
        "cpu_ms_per_1000_tasks": cpu_ms,
        "command": " ".join(Shim(url, WORKER, args, log=log).cmd[1:]),
    }


def peer(cfg: BenchConfig, name: str, url: str, log: Path, tick: Tick = None) -> dict[str, Any]:
    redis.Redis.from_url(url).flushall()
    rates = []
    with PeerWorkers(cfg, name, url, log) as workers:
        _check(workers.client(50, timeout_s=120), f"{name} (warm-up)")  # also waits for startup
        _check(workers.client(min(1000, cfg.n_tasks)), f"{name} (warm-up)")
        for _ in range(cfg.runs):
            res = workers.client(cfg.n_tasks)
            _check(res, name)
            rates.append(res["rate"])
            if tick:
                tick()
    redis.Redis.from_url(url).flushall()
    return {**_summary(rates), "settings": PEER_NOTES[name], "workers": commands(cfg, name)}


SWEEP_GRID = {
    "--batch-size": (10, 100, 200, 500),
    "--batch-window-ms": (0, 2, 5),
    "--max-concurrency": (2, 4),
}


def sweep(
    cfg: BenchConfig, url: str, log: Path, tick: Tick = None, redis_pid: int | None = None
) -> list[dict[str, Any]]:
    """One run of every combination of the shim's knobs; best first."""
    rows = []
    keys = list(SWEEP_GRID)
    for values in itertools.product(*SWEEP_GRID.values()):
        args = [str(x) for pair in zip(keys, values, strict=True) for x in pair]
        res = ours(cfg, url, args, log, runs=1, redis_pid=redis_pid)
        rows.append(
            {
                "args": " ".join(args),
                "rate": res["median"],
                "cpu_ms_per_1000_tasks": res["cpu_ms_per_1000_tasks"],
            }
        )
        if tick:
            tick()
    return sorted(rows, key=lambda r: -r["rate"])


def sweep_size() -> int:
    return len(list(itertools.product(*SWEEP_GRID.values())))
