"""Redis commands per task (by command and by who issues them) and a shim's idle cost.

Counting uses ``MONITOR``: it shows every command with the client's address, and
``lua`` for commands a script runs, so top-level commands (round trips, pipelines
aside) and the work inside our Lua scripts are told apart. The EVALSHA calls are
named after the script (sha1 of our Lua sources). MONITOR slows Redis down, so it
runs on its own smaller run, never on a timed one.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bench.config import BenchConfig
from bench.infra import PY, Shim, commandstats, cpu_s, delta, descendants, run_json
from rhailambda import client, taskstore
from rhailambda.shim import redis_queue

__all__ = ["Monitor", "commands_per_task", "idle_cost", "script_names"]

_LINE = re.compile(r'^\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]*)")?')


def script_names() -> dict[str, str]:
    """sha1 -> a readable name, for every Lua script of the shim and the function."""
    from rhailambda.shim import redis_lease

    out: dict[str, str] = {}
    for module in (taskstore, redis_queue, redis_lease, client):
        for attr in dir(module):
            value = getattr(module, attr)
            if attr.endswith("_LUA") and isinstance(value, str):
                name = attr.removesuffix("_LUA").lstrip("_").lower()
                out[hashlib.sha1(value.encode()).hexdigest()] = name
    return out


class Monitor:
    """Collects MONITOR lines in a thread: top-level and in-Lua command counts."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, decode_responses=True)
        self.top: Counter[str] = Counter()
        self.lua: Counter[str] = Counter()
        self._names = script_names()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def _run(self) -> None:
        with self._client.monitor() as mon:
            conn = mon.connection
            assert conn is not None
            self._ready.set()
            while not self._stop.is_set():
                if not conn.can_read(timeout=0.1):
                    continue
                raw = conn.read_response()
                self._count(str(raw))

    def _count(self, line: str) -> None:
        m = _LINE.match(line)
        if m is None:
            return
        who, cmd, arg = m.group(1), m.group(2).lower(), m.group(3) or ""
        if cmd in ("evalsha", "eval"):
            cmd = f"evalsha:{self._names.get(arg, arg[:8])}" if cmd == "evalsha" else "eval"
        (self.lua if who == "lua" else self.top)[cmd] += 1

    def __enter__(self) -> Monitor:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # let the tail of the stream arrive
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self._client.close()


_CLIENT_CMDS = {"hset", "lpush", "lpop", "blpop", "evalsha:pop_many"}


def commands_per_task(
    cfg: BenchConfig, url: str, shim_args: Sequence[str], log: Path
) -> dict[str, Any]:
    """One run of N tasks (N/4 at most 5,000) under MONITOR and commandstats."""
    n = min(5000, max(500, cfg.n_tasks // 4))
    admin = redis.Redis.from_url(url, decode_responses=True)
    args = [*shim_args, "--local-workers", str(cfg.processes)]
    with Shim(url, "bench-cmd", args, log=log):
        run_json([PY, "-m", "bench.load", url, "bench-cmd", "200"], timeout_s=120)  # warm
        admin.config_resetstat()
        before = commandstats(admin)
        with Monitor(url) as mon:
            res = run_json([PY, "-m", "bench.load", url, "bench-cmd", str(n)], timeout_s=600)
        stats = delta(commandstats(admin), before)
    admin.close()
    if res["ok"] != n:
        raise RuntimeError(f"commands run: {res['ok']} of {n} replies were right")
    for noise in ("monitor", "info", "config|resetstat", "config"):
        stats.pop(noise, None)
        mon.top.pop(noise, None)
    batches = mon.top.get("evalsha:claim", 0)
    shim_top = {
        k: v
        for k, v in mon.top.items()
        if k not in _CLIENT_CMDS and "claim" not in k and "finish" not in k
    }
    return {
        "n": n,
        "shim_args": " ".join(args),
        "commandstats_per_task": {k: v / n for k, v in stats.items()},
        "all_per_task": sum(stats.values()) / n,
        "top_level_per_task": {k: v / n for k, v in sorted(mon.top.items())},
        "top_level_total_per_task": sum(mon.top.values()) / n,
        "in_lua_per_task": {k: v / n for k, v in sorted(mon.lua.items())},
        "client_per_task": sum(v for k, v in mon.top.items() if k in _CLIENT_CMDS) / n,
        "batches": batches,
        "tasks_per_batch": n / batches if batches else None,
        "function_round_trips_per_batch": (
            (mon.top.get("evalsha:claim", 0) + mon.top.get("evalsha:finish", 0)) / batches
            if batches
            else None
        ),
        "shim_round_trips_per_batch": sum(shim_top.values()) / batches if batches else None,
        "shim_commands": dict(shim_top),
    }


def idle_cost(cfg: BenchConfig, url: str, shim_args: Sequence[str], log: Path) -> dict[str, Any]:
    """A shim on an empty queue: commands per minute and CPU of it and its workers."""
    admin = redis.Redis.from_url(url, decode_responses=True)
    args = [*shim_args, "--local-workers", str(cfg.processes)]
    with Shim(url, "bench-idle", args, log=log) as shim:
        run_json([PY, "-m", "bench.load", url, "bench-idle", "50"], timeout_s=120)  # workers up
        time.sleep(2)
        shim_pid = shim.pid
        workers = descendants(shim_pid)
        cpu0 = {pid: cpu_s(pid) for pid in [shim_pid, *workers]}
        admin.config_resetstat()
        before = commandstats(admin)
        with Monitor(url) as mon:
            started = time.monotonic()
            time.sleep(cfg.idle_s)
            elapsed = time.monotonic() - started
        stats = delta(commandstats(admin), before)
        cpu1 = {pid: cpu_s(pid) for pid in cpu0 if Path(f"/proc/{pid}").exists()}
        shim.check()
    admin.close()
    for noise in ("monitor", "info", "config|resetstat", "config"):
        stats.pop(noise, None)
        mon.top.pop(noise, None)
    per_min = 60.0 / elapsed
    shim_cpu = cpu1.get(shim_pid, 0.0) - cpu0[shim_pid]
    worker_cpu = sum(cpu1[p] - cpu0[p] for p in workers if p in cpu1)
    return {
        "seconds": elapsed,
        "shim_args": " ".join(args),
        "commands_per_min": sum(stats.values()) * per_min,
        "top_level_per_min": sum(mon.top.values()) * per_min,
        "by_command_per_min": {k: v * per_min for k, v in sorted(mon.top.items())},
        "shim_cpu_pct": 100 * shim_cpu / elapsed,
        "workers_cpu_pct": 100 * worker_cpu / elapsed,
        "workers_alive_after": len([p for p in workers if p in cpu1]),
    }
