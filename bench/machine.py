"""What an idle pause costs on this machine, with no rhailambda code involved.

``python -m bench.machine`` (about 30 s) prints, warm and after pauses of 0.05 / 0.2 / 1 s:

* ``json``: a ~1.5 ms JSON round trip of a 200-key dict in this process (cold caches
  and TLBs after the pause make the same work slower);
* ``loop``: a tight integer loop with a tiny working set (CPU speed alone);
* ``ring``: one byte passed once round a ring of 2, 4 and 8 processes over pipes
  (the wake-up cost per process crossed).

The README's explanation of the idle-latency floor quotes these figures.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable

PAUSES_S = (0.05, 0.2, 1.0)
REPEATS = 5


def _timed(work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) * 1e3


def _profile(work: Callable[[], None]) -> dict[str, float]:
    for _ in range(50):
        work()
    out = {"warm": statistics.median(_timed(work) for _ in range(100))}
    for pause in PAUSES_S:
        samples = []
        for _ in range(REPEATS):
            time.sleep(pause)
            samples.append(_timed(work))
        out[f"after {pause:g} s"] = statistics.median(samples)
    return out


def _json_work() -> None:
    data = {f"k{i}": list(range(20)) for i in range(200)}
    for _ in range(3):
        json.loads(json.dumps(data))


def _loop_work() -> None:
    x = 0
    for i in range(20_000):
        x += i


def _ring(n: int) -> dict[str, float]:
    pipes = [os.pipe() for _ in range(n)]
    children = []
    for i in range(1, n):
        pid = os.fork()
        if pid == 0:  # a child: pass every byte on, stop on "q"
            r, w = pipes[i][0], pipes[(i + 1) % n][1]
            while True:
                b = os.read(r, 1)
                os.write(w, b)
                if b == b"q":
                    os._exit(0)
        children.append(pid)
    r, w = pipes[0][0], pipes[1 % n][1]

    def lap() -> None:
        os.write(w, b"x")
        os.read(r, 1)

    try:
        return _profile(lap)
    finally:
        os.write(w, b"q")
        for pid in children:
            os.waitpid(pid, 0)


def main() -> None:
    rows = {"json": _profile(_json_work), "loop": _profile(_loop_work)}
    rows |= {f"ring of {n}": _ring(n) for n in (2, 4, 8)}
    header = list(next(iter(rows.values())))
    print(f"{'ms (median)':<12}" + "".join(f"{h:>14}" for h in header))
    for name, row in rows.items():
        print(f"{name:<12}" + "".join(f"{row[h]:>14.3f}" for h in header))


if __name__ == "__main__":
    main()
