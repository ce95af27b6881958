"""`make run`'s process (python -m rhailambda.devstack) stopped by SIGTERM or SIGHUP
leaves no redis-server, shim or local worker behind, as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.standalone_only("the dev stack starts its own redis-server")


def descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_dev_stack_leaves_nothing_running(tmp_path: Path, signum: int) -> None:
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "hello.rhai").write_text("40 + 2")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhailambda.devstack", "--examples", str(examples),
         "--run-dir", str(tmp_path / "run")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # ends when the stack is serving (or the process died)
            seen.append(line)
            if "serving worker queue" in line:
                break
        assert any("hello.rhai" in line and "42" in line for line in seen), seen
        started = descendants(proc.pid)
        names = {Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0] for p in started}
        assert any(b"redis-server" in n for n in names), names
        assert len(started) >= 3, "redis-server, the shim and a local worker"
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while (left := {p for p in started if alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the outcome with a deadline
        assert left == set(), f"left running: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
