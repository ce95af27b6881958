"""dramatiq: Redis broker, Results middleware with the Redis result backend.

Worker: ``dramatiq peer_dramatiq --processes P --threads T``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import dramatiq
import peer_common
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

broker = RedisBroker(url=peer_common.URL)
broker.add_middleware(Results(backend=RedisBackend(url=peer_common.URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def run_script(script: str) -> str:
    return peer_common.run_script(script)


def enqueue(n: int) -> list[Any]:
    return [run_script.send(peer_common.SCRIPT) for _ in range(n)]


def collect(messages: list[Any]) -> list[object]:
    return [m.get_result(block=True, timeout=600_000) for m in messages]


def client(n: int) -> None:
    started = time.perf_counter()
    peer_common.report(n, collect(enqueue(n)), started)


if __name__ == "__main__" and sys.argv[1:3] == ["client", "burst"]:
    peer_common.burst(int(sys.argv[3]), enqueue, collect)
elif __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    client(int(sys.argv[2]))
