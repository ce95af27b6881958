"""Concurrency caps for invocations: per queue, and a FIFO-fair global cap with AIMD.

Each queue's drain loop waits for one global slot at a time, and waiters are
served first come, first served; so when the global cap is the bottleneck the
queues take turns, and a queue flooded with work cannot starve a quiet one.

The global cap is adjusted like TCP's congestion window: a throttle (the backend
has no capacity) halves the effective limit; each successful invocation raises
it by ``1/limit`` (so by about one per round of invocations) up to the maximum.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["FairLimiter"]


class FairLimiter:
    """A FIFO-fair counting semaphore whose limit backs off on throttles."""

    def __init__(self, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._max = max_concurrency
        self._limit = float(max_concurrency)
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        """The effective limit now (between 1 and the maximum)."""
        return max(1, int(self._limit))

    @property
    def in_use(self) -> int:
        return self._in_use

    async def acquire(self) -> None:
        if not self._waiters and self._in_use < self.limit:
            self._in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was granted as we were cancelled: give it back
            elif fut in self._waiters:  # release() may have dropped it already
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self._in_use -= 1
        self._wake()

    def on_throttle(self) -> None:
        """Multiplicative decrease."""
        self._limit = max(1.0, self._limit / 2.0)

    def on_success(self) -> None:
        """Additive increase, then let waiters in if there is room now."""
        if self._limit < self._max:
            self._limit = min(float(self._max), self._limit + 1.0 / self._limit)
            self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_use < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self._in_use += 1
                fut.set_result(None)
