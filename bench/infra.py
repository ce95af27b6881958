"""What every section needs: a private redis-server, command counters, child processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from bench.config import REPO

sys.path.insert(0, str(REPO))
from tests.redis_server import RedisServer, free_port
from tests.support.waiting import wait_for

__all__ = [
    "CLK_TCK",
    "RedisServer",
    "Shim",
    "commandstats",
    "cpu_s",
    "delta",
    "free_port",
    "run_json",
    "start_redis",
    "wait_for",
]

PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


def start_redis() -> RedisServer:
    """A fresh redis-server on a free loopback port, nothing persisted."""
    return RedisServer().start()


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (commands run by Lua included)."""
    raw: dict[str, Any] = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in raw.items()}


def delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in sorted(out.items()) if v}


def cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (from /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ...: the local pool forks its workers from a template
    process (a child of the shim), so the workers are the shim's grandchildren."""
    out = children(pid)
    for child in list(out):
        out += descendants(child)
    return out


def run_json(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Run a command that prints one JSON object as its last stdout line; return it."""
    proc = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}: {proc.stderr[-3000:]}")
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise RuntimeError(
            f"{cmd[:4]} printed no JSON: {proc.stdout[-1000:]} {proc.stderr[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class Shim:
    """``rhailambda shim`` on the local backend, as a child process."""

    def __init__(
        self,
        url: str,
        worker: str,
        args: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cmd = [
            PY,
            "-m",
            "rhailambda.cli",
            "shim",
            "--redis-url",
            url,
            "--workers",
            worker,
            "--backend",
            "local",
            "--log-level",
            "WARNING",
            *args,
        ]
        self._log = log
        self._env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Shim:
        self._log.parent.mkdir(parents=True, exist_ok=True)
        with self._log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self._env,
                cwd=REPO,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self._log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"shim exited with {self.proc.returncode}: {tail}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> Shim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_pid(server: RedisServer) -> int | None:
    """The redis-server's pid (the tests' helper keeps its process private)."""
    proc = getattr(server, "_proc", None)
    return proc.pid if proc is not None else None
