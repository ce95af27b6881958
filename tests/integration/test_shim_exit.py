"""The shim process exits after SIGTERM even when an invocation ignores its cancel."""

from __future__ import annotations

import subprocess
import sys
import time

import redis
from support.shim_doubles import seed_tasks

from rhailambda.protocol import KeyLayout

L = KeyLayout()

# A shim whose invoker never lets go of its batch: it asks for SIGTERM as soon as it
# holds the batch, then swallows every cancel.
_STUBBORN_SHIM = r"""
import asyncio, os, signal, sys
from rhailambda.settings import ProtocolSettings, RedisSettings
from rhailambda.shim import app
from rhailambda.shim.settings import FlowSettings, QueueSettings, ShimSettings

class Stubborn:
    async def invoke(self, event, *, timeout_s):
        os.kill(os.getpid(), signal.SIGTERM)
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    async def aclose(self):
        pass

app.build_invoker = lambda settings: Stubborn()
settings = ShimSettings(
    redis=RedisSettings(sys.argv[1]),
    protocol=ProtocolSettings(),
    queues=QueueSettings(worker_ids=("w1",), shim_id="stubborn", lease_s=3.0, block_s=0.5),
    flow=FlowSettings(max_concurrency=1, per_queue_concurrency=1, shutdown_timeout_s=0.2),
)
sys.exit(app.run(settings))
"""


def test_exits_and_hands_back_although_an_invocation_ignores_cancel(
    redis_url: str, redis_client: redis.Redis
) -> None:
    seed_tasks(redis_client, L, "w1", ["t1"])
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _STUBBORN_SHIM, redis_url],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    took_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert took_s < 15, f"the shim took {took_s:.1f} s to exit"
    assert "ignored cancellation" in proc.stderr
    assert redis_client.lrange(L.queue("w1"), 0, -1) == ["t1"], "the id is back in its queue"
    assert redis_client.llen(L.inflight("w1", "stubborn")) == 0
