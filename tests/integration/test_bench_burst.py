"""bench/burst.py on a tiny burst (ours only): the pool really scales to zero first, every
reply is checked, and the figures reach the report's table (so the section cannot rot)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import burst, report  # noqa: E402
from bench.config import BenchConfig  # noqa: E402

pytestmark = pytest.mark.standalone_only("the bench drives one standalone redis-server")


def test_a_tiny_burst_on_a_pool_scaled_to_zero_reaches_the_report(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shims: list[int] = []
    seen_workers: list[list[int]] = []
    real_worker_pids = burst.worker_pids

    def watched(shim_pid: int) -> list[int]:  # the section's own scale-to-zero check
        shims.append(shim_pid)
        pids: list[int] = real_worker_pids(shim_pid)
        seen_workers.append(pids)
        return pids

    monkeypatch.setattr(burst, "worker_pids", watched)
    cfg = dataclasses.replace(BenchConfig.from_env({"BENCH_N": "50", "BENCH_RUNS": "1"}), peers=())
    ticks: list[None] = []
    result = burst.burst(cfg, redis_url, tmp_path, lambda: ticks.append(None))

    assert seen_workers[0], "the warm-up left no worker: the wait proved nothing"
    assert seen_workers[-1] == [], "the burst started before the pool scaled to zero"
    ours = result["systems"][burst.OURS]
    assert ours["median_s"] > 0 and ours["ratio"] == 1.0
    assert ours["rate"] == pytest.approx(50 / ours["median_s"])
    assert "--idle-timeout-s 1.0" in ours["settings"]
    assert result["errors"] == {} and len(ticks) == 1

    table = report.markdown({"meta": {"n_tasks": 50}, "burst": result})  # RESULTS.md's text
    assert "## Bursts from zero (50 tasks on an idle stack" in table
    assert f"| {burst.OURS} | {ours['median_s']:.2f} |" in table


def test_a_peer_that_fails_is_reported_and_keeps_no_ratio() -> None:
    cfg = dataclasses.replace(BenchConfig.from_env({"BENCH_N": "10", "BENCH_RUNS": "2"}))
    runs = {
        burst.OURS: [
            {"elapsed_s": 1.0, "settings": "x"},
            {"elapsed_s": 2.0, "settings": "x"},
        ],
        "rq": [{"elapsed_s": 3.0, "enqueue_s": 0.1}, {"elapsed_s": 4.0, "enqueue_s": 0.3}],
        "celery": [{"elapsed_s": 5.0, "enqueue_s": 0.1}],  # failed in round 2
    }
    out = burst.summarize(cfg, runs, {"celery": "RuntimeError: boom"})
    assert out["systems"]["rq"]["ratio"] == pytest.approx(2.5)  # median of 3/1 and 4/2
    assert out["systems"]["rq"]["median_s"] == pytest.approx(3.5)
    assert "celery" not in out["systems"]
    lines = burst.markdown({"burst": out})
    assert "- celery: failed: RuntimeError: boom" in lines
