"""The ceiling: ``redis-benchmark`` on this machine for the command mix a task uses.

The tests are the top-level commands of one task (client HSET + LPUSH, the reply
LPOP, and EVALSHA of small Lua scripts) run by redis-benchmark against the same
kind of redis-server, without pipelining (``-P 1``, 50 connections) and pipelined
(``-P 16``). Our figures can then be read as a fraction of what Redis does here.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from typing import Any

__all__ = ["ceiling"]

# name -> redis-benchmark arguments (after the connection options)
_TESTS: dict[str, list[str]] = {
    "HSET": ["-t", "hset"],
    "LPUSH": ["-t", "lpush"],
    "LPOP": ["-t", "lpop"],
    # an EVAL that does what the shim's ack does: one list op inside Lua
    "EVAL (1 list op)": [
        "EVAL",
        "return redis.call('LPUSH', KEYS[1], ARGV[1])",
        "1",
        "bench:l",
        "x",
    ],
}


def _run(port: int, n: int, pipeline: int, test: list[str]) -> float:
    cmd = [
        "redis-benchmark",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-n",
        str(n),
        "-c",
        "50",
        "-P",
        str(pipeline),
        "--csv",
        *test,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    return float(rows[1][1])  # header, then "test","rps",...


def ceiling(port: int, quick: bool) -> dict[str, Any]:
    if shutil.which("redis-benchmark") is None:
        return {"note": "redis-benchmark not found (Debian's redis-tools)"}
    n = 20_000 if quick else 200_000
    out: dict[str, Any] = {"requests": n, "clients": 50, "rps": {}}
    for name, test in _TESTS.items():
        out["rps"][name] = {
            "P1": _run(port, n, 1, test),
            "P16": _run(port, n * 4, 16, test),
        }
    return out
