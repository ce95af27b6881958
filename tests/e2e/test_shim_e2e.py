"""The whole local stack: ``rhailambda shim`` (local backend, real handler) and the client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import redis

from rhailambda.client import Client
from rhailambda.protocol import KeyLayout

L = KeyLayout()


def test_500_scripts_get_exactly_one_correct_reply(
    redis_client: redis.Redis, redis_url: str
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "RHAILAMBDA_LOCAL_WORKERS": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhailambda.cli", "shim", "--workers", "e2e", "--shim-id", "e2e1",
         "--block-s", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        with Client(redis_url) as client:
            ids = client.submit_many(
                [(f"let x = {i}; x * 2", "e2e", "ctx", "ctx") for i in range(500)]
            )
            replies = client.wait_many(ids, timeout_s=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert len(replies) == 500
    for i, task_id in enumerate(ids):
        reply = replies[task_id]
        assert reply.status == "completed", reply.raw
        assert reply.output == str(2 * i)
    pipe = redis_client.pipeline(transaction=False)
    for task_id in ids:
        pipe.llen(L.reply(task_id))
    # wait_many popped each reply; nothing else may have been pushed after it.
    assert sum(pipe.execute()) == 0
