"""An output too large for a reply, through the whole local stack (shim, local worker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import redis

from rhailambda.client import Client

HUGE = 'let s = ""; s.pad(9000000, "\\x01"); db::save("c", "x", #{ n: 1 }); [s]'


def test_a_huge_output_gets_an_error_reply_and_applies_nothing(
    redis_client: redis.Redis, redis_url: str
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "POWERTOOLS_METRICS_DISABLED": "true",
           "RHAILAMBDA_MAX_OUTPUT_BYTES": "100000"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhailambda.cli", "shim", "--worker", "big", "--block-s", "1",
         "--local-workers", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        with Client(redis_url) as client:
            ids = client.submit_many([(HUGE, "big", "alice", "alice")] * 12)
            fits = client.submit('let s = ""; s.pad(90000, "a"); s', worker_id="big",
                                 context_id="alice", caller_id="alice")  # fmt: skip
            replies = client.wait_many([*ids, fits], timeout_s=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    for task_id in ids:
        reply = replies[task_id]
        assert reply.status == "error", reply.raw
        assert "output too large" in (reply.error or "") and "100000" in (reply.error or "")
    assert replies[fits].status == "completed" and len(replies[fits].output or "") == 90000
    assert max(len(json.dumps(replies[t].raw)) for t in ids) < 2000
    # all or nothing: no record saved, no receipt of any size kept
    assert redis_client.keys("rhailambda:circle:*") == []
