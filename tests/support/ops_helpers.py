"""Helpers of the ``rhailambda dlq`` / ``task show`` tests: the CLI, and a shim whose
scripts hang (an extension written to ``tmp_path``) until a flag file is removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "rhailambda.cli"]
HANG_EXT = """
import os, time

class _Session:
    def modules(self):
        return {"hang": {"while_flagged": self.wait}}
    def wait(self):
        deadline = time.monotonic() + 120
        while os.path.exists(os.environ["HANG_FLAG"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        return True
    def commit(self): pass
    def discard(self): pass

class _Extension:
    name = "hang"
    def open(self, ctx):
        return _Session()

def extension(env):
    return _Extension()
"""

SCRIPT = "hang::while_flagged();\n40 + 2"


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=60
    )  # fmt: skip


def hang_env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    """The environment of a shim whose scripts hang while ``tmp_path/flag`` exists."""
    (tmp_path / "hang_ext.py").write_text(HANG_EXT)
    flag = tmp_path / "flag"
    flag.touch()
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    return {
        **os.environ, "REDIS_URL": redis_url, "PYTHONPATH": path, "HANG_FLAG": str(flag),
        "RHAILAMBDA_EXTENSIONS": "hang_ext:extension", "POWERTOOLS_METRICS_DISABLED": "true",
        "COLUMNS": "300",
    }  # fmt: skip
