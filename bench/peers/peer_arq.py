"""arq: asyncio workers polling Redis; results kept in Redis (``keep_result``).

Worker: ``python peer_arq.py worker``, started P times (arq is one process each);
that is ``arq.run_worker(WorkerSettings)`` with logging at WARNING (the ``arq``
command logs two lines per job at INFO, which would be the bulk of its work here).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import peer_common
from arq import create_pool, run_worker
from arq.connections import RedisSettings

REDIS = RedisSettings.from_dsn(peer_common.URL)
ENQUEUE_CONCURRENCY = 200


async def run_script(ctx: dict[str, Any], script: str) -> str:
    return peer_common.run_script(script)


class WorkerSettings:
    functions = [run_script]  # noqa: RUF012
    redis_settings = REDIS
    max_jobs = 100  # jobs in flight per worker (default 10)
    poll_delay = 0.01  # seconds between queue polls when idle (default 0.5)
    keep_result = 3600
    log_results = False
    handle_signals = True


async def _enqueue(pool: Any, n: int) -> list[Any]:
    jobs: list[Any] = []
    for i in range(0, n, ENQUEUE_CONCURRENCY):
        batch = range(i, min(n, i + ENQUEUE_CONCURRENCY))
        jobs += await asyncio.gather(
            *(pool.enqueue_job("run_script", peer_common.SCRIPT) for _ in batch)
        )
    return jobs


async def _collect(jobs: list[Any]) -> list[object]:
    return [await job.result(timeout=600, poll_delay=0.005) for job in jobs]


def client(n: int, *, burst: bool = False) -> None:
    with asyncio.Runner() as runner:  # one loop (and pool) for the enqueue and the collect
        pool = runner.run(create_pool(REDIS))
        started = time.perf_counter()

        def enqueue(k: int) -> list[Any]:
            return runner.run(_enqueue(pool, k))

        def collect(jobs: list[Any]) -> list[object]:
            return runner.run(_collect(jobs))

        if burst:
            peer_common.burst(n, enqueue, collect)
        else:
            peer_common.report(n, collect(enqueue(n)), started)
        runner.run(pool.aclose())


if __name__ == "__main__" and sys.argv[1:3] == ["client", "burst"]:
    client(int(sys.argv[3]), burst=True)
elif __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    client(int(sys.argv[2]))
elif __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    logging.basicConfig(level=logging.WARNING)
    run_worker(WorkerSettings)  # type: ignore[arg-type]
