"""The function's CPU per task, in this process: ``python -m bench.worker_cpu [N] [BATCH]``.

Starts its own redis-server (the tests' fixture), seeds N pending tasks of the
throughput script, calls the real handler on batches of BATCH ids (default 200, the
throughput section's batch size) after a warm-up, and prints the process CPU time per
task: what a local worker or a Lambda function spends besides Redis. Compare two trees
by running it from each (``PYTHONPATH=<tree>/src``) in the same minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from typing import Any

from bench.config import REPO, SCRIPT

sys.path.insert(0, str(REPO / "tests"))
from redis_server import RedisServer

__all__ = ["main"]


class _Context:
    aws_request_id = "bench"
    function_name = "rhailambda-bench"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:rhailambda-bench"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def _seed(url: str, ids: list[str]) -> None:
    import redis

    r = redis.Redis.from_url(url)
    pipe = r.pipeline(transaction=False)
    for task_id in ids:
        pipe.hset(f"rhailib:{task_id}", mapping={
            "taskId": task_id, "script": SCRIPT, "callerId": "bench", "contextId": "bench",
            "workerId": "bench", "status": "pending", "createdAt": "1", "updatedAt": "1",
        })  # fmt: skip
    pipe.execute()
    r.close()


def _run(handler: Any, ids: list[str], batch: int) -> None:
    for i in range(0, len(ids), batch):
        tasks = [{"taskId": t, "attempt": 1} for t in ids[i : i + batch]]
        out = handler({"workerId": "bench", "tasks": tasks}, _Context())
        if out.get("batchItemFailures"):
            raise RuntimeError(f"tasks failed: {out}")


def main(n: int = 20_000, batch: int = 200) -> dict[str, float]:
    with RedisServer(kind="redis") as server:
        os.environ["REDIS_URL"] = server.url
        os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "rhailambda")
        # the handler logs a line and EMF metrics per batch: kept, as in a deployment
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from rhailambda.functions import handler

            warm = [f"warm-{i}" for i in range(min(2_000, n))]
            _seed(server.url, warm)
            _run(handler.handler, warm, batch)
            ids = [f"t-{i}" for i in range(n)]
            _seed(server.url, ids)
            cpu0 = time.process_time()
            _run(handler.handler, ids, batch)
            cpu_s = time.process_time() - cpu0
    return {"n": n, "batch": batch, "cpu_us_per_task": cpu_s / n * 1e6}


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(main(*args)))
