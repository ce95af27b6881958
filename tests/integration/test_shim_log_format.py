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


def _stderr_after_one_task(redis_url: str, *extra: str) -> str:
    from rhailambda.client import Client

    env = {k: v for k, v in os.environ.items() if k not in ("POWERTOOLS_LOG_LEVEL", "LOG_LEVEL")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhailambda", "shim", "--redis-url", redis_url,
         "--worker", "wlog", "--backend", "local", "--local-workers", "1", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        with Client(redis_url) as client:
            task_id = client.submit("40 + 2", worker_id="wlog", context_id="c", caller_id="c")
            assert client.wait(task_id, 30).output == "42"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    return err


def test_the_shims_log_level_quiets_its_local_workers(redis_url: str) -> None:
    """--log-level WARNING: no per-batch INFO line from the workers either (they wrote one
    per batch, and a reader that never drained the pipe stalled them)."""
    assert '"batch done"' in _stderr_after_one_task(redis_url)
    assert '"batch done"' not in _stderr_after_one_task(redis_url, "--log-level", "WARNING")
