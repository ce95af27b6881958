"""celery: Redis broker, Redis result backend, prefork pool.

Worker: ``celery -A peer_celery worker -P prefork -c P --without-gossip
--without-mingle --without-heartbeat``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import peer_common
from celery import Celery
from celery.result import ResultSet

app = Celery("peer_celery", broker=peer_common.URL, backend=peer_common.URL)
app.conf.update(
    worker_prefetch_multiplier=16,  # tiny tasks: prefetch more than the default 4
    task_acks_late=False,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="run_script")
def run_script(script: str) -> str:
    return peer_common.run_script(script)


def enqueue(n: int) -> list[Any]:
    return [run_script.delay(peer_common.SCRIPT) for _ in range(n)]


def collect(results: list[Any]) -> list[object]:
    return list(ResultSet(results).get(timeout=600))  # join_native on the Redis backend


def client(n: int) -> None:
    started = time.perf_counter()
    peer_common.report(n, collect(enqueue(n)), started)


if __name__ == "__main__" and sys.argv[1:3] == ["client", "burst"]:
    peer_common.burst(int(sys.argv[3]), enqueue, collect)
elif __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    client(int(sys.argv[2]))
