"""The function alone (run as a child with REDIS_URL set: ``python -m bench.function_probe``).

For batch sizes 1, 10 and 100: seed a batch of pending tasks, call the real
handler in this process, and count the Redis round trips it made (every write of
its client, ``rhailambda.resp``, is one round trip: a command, a pipeline, an EVALSHA) and the
``EVALSHA`` calls Redis saw. Also the handler's time per batch (tasks/s of one
warm function process, no shim).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

import redis

from bench.config import SCRIPT
from rhailambda import resp
from rhailambda.protocol import KeyLayout
from rhailambda.shim.local_worker import LocalContext
from tests.support.shim_doubles import seed_tasks

SENDS = 0
_round_trip = resp._Connection.round_trip


def _counting_round_trip(self: resp._Connection, commands: Any) -> list[Any]:
    global SENDS
    SENDS += 1
    return _round_trip(self, commands)


resp._Connection.round_trip = _counting_round_trip  # type: ignore[method-assign]


def _context() -> LocalContext:
    deadline = int((time.time() + 60) * 1000)
    return LocalContext(
        function_name="bench", request_id=uuid.uuid4().hex, memory_mb=1024, deadline_ms=deadline
    )


def main(repeats: int) -> dict[str, Any]:
    from rhailambda.functions.handler import handler  # after REDIS_URL is set

    url = os.environ["REDIS_URL"]
    admin = redis.Redis.from_url(url, decode_responses=True)
    layout = KeyLayout()
    out: dict[str, Any] = {}
    for size in (1, 10, 100, 1, 10, 100):  # the first pass warms (script loads, caches)
        trips, evalshas, seconds = [], [], []
        for _ in range(repeats):
            ids = [f"fn-{uuid.uuid4().hex}" for _ in range(size)]
            seed_tasks(admin, layout, "bench-fn", ids)
            for task_id in ids:  # seed_tasks writes script "1": give it the benchmark's
                admin.hset(layout.task(task_id), "script", SCRIPT)
            event = {"workerId": "bench-fn", "tasks": [{"taskId": t, "attempt": 1} for t in ids]}
            admin.config_resetstat()
            before = SENDS
            started = time.perf_counter()
            response = handler(event, _context())
            seconds.append(time.perf_counter() - started)
            trips.append(SENDS - before)
            stats = admin.info("commandstats")
            evalshas.append(int(stats.get("cmdstat_evalsha", {}).get("calls", 0)))
            assert not response["batchItemFailures"], response
            admin.delete(*[layout.reply(t) for t in ids])
        out[str(size)] = {
            "round_trips": statistics.median(trips),
            "evalsha": statistics.median(evalshas),
            "batch_ms": statistics.median(seconds) * 1e3,
            "tasks_per_s": size / statistics.median(seconds),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)))
