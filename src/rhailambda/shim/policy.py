"""Pure decisions of the drain loop: retry backoff and the batching window.

No I/O here, so each rule is unit-tested on its own.
"""

from __future__ import annotations

import random

__all__ = ["backoff_s", "window_wait_s"]


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))].

    ``attempt`` counts from 1 (the delay after the first failure).
    """
    exponent = min(max(attempt, 1) - 1, 60)  # 2**60 s is past any cap already
    ceiling = min(cap_s, base_s * (2.0**exponent))
    return (rng or random).uniform(0.0, ceiling)


def window_wait_s(
    *,
    taken: int,
    batch_size: int,
    window_s: float,
    since_last_dispatch_s: float | None,
) -> float:
    """How long to keep filling a partial batch before dispatching it.

    Like an event source mapping's ``MaximumBatchingWindowInSeconds``, with one
    refinement: the window applies only to a BUSY queue, one that dispatched a
    batch within the last window. A task arriving at an idle queue goes out at
    once: nothing was waiting behind it, so waiting would only add latency.
    A full batch never waits.
    """
    if taken >= batch_size or window_s <= 0:
        return 0.0
    if since_last_dispatch_s is None or since_last_dispatch_s > window_s:
        return 0.0
    return window_s
