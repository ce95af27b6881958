"""The suite's one frozen settings object, read once from the environment (``BENCH_*``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REPO", "SCRIPT", "SECTIONS", "BenchConfig"]

REPO = Path(__file__).resolve().parent.parent
SCRIPT = "let x = 10; x * 2"  # every system runs this; the expected output is "20"
SECTIONS = (
    "throughput",  # ours end to end
    "peers",  # dramatiq, celery, arq, rq on the same workload
    "shim",  # shim overhead into a no-op invoker
    "latency",  # light-load p50/p99, first task after an idle pause
    "deployments",  # throughput + warm latency: standalone, one-node and 3-master clusters
    "coldstart",  # function import + first task in a fresh process (and under RIE)
    "commands",  # Redis commands per task, round trips per batch
    "idle",  # a shim watching empty queues: commands/min, CPU
    "ceiling",  # redis-benchmark on this machine
    "burst",  # N tasks on an idle stack (pool scaled to zero) and on the peers' cold workers
    "fairness",  # one circle's flood against another's wait, fair share on and off
)
ALL_PEERS = ("dramatiq", "celery", "arq", "rq")
OPTIONAL_PEERS = ("dramatiq-1t",)  # only when named in BENCH_PEERS


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"bench: {name} must be an integer, got {raw!r}") from None
    if value < 1:
        raise SystemExit(f"bench: {name} must be at least 1, got {value}")
    return value


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    return tuple(x.strip() for x in raw.split(",") if x.strip())


@dataclass(frozen=True, slots=True)
class BenchConfig:
    quick: bool
    runs: int  # each figure is the median of this many runs
    n_tasks: int  # tasks per throughput run
    sections: tuple[str, ...]
    peers: tuple[str, ...]
    processes: int  # worker processes for every system (ours: local workers)
    shim_args: tuple[str, ...]  # the shim's knobs for the throughput run
    latency_shim_args: tuple[str, ...]  # ... for the latency run (default: the shim's defaults)
    latency_samples: int
    idle_s: float  # how long the idle shim is watched
    sweep: bool  # also sweep the shim's knobs
    peer_python: Path
    results_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BenchConfig:
        env = os.environ if env is None else env
        quick = env.get("BENCH_QUICK", "").strip().lower() in ("1", "true", "yes", "on")
        sections = _list(env, "BENCH_ONLY", SECTIONS)
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise SystemExit(f"bench: BENCH_ONLY: unknown sections {sorted(unknown)}")
        peers = _list(env, "BENCH_PEERS", ALL_PEERS)
        if set(peers) - set(ALL_PEERS + OPTIONAL_PEERS):
            choices = ", ".join(ALL_PEERS + OPTIONAL_PEERS)
            raise SystemExit(f"bench: BENCH_PEERS: choose among {choices}")
        shim_args = tuple(env.get("BENCH_SHIM_ARGS", DEFAULT_SHIM_ARGS).split())
        return cls(
            quick=quick,
            runs=_int(env, "BENCH_RUNS", 1 if quick else 3),
            n_tasks=_int(env, "BENCH_N", 1000 if quick else 20_000),
            sections=sections,
            peers=peers,
            processes=_int(env, "BENCH_PROCESSES", 2),
            shim_args=shim_args,
            latency_shim_args=tuple(env.get("BENCH_LATENCY_SHIM_ARGS", "").split()),
            latency_samples=_int(env, "BENCH_LATENCY_SAMPLES", 100 if quick else 2000),
            idle_s=float(_int(env, "BENCH_IDLE_S", 5 if quick else 30)),
            sweep=env.get("BENCH_SWEEP", "").strip().lower() in ("1", "true", "yes", "on"),
            peer_python=Path(env.get("BENCH_PEER_PYTHON", str(REPO / ".venv-bench/bin/python"))),
            results_dir=Path(env.get("BENCH_RESULTS_DIR", str(REPO / "bench/results"))),
        )


#: The shim's knobs for the throughput run (the best of the sweep; see RESULTS.md).
DEFAULT_SHIM_ARGS = "--batch-size 200 --batch-window-ms 0 --max-concurrency 2"
