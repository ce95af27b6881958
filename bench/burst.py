"""Bursts from zero: N tasks land on an idle stack; the time until the last reply.

Ours: a shim (local backend, ``BENCH_SHIM_ARGS``, ``--local-workers P``) whose pool
retires idle workers after :data:`POOL_IDLE_S`; after a warm-up the section waits
until the shim has no worker process left (the pool scaled to zero), then our client
(``bench.load``) submits N tasks at once: the time from the first submit to the last
reply, the pool's cold start included.

Peers (dramatiq, celery, arq, rq: ``bench/peers/``, started by ``bench.peers``): the
same N tasks enqueued while no worker of theirs runs, then their P worker processes
started: the time from that start to the last result (their cold start included,
the enqueue not). Every system runs once per round on the same redis-server,
flushed before each; rounds interleave the systems so load from elsewhere falls on
all alike, and the ratios (their time / ours) are the median of the per-round ratios.

``BENCH_ONLY=burst python -m bench`` runs this section alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from bench.config import REPO, BenchConfig
from bench.infra import PY, Shim, children, descendants, run_json, wait_for
from bench.peers import PEER_NOTES, PeerWorkers

__all__ = ["OURS", "POOL_IDLE_S", "burst", "markdown", "rows", "worker_pids"]

WORKER = "bench-burst"
OURS = "rhailambda (shim + local backend)"
POOL_IDLE_S = 1.0  # --idle-timeout-s here (default 300 s): the pool scales to zero fast
SCALE_TO_ZERO_TIMEOUT_S = 60.0
WARM_UP_TASKS = 200
COLS = ("system", "time to last reply (s)", "tasks/s", "ratio to ours", "runs (s)", "how")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def worker_pids(shim_pid: int) -> list[int]:
    """The shim's local worker processes, at any depth: exec-started ones run
    ``rhailambda.shim.local_worker``; forked ones are the children of the pool's template
    process (``rhailambda.shim.forkserver``, a child of the shim, which is not a worker)."""
    try:
        templates = {p for p in children(shim_pid) if "rhailambda.shim.forkserver" in _cmdline(p)}
        found = descendants(shim_pid)
    except OSError:  # a process exited while we walked the tree
        return worker_pids(shim_pid) if _cmdline(shim_pid) else []
    return [
        p
        for p in found
        if p not in templates
        and any(
            m in _cmdline(p) for m in ("rhailambda.shim.local_worker", "rhailambda.shim.forkserver")
        )
    ]


def _flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


def _check(res: dict[str, Any], who: str) -> None:
    if res["ok"] != res["n"]:
        raise RuntimeError(f"{who}: {res['ok']} of {res['n']} replies were right")


def ours_once(cfg: BenchConfig, url: str, log: Path) -> dict[str, Any]:
    """One burst on a fresh shim whose pool was warmed, then scaled to zero."""
    args = [
        *cfg.shim_args,
        "--local-workers",
        str(cfg.processes),
        "--idle-timeout-s",
        str(POOL_IDLE_S),
    ]
    with Shim(url, WORKER, args, log=log) as shim:
        warm = run_json(
            [PY, "-m", "bench.load", url, WORKER, str(min(WARM_UP_TASKS, cfg.n_tasks))],
            timeout_s=300,
            cwd=REPO,
        )
        _check(warm, "ours (warm-up)")
        scaled_at = time.monotonic()
        wait_for(
            lambda: not worker_pids(shim.pid),
            SCALE_TO_ZERO_TIMEOUT_S,
            f"the shim's local workers to retire (left: {worker_pids(shim.pid)})",
        )
        idle_wait_s = time.monotonic() - scaled_at
        res = run_json(
            [PY, "-m", "bench.load", url, WORKER, str(cfg.n_tasks)], timeout_s=900, cwd=REPO
        )
        _check(res, "ours")
        shim.check()
    return {
        "elapsed_s": res["elapsed_s"],
        "scale_to_zero_wait_s": idle_wait_s,
        "settings": " ".join(args),
    }


def peer_once(cfg: BenchConfig, name: str, url: str, log: Path) -> dict[str, Any]:
    """The backlog enqueued first, then the peer's workers started."""
    workers = PeerWorkers(cfg, name, url, log)  # not started: burst() starts them
    try:
        res = workers.burst(cfg.n_tasks)
    finally:
        workers.stop()
    _check(res, name)
    return {"elapsed_s": res["elapsed_s"], "enqueue_s": res["enqueue_s"]}


def burst(
    cfg: BenchConfig,
    url: str,
    logs: Path,
    tick: Callable[[], None] | None = None,
    peers: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``cfg.runs`` rounds of ours then each peer; medians, per-round ratios, errors."""
    names = tuple(cfg.peers if peers is None else peers)
    runs: dict[str, list[dict[str, Any]]] = {OURS: [], **{n: [] for n in names}}
    errors: dict[str, str] = {}
    for _ in range(cfg.runs):
        _flush(url)
        runs[OURS].append(ours_once(cfg, url, logs / "burst-shim.log"))
        if tick:
            tick()
        for name in names:
            _flush(url)
            if name not in errors:
                try:
                    runs[name].append(peer_once(cfg, name, url, logs / f"burst-{name}.log"))
                except Exception as exc:  # one peer failing keeps the others' figures
                    errors[name] = f"{type(exc).__name__}: {exc}"[:2000]
            if tick:
                tick()
    _flush(url)
    return summarize(cfg, runs, errors)


def summarize(
    cfg: BenchConfig, runs: dict[str, list[dict[str, Any]]], errors: dict[str, str]
) -> dict[str, Any]:
    ours = [r["elapsed_s"] for r in runs[OURS]]
    systems: dict[str, Any] = {}
    for name, got in runs.items():
        if len(got) < len(ours):  # a peer that failed in some round: no ratio of its own
            continue
        times = [r["elapsed_s"] for r in got]
        entry: dict[str, Any] = {
            "median_s": statistics.median(times),
            "runs_s": times,
            "rate": cfg.n_tasks / statistics.median(times),
            "ratio": statistics.median(t / o for t, o in zip(times, ours, strict=True)),
        }
        if name == OURS:
            entry["settings"] = got[0]["settings"]
        else:
            entry["enqueue_s"] = statistics.median(r["enqueue_s"] for r in got)
            entry["settings"] = PEER_NOTES[name]
        systems[name] = entry
    return {
        "n": cfg.n_tasks,
        "processes": cfg.processes,
        "rounds": cfg.runs,
        "pool_idle_s": POOL_IDLE_S,
        "systems": systems,
        "errors": errors,
    }


def rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per system (ours first), the columns of :data:`COLS`."""
    out = []
    for name, s in ((r.get("burst") or {}).get("systems") or {}).items():
        how = (
            "pool scaled to zero, then submit all"
            if name == OURS
            else f"enqueued first ({s['enqueue_s']:.1f} s), then workers started"
        )
        out.append(
            (
                name,
                f"{s['median_s']:.2f}",
                f"{s['rate']:,.0f}",
                "1" if name == OURS else f"{s['ratio']:.2f}",
                ", ".join(f"{x:.2f}" for x in s["runs_s"]),
                how,
            )
        )
    return out


def markdown(r: dict[str, Any]) -> list[str]:
    b = r.get("burst") or {}
    table = rows(r)
    if not table:
        return []
    lines = [
        "",
        f"## Bursts from zero ({b['n']:,} tasks on an idle stack; {b['processes']} worker "
        f"processes each; ratios: their time / ours, median over {b['rounds']} interleaved "
        "rounds)",
        "",
        f"Ours: the shim's pool retires workers idle {b['pool_idle_s']:g} s; the burst starts "
        "once no worker process is left; first submit to last reply. Peers: the burst is "
        "enqueued while none of their workers runs; their workers' start to their last result.",
        "",
        "| " + " | ".join(COLS) + " |",
        "|---|---:|---:|---:|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    lines += [f"- {name}: failed: {msg}" for name, msg in (b.get("errors") or {}).items()]
    return lines
