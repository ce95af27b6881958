"""Our client side of a throughput run (``python -m bench.load URL WORKER N [signed] [plain]``).

Submits N tasks in one pipelined round trip, waits for every reply, checks each
output, prints one JSON line. The peers' clients (bench/peers/) print the same.
``signed``: the client signs every task with a fresh key (the signing is timed, as
a real client pays it) and each reply must come from a verified run. ``plain``: plain
UUID task ids, as the Rust dispatcher makes them (on a cluster the client would tag
them with their worker: ``Client(slot_tagged_ids=...)``).
"""

from __future__ import annotations

import json
import sys
import time

from bench.config import SCRIPT
from rhailambda.client import Client
from rhailambda.signing import SigningKey

#: the signed run checks that the function verified every task
SIGNED_SCRIPT = f"if CALLER_VERIFIED {{ {SCRIPT} }} else {{ 0 }}"


def main(
    url: str, worker: str, n: int, signed: bool = False, plain: bool = False,
    timeout_s: float = 600.0,
) -> None:  # fmt: skip
    key = SigningKey.generate() if signed else None
    script, caller = (SIGNED_SCRIPT, "") if signed else (SCRIPT, "bench")
    with Client(url, signing_key=key, slot_tagged_ids=False if plain else None) as client:
        cpu0, started = time.process_time(), time.perf_counter()
        ids = client.submit_many([(script, worker, "bench", caller)] * n)
        replies = client.wait_many(ids, timeout_s)
        elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu0
    ok = sum(1 for r in replies.values() if r.status == "completed" and r.output == "20")
    print(json.dumps({"n": n, "ok": ok, "elapsed_s": elapsed, "rate": n / elapsed, "cpu_s": cpu_s}))


if __name__ == "__main__":
    flags = set(sys.argv[4:])
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), "signed" in flags, "plain" in flags)
