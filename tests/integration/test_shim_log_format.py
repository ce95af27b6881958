"""`rhailambda shim --log-format`: JSON lines by default off a terminal, text on request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest


def _first_log_line(redis_url: str, *extra: str) -> str:
    env = {**os.environ, "RHAILAMBDA_LOG_FORMAT": ""}
    env.pop("RHAILAMBDA_LOG_FORMAT")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhailambda", "shim", "--redis-url", redis_url,
         "--worker", "w1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the start-up line; blocks until it is written
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert line, "the shim logged nothing"
    return line


def test_json_when_not_on_a_terminal(redis_url: str) -> None:
    record = json.loads(_first_log_line(redis_url))
    assert record["level"] == "INFO"
    assert record["logger"].startswith("rhailambda")
    assert record["message"]


def test_text_on_request(redis_url: str) -> None:
    line = _first_log_line(redis_url, "--log-format", "text")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    assert " INFO rhailambda" in line
