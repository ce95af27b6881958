"""Shared by the peer apps: the script, one engine per process, the client's JSON lines."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import rhai_py

SCRIPT = "let x = 10; x * 2"
URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_engine: rhai_py.Engine | None = None


def run_script(script: str) -> str:
    """What every peer's task does: evaluate through rhai_py, return the text rendering."""
    global _engine
    if _engine is None or _engine_pid != os.getpid():  # never share one across a fork
        _set_engine()
    assert _engine is not None
    return _engine.eval_text(script)


_engine_pid = -1


def _set_engine() -> None:
    global _engine, _engine_pid
    _engine, _engine_pid = rhai_py.Engine(), os.getpid()


def report(n: int, outputs: list[object], started: float) -> None:
    elapsed = time.perf_counter() - started
    ok = sum(1 for o in outputs if o == "20")
    print(json.dumps({"n": n, "ok": ok, "elapsed_s": elapsed, "rate": n / elapsed}))


Handles = TypeVar("Handles")


def burst(
    n: int, enqueue: Callable[[int], Handles], collect: Callable[[Handles], list[object]]
) -> None:
    """``client burst N`` (bench/burst.py): enqueue N tasks while no worker runs, print
    ``{"enqueued": N, ...}``, wait for a line on stdin (the workers are being started),
    then collect every result and print the wall-clock time of the last one."""
    started = time.perf_counter()
    handles = enqueue(n)
    enqueue_s = time.perf_counter() - started
    print(json.dumps({"enqueued": n, "enqueue_s": enqueue_s}), flush=True)
    sys.stdin.readline()
    outputs = collect(handles)
    done_at = time.time()
    ok = sum(1 for o in outputs if o == "20")
    print(json.dumps({"n": n, "ok": ok, "done_at": done_at, "enqueue_s": enqueue_s}), flush=True)
