"""Shim overhead alone (run as a child: ``python -m bench.shim_probe URL N BATCH CONC``).

Seeds N pending tasks, then serves them with the real drain loop and Redis queue
source into a no-op invoker that reports every id done at once. The rate is N over
the time from the first invocation to the last one, in this one shim process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

import redis

from rhailambda.event import BatchResponse, InvocationEvent
from rhailambda.settings import ProtocolSettings, RedisSettings
from rhailambda.shim.app import serve
from rhailambda.shim.settings import BatchSettings, FlowSettings, QueueSettings, ShimSettings
from tests.support.shim_doubles import seed_tasks

WORKER = "bench-noop"


class NoopInvoker:
    """Every id done at once; records when the first and the N-th id came."""

    def __init__(self, n: int, done: asyncio.Event) -> None:
        self.n, self.seen, self.batches = n, 0, 0
        self.first = self.last = 0.0
        self._done = done

    async def invoke(self, event: InvocationEvent, *, timeout_s: float) -> BatchResponse:
        now = time.perf_counter()
        if not self.first:
            self.first = now
        self.seen += len(event.tasks)
        self.batches += 1
        if self.seen >= self.n:
            self.last = now
            self._done.set()
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    async def aclose(self) -> None:
        return None


async def _main(url: str, n: int, batch: int, concurrency: int) -> dict[str, float]:
    settings = ShimSettings(
        redis=RedisSettings(url=url),
        protocol=ProtocolSettings(),
        queues=QueueSettings(worker_ids=(WORKER,), shim_id=f"noop-{uuid.uuid4().hex[:6]}"),
        batch=BatchSettings(batch_size=batch),
        flow=FlowSettings(max_concurrency=concurrency, per_queue_concurrency=concurrency),
        log_level="WARNING",
    )
    sync = redis.Redis.from_url(url, decode_responses=True)
    ids = [f"noop-{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]
    for i in range(0, n, 5000):
        seed_tasks(sync, settings.protocol.layout, WORKER, ids[i : i + 5000])
    stop, done = asyncio.Event(), asyncio.Event()
    invoker = NoopInvoker(n, done)
    server = asyncio.create_task(serve(settings, invoker, stop=stop))
    await asyncio.wait_for(done.wait(), timeout=300)
    elapsed = invoker.last - invoker.first
    stop.set()
    await server
    sync.delete(*[settings.protocol.layout.task(t) for t in ids[:1]])
    sync.close()
    first_batch = min(batch, n)
    return {
        "n": n,
        "batch_size": batch,
        "batches": invoker.batches,
        "elapsed_s": elapsed,
        # the first batch was taken before the clock started
        "rate": (n - first_batch) / elapsed if elapsed > 0 else 0.0,
    }


if __name__ == "__main__":
    url, n, batch, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(asyncio.run(_main(url, n, batch, conc))))
