"""Shared by the peer apps: the script, one engine per process, the client's JSON line."""

from __future__ import annotations

import json
import os
import time

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
