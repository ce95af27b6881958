"""Our client side of a throughput run (run as a child: ``python -m bench.load URL WORKER N``).

Submits N tasks in one pipelined round trip, waits for every reply, checks each
output, prints one JSON line. The peers' clients (bench/peers/) print the same.
"""

from __future__ import annotations

import json
import sys
import time

from bench.config import SCRIPT
from rhailambda.client import Client


def main(url: str, worker: str, n: int, timeout_s: float = 600.0) -> None:
    with Client(url) as client:
        cpu0, started = time.process_time(), time.perf_counter()
        ids = client.submit_many([(SCRIPT, worker, "bench", "bench")] * n)
        replies = client.wait_many(ids, timeout_s)
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu0
    ok = sum(1 for r in replies.values() if r.status == "completed" and r.output == "20")
    print(json.dumps({"n": n, "ok": ok, "elapsed_s": elapsed, "rate": n / elapsed, "cpu_s": cpu_s}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
