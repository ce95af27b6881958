"""rq: a worker pool of non-forking workers; results in Redis (rq's result streams).

Worker: ``rq worker-pool -n P -w rq.worker.SimpleWorker``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import peer_common
from redis import Redis
from rq import Queue

ENQUEUE_CHUNK = 1000


def run_script(script: str) -> str:
    return peer_common.run_script(script)


def enqueue(n: int) -> list[Any]:
    queue = Queue("default", connection=Redis.from_url(peer_common.URL))
    jobs: list[Any] = []
    for i in range(0, n, ENQUEUE_CHUNK):
        data = [
            Queue.prepare_data("peer_rq.run_script", (peer_common.SCRIPT,), result_ttl=3600)
            for _ in range(min(ENQUEUE_CHUNK, n - i))
        ]
        jobs += queue.enqueue_many(data)  # pipelined
    return jobs


def collect(jobs: list[Any]) -> list[object]:
    outputs: list[object] = []
    for job in jobs:
        result = job.latest_result(timeout=600)
        outputs.append(result.return_value if result is not None else None)
    return outputs


def client(n: int) -> None:
    started = time.perf_counter()
    peer_common.report(n, collect(enqueue(n)), started)


if __name__ == "__main__" and sys.argv[1:3] == ["client", "burst"]:
    peer_common.burst(int(sys.argv[3]), enqueue, collect)
elif __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    client(int(sys.argv[2]))
