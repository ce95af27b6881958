"""``python -m bench`` (``make bench``): every section, a progress bar, then the report.

Writes bench/results/latest.json, bench/results/bench.png and bench/RESULTS.md.
Settings come from ``BENCH_*`` variables (bench/config.py, bench/README.md).
"""

from __future__ import annotations

import compileall
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import (
    burst,
    ceiling,
    coldstart,
    commands,
    deployments,
    fairness,
    latency,
    report,
    throughput,
)
from bench.config import REPO, SECTIONS, BenchConfig
from bench.infra import PY, run_json, server_pid, start_redis
from bench.throughput import sweep_size


def _load() -> str:
    return open("/proc/loadavg").read().split()[0]


def _meta(cfg: BenchConfig) -> dict[str, Any]:
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    given = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("BENCH_"))
    return {
        # make bench runs exactly this (after its set-up steps)
        "command": f"{given} python -m bench".strip(),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": git,
        "cpus": os.cpu_count(),
        "load_before": _load(),
        "python": platform.python_version(),
        "redis": " ".join(redis_v.split()[:3]),
        "runs": cfg.runs,
        "n_tasks": cfg.n_tasks,
        "processes": cfg.processes,
        "quick": cfg.quick,
        "shim_args": " ".join(cfg.shim_args),
        "peers": list(cfg.peers),
    }


def _steps(cfg: BenchConfig) -> dict[str, int]:
    """Progress units per section."""
    return {
        "throughput": 2 * cfg.runs + (sweep_size() if cfg.sweep else 0),
        "peers": cfg.runs * len(cfg.peers),
        "shim": 2 * cfg.runs,
        "latency": cfg.runs + 2,
        "deployments": cfg.runs * (1 + len(deployments.CLUSTERS)),
        "coldstart": max(cfg.runs, coldstart.MIN_RUNS),
        "commands": 2,
        "idle": 1,
        "ceiling": 1,
        "burst": cfg.runs * (1 + len(cfg.peers)),
        "fairness": cfg.runs,
    }


def main() -> int:
    cfg = BenchConfig.from_env()
    console = Console()
    out_dir = cfg.results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = out_dir / "logs"
    results: dict[str, Any] = {"meta": _meta(cfg), "errors": {}}
    steps = _steps(cfg)
    # The package as pip installs it, bytecode compiled: an editable install under
    # PYTHONDONTWRITEBYTECODE=1 would compile every module again in every new process
    # (each worker spawn, each cold start probe).
    compileall.compile_dir(str(REPO / "src"), quiet=1)
    server = start_redis()
    url = server.url
    try:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            overall = progress.add_task("all sections", total=sum(steps[s] for s in cfg.sections))
            for section in cfg.sections:
                task = progress.add_task(section, total=steps[section])

                def tick(task: Any = task) -> None:
                    progress.advance(task)
                    progress.advance(overall)

                started = time.monotonic()
                try:
                    _run_section(
                        section,
                        cfg,
                        url,
                        server.port,
                        results,
                        logs,
                        tick,
                        progress,
                        task,
                        server_pid(server),
                    )
                except Exception as exc:  # one failed section must not lose the others
                    results["errors"][section] = f"{type(exc).__name__}: {exc}"[:2000]
                    (logs / f"{section}.error.txt").parent.mkdir(parents=True, exist_ok=True)
                    (logs / f"{section}.error.txt").write_text(traceback.format_exc())
                left = progress.tasks[task].remaining or 0
                progress.update(
                    task,
                    completed=steps[section],
                    description=f"{section} ({time.monotonic() - started:.0f} s)",
                )
                progress.advance(overall, left)
    finally:
        server.close()
    results["meta"]["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["meta"]["load_after"] = _load()
    _derive(results)
    results["floors"] = report.floors(results)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2))
    png = report.plot(results, out_dir / "bench.png")
    report.print_tables(results, console)
    table = report.markdown(results)
    (out_dir / "RESULTS.md").write_text(table)
    full = set(cfg.sections) == set(SECTIONS) and not cfg.quick
    if full or os.environ.get("BENCH_WRITE_MD"):  # the committed copy: full runs only
        (REPO / "bench" / "RESULTS.md").write_text(table)
        console.print("table: bench/RESULTS.md")
    console.print(f"results: {out_dir / 'latest.json'}" + (f", plot: {png}" if png else ""))
    return 1 if results["errors"] else 0


def _run_section(
    section: str,
    cfg: BenchConfig,
    url: str,
    port: int,
    results: dict[str, Any],
    logs: Any,
    tick: Callable[[], None],
    progress: Progress,
    task: Any,
    redis_pid: int | None = None,
) -> None:
    if section == "throughput":
        if cfg.sweep:
            rows = throughput.sweep(cfg, url, logs / "sweep-shim.log", tick, redis_pid)
            results["sweep"] = rows
        results["throughput"] = throughput.ours(
            cfg, url, cfg.shim_args, logs / "shim.log", cfg.runs, tick, redis_pid
        )
        _flush(url)
        results["throughput_signed"] = throughput.ours(
            cfg, url, cfg.shim_args, logs / "shim-signed.log", cfg.runs, tick, redis_pid,
            signed=True,
        )  # fmt: skip
    elif section == "peers":
        results["peers"] = {}
        for name in cfg.peers:
            progress.update(task, description=f"peers: {name}")
            try:
                results["peers"][name] = throughput.peer(cfg, name, url, logs / f"{name}.log", tick)
            except Exception as exc:
                results["errors"][f"peers:{name}"] = f"{type(exc).__name__}: {exc}"[:2000]
    elif section == "shim":
        results["shim"] = {}
        for batch in (10, 100):
            rates = []
            for _ in range(cfg.runs):
                res = run_json(
                    [PY, "-m", "bench.shim_probe", url, str(cfg.n_tasks), str(batch), "2"],
                    timeout_s=600,
                )
                rates.append(res["rate"])
                _flush(url)
                tick()
            results["shim"][f"batch_{batch}"] = {"median": statistics.median(rates), "runs": rates}
    elif section == "latency":
        results["latency"] = latency.latency(
            cfg, url, cfg.latency_shim_args, logs / "latency-shim.log", tick
        )
    elif section == "deployments":
        results["deployments"] = deployments.deployments(cfg, url, logs, tick)
    elif section == "coldstart":
        results["coldstart"] = coldstart.cold_start(url, cfg.runs, tick)
    elif section == "commands":
        per_task = commands.commands_per_task(cfg, url, cfg.shim_args, logs / "commands-shim.log")
        tick()
        fn = run_json(
            [PY, "-m", "bench.function_probe", str(max(3, cfg.runs))],
            env={"REDIS_URL": url},
            timeout_s=300,
        )
        tick()
        results["commands"] = {"per_task": per_task, "function": fn}
    elif section == "idle":
        results["idle"] = commands.idle_cost(cfg, url, cfg.shim_args, logs / "idle-shim.log")
    elif section == "ceiling":
        results["ceiling"] = ceiling.ceiling(port, cfg.quick)
    elif section == "burst":
        results["burst"] = burst.burst(cfg, url, logs, tick)
        for name, message in results["burst"]["errors"].items():
            results["errors"][f"burst:{name}"] = message
    elif section == "fairness":
        results["fairness"] = fairness.fairness(cfg, url, logs, tick)
    _flush(url)


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()


def _derive(r: dict[str, Any]) -> None:
    """Figures computed from two sections (our load on Redis against its ceiling)."""
    ours = (r.get("throughput") or {}).get("median")
    per_task = ((r.get("commands") or {}).get("per_task") or {}).get("top_level_total_per_task")
    ceil = ((r.get("ceiling") or {}).get("rps") or {}).get("EVAL (1 list op)", {}).get("P1")
    if ours and per_task:
        derived = {"top_level_cmds_per_s": ours * per_task}
        if ceil:
            derived["redis_load_fraction"] = ours * per_task / ceil
        r["derived"] = derived


if __name__ == "__main__":
    sys.exit(main())
