"""Fair share across circles within one queue: round robin, FIFO within a circle.

The drain loop reads ahead a bounded window of ids (already moved into the
shim's in-flight list, so the lease and the reaper cover them) and pushes each
with its circle (the task's ``contextId``). :meth:`CircleScheduler.pop_batch`
then builds batches by deficit round robin with a quantum of one task: every
circle with queued work gets one task per turn, so a circle that floods the
queue cannot starve one that submits a few. One circle alone is served in
plain FIFO order, batch by batch, as without the scheduler.

Optional per-circle caps: ``max_running`` (tasks popped and not yet released)
and ``rate_per_s`` (a token bucket holding up to ``max(1, rate)`` tasks). A
circle at a cap is skipped, not blocked on; :meth:`CircleScheduler.wait_s` says
when a rate-capped circle can go again.

With ``fair=False`` the order is the queue's own (oldest first across circles);
the caps and one-circle batches still apply.

The scheduler is pure (no I/O, an injected clock): :meth:`held` lists what it
holds, oldest first, so shutdown can hand those ids back to the queue.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["CircleCaps", "CircleScheduler"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CircleCaps:
    """Per-circle limits; None is no limit."""

    max_running: int | None = None
    rate_per_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_running is not None and self.max_running < 1:
            raise ValueError("RHAILAMBDA_PER_CIRCLE_CONCURRENCY must be at least 1")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ValueError("RHAILAMBDA_PER_CIRCLE_RATE must be above 0 (tasks per second)")


@dataclass(slots=True)
class _Circle(Generic[T]):
    queued: deque[tuple[int, T]] = field(default_factory=deque)  # (arrival, item)
    running: int = 0
    tokens: float = 0.0
    refilled_at: float = 0.0


class CircleScheduler(Generic[T]):
    """Orders read-ahead tasks of one queue so circles share its throughput."""

    def __init__(
        self,
        caps: CircleCaps | None = None,
        *,
        fair: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._caps = caps or CircleCaps()
        self._fair = fair
        self._clock = clock
        self._arrivals = 0
        self._circles: dict[str, _Circle[T]] = {}
        self._turns: deque[str] = deque()  # circles with queued work, next turn first
        self._size = 0

    def __len__(self) -> int:
        """How many tasks are held (queued, not yet popped)."""
        return self._size

    def push(self, circle: str, item: T) -> None:
        state = self._circles.get(circle)
        if state is None:
            state = self._circles[circle] = _Circle()
            state.tokens = self._burst
            state.refilled_at = self._clock()
        if not state.queued:
            self._turns.append(circle)
        state.queued.append((self._arrivals, item))
        self._arrivals += 1
        self._size += 1

    def pop_batch(self, max_items: int, *, one_circle: bool = False) -> list[tuple[str, T]]:
        """Up to ``max_items`` tasks, one per circle per turn (all from one circle when
        ``one_circle``), skipping circles at a cap. Popped tasks count as running for
        their circle until :meth:`release`."""
        if len(self._turns) == 1:  # one circle: its tasks in order, as far as its caps let
            return self.pop_from(self._turns[0], max_items)
        if not self._fair:
            return self._pop_oldest(max_items, one_circle=one_circle)
        batch: list[tuple[str, T]] = []
        skipped = 0  # consecutive circles that could not go: a full lap ends the batch
        while len(batch) < max_items and self._turns and skipped < len(self._turns):
            circle = self._turns[0]
            if one_circle and batch and circle != batch[0][0]:
                break
            state = self._circles[circle]
            if not self._may_start(state):
                self._turns.rotate(-1)
                skipped += 1
                if one_circle and batch:
                    break
                continue
            skipped = 0
            batch.append((circle, self._start(state)))
            if not state.queued:
                self._turns.popleft()
                if one_circle:
                    break
            elif not one_circle:
                self._turns.rotate(-1)
        if one_circle and batch and self._turns and self._turns[0] == batch[0][0]:
            self._turns.rotate(-1)  # the next batch belongs to the next circle
        return batch

    def _pop_oldest(self, max_items: int, *, one_circle: bool) -> list[tuple[str, T]]:
        """Oldest first across the circles that may start (``fair=False``)."""
        batch: list[tuple[str, T]] = []
        while len(batch) < max_items:
            best: _Circle[T] | None = None
            name = ""
            for circle in self._turns:
                state = self._circles[circle]
                if one_circle and batch and circle != batch[0][0]:
                    continue
                if (best is None or state.queued[0][0] < best.queued[0][0]) and self._may_start(
                    state
                ):
                    best, name = state, circle
            if best is None:
                break
            batch.append((name, self._start(best)))
            if not best.queued:
                self._turns.remove(name)
        return batch

    def pop_from(self, circle: str, max_items: int) -> list[tuple[str, T]]:
        """Up to ``max_items`` more tasks of ``circle`` alone (topping up its batch)."""
        state = self._circles.get(circle)
        batch: list[tuple[str, T]] = []
        while state is not None and state.queued and len(batch) < max_items:
            if not self._may_start(state):
                break
            batch.append((circle, self._start(state)))
        if state is not None and batch and not state.queued:
            self._turns.remove(circle)
        return batch

    def release(self, circle: str, count: int = 1) -> None:
        """``count`` popped tasks of ``circle`` ended (their invocation returned)."""
        state = self._circles.get(circle)
        if state is None:
            return
        state.running = max(0, state.running - count)
        self._forget_if_idle(circle, state)

    def recount(self, was: str, now: str) -> None:
        """A popped task's circle turned out to be ``now``, not ``was``: it runs as now's."""
        self.release(was)
        state = self._circles.get(now)
        if state is None:
            state = self._circles[now] = _Circle()
            state.tokens = self._burst
            state.refilled_at = self._clock()
        state.running += 1

    def held(self) -> list[tuple[str, T]]:
        """Every queued task, oldest first (in the order pushed)."""
        every = [(n, c, item) for c, s in self._circles.items() for n, item in s.queued]
        return [(c, item) for _, c, item in sorted(every, key=lambda e: e[0])]

    def take_all(self) -> list[tuple[str, T]]:
        """Remove and return every queued task (for shutdown's hand-back)."""
        everything = self.held()
        for circle, state in list(self._circles.items()):
            state.queued.clear()
            self._forget_if_idle(circle, state)
        self._turns.clear()
        self._size = 0
        return everything

    def running(self, circle: str) -> int:
        state = self._circles.get(circle)
        return state.running if state else 0

    def busiest(self, top: int) -> list[tuple[str, int, int]]:
        """The ``top`` circles by queued + running tasks: (circle, queued, running)."""
        rows = [(c, len(s.queued), s.running) for c, s in self._circles.items()]
        rows = [r for r in rows if r[1] or r[2]]
        return heapq.nsmallest(top, rows, key=lambda r: (-(r[1] + r[2]), r[0]))

    def wait_s(self) -> float | None:
        """Seconds until some queued task may start (0 now); None when none can until a
        release (every circle with work is at its concurrency cap) or nothing is held."""
        best: float | None = None
        for circle in self._turns:
            state = self._circles[circle]
            if self._caps.max_running is not None and state.running >= self._caps.max_running:
                continue
            self._refill(state)
            rate = self._caps.rate_per_s
            need_s = 0.0 if rate is None else max(0.0, (1.0 - state.tokens) / rate)
            best = need_s if best is None else min(best, need_s)
        return best

    # --- internals -----------------------------------------------------------------
    @property
    def _burst(self) -> float:
        rate = self._caps.rate_per_s
        return 0.0 if rate is None else max(1.0, rate)

    def _refill(self, state: _Circle[T]) -> None:
        rate = self._caps.rate_per_s
        if rate is None:
            return
        now = self._clock()
        state.tokens = min(self._burst, state.tokens + (now - state.refilled_at) * rate)
        state.refilled_at = now

    def _may_start(self, state: _Circle[T]) -> bool:
        if self._caps.max_running is not None and state.running >= self._caps.max_running:
            return False
        if self._caps.rate_per_s is None:
            return True
        self._refill(state)
        return state.tokens >= 1.0

    def _start(self, state: _Circle[T]) -> T:
        if self._caps.rate_per_s is not None:
            state.tokens -= 1.0
        state.running += 1
        self._size -= 1
        return state.queued.popleft()[1]

    def _forget_if_idle(self, circle: str, state: _Circle[T]) -> None:
        # A circle's bucket is kept while it could matter: tokens below full.
        self._refill(state)
        full = self._caps.rate_per_s is None or state.tokens >= self._burst
        if not state.queued and state.running == 0 and full:
            del self._circles[circle]
