"""celery: Redis broker, Redis result backend, prefork pool.

Worker: ``celery -A peer_celery worker -P prefork -c P --without-gossip
--without-mingle --without-heartbeat``.
"""

from __future__ import annotations

import sys
import time

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


def client(n: int) -> None:
    started = time.perf_counter()
    results = [run_script.delay(peer_common.SCRIPT) for _ in range(n)]
    outputs = ResultSet(results).get(timeout=600)  # join_native on the Redis backend
    peer_common.report(n, list(outputs), started)


if __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    client(int(sys.argv[2]))
