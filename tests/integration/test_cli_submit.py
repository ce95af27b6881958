"""``rhailambda submit`` as a user runs it: exit codes, flags from the environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import redis

CLI = [sys.executable, "-m", "rhailambda.cli"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_flags_come_from_the_environment(redis_url: str, redis_client: redis.Redis) -> None:
    env = {"REDIS_URL": redis_url, "RHAILAMBDA_WORKERS": "Queue A,b",
           "RHAILAMBDA_CONTEXT_ID": "circle1", "RHAILAMBDA_CALLER_ID": "bob"}  # fmt: skip
    done = _run("submit", "--script", "40 + 2", env=env)
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    assert redis_client.lrange("rhailib:queue_a", 0, -1) == [task_id]
    task = redis_client.hgetall(f"rhailib:{task_id}")
    assert (task["contextId"], task["callerId"], task["script"]) == ("circle1", "bob", "40 + 2")


def test_missing_caller_is_a_usage_error(redis_url: str) -> None:
    done = _run("submit", "--redis-url", redis_url, "--worker", "w", "--context", "c",
                "--script", "1")  # fmt: skip
    assert done.returncode == 2 and "--caller" in done.stderr


def test_wait_without_a_shim_times_out_with_exit_3(redis_url: str) -> None:
    done = _run("submit", "--redis-url", redis_url, "--worker", "w", "--context", "c",
                "--caller", "c", "--script", "1", "--wait", "--timeout", "0.3")  # fmt: skip
    assert done.returncode == 3 and "no reply" in done.stderr


def test_wait_prints_the_reply_and_fails_on_a_script_error(redis_url: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "POWERTOOLS_METRICS_DISABLED": "true"}
    shim = subprocess.Popen(
        [*CLI, "shim", "--worker", "w", "--local-workers", "1", "--block-s", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        args = ["submit", "--worker", "w", "--context", "c", "--caller", "c", "--wait"]
        ok = _run(*args, "--script", "let x = 10; x * 2", env=env)
        bad = _run(*args, "--script", "let x = 10;\nx * y", env=env)
    finally:
        shim.send_signal(signal.SIGTERM)
        shim.wait(30)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["output"] == "20"
    assert bad.returncode == 1
    assert "line 2" in json.loads(bad.stdout)["error"]
