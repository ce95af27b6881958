"""One queue's intake: a read-ahead window of ids, ordered by circle into batches.

A reader task per queue moves ids from the queue into the shim's in-flight list
(:meth:`QueueSource.read_ahead`: nothing can be lost, the lease and the reaper cover
them) and reads each one's circle, up to ``RHAILAMBDA_FAIR_WINDOW`` ids ahead of
what runs. The drain loop asks :meth:`Intake.next_batch` for a batch: the circle
scheduler (shim.fair) gives the circles with queued work turns, FIFO within each,
within the per-circle caps; one circle per batch under tenant isolation. Only then
is each id delivered (its attempt counted: the fencing token), right before the
invocation, so an id waiting in the window has spent no attempt.

Why a window this large: a circle that floods a queue puts its ids in front of
everyone else's in one Redis list; the shim cannot see a later circle's ids until it
has read past the flood. A window of a few batches (the first attempt) left the
other circle behind almost the whole flood.

A pause stops reading ahead and hands the window back (oldest at the queue's front);
so does shutdown (:meth:`Intake.hand_back`). A circle's running tasks count against
its cap from their delivery until they are settled (acked, dead-lettered or handed
back: :meth:`Intake.settled`), retries included.

Memory: about 240 bytes of the shim's per id held (36-character ids; measured by
``bench/fairness.py``), so a full default window of 50,000 costs about 12 MB per queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence

from rhailambda.errors import RedisResponseError
from rhailambda.shim.fair import CircleCaps, CircleScheduler
from rhailambda.shim.policy import window_wait_s
from rhailambda.shim.settings import ShimSettings
from rhailambda.shim.source import UNREAD, Ahead, QueueSource, Taken

__all__ = ["CIRCLES_FIELD", "Intake", "circles_info"]

#: The shim info hash's field with its busiest circles (``rhailambda status`` reads it):
#: JSON ``{worker_id: [[circle, read ahead, running], ...]}``, the top few per queue.
CIRCLES_FIELD = "circles"
_TOP_CIRCLES = 10

log = logging.getLogger("rhailambda.shim")
_READ_CHUNK = 1000  # ids per read-ahead call (one move script, one HMGET round)
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 5.0
_ERROR_LOG_S = 60.0


class Intake:
    """The read-ahead window of one queue and the order its ids go out in."""

    def __init__(self, worker_id: str, source: QueueSource, settings: ShimSettings) -> None:
        self.worker_id = worker_id
        self._source = source
        self._s = settings
        fair = settings.fair
        caps = CircleCaps(fair.per_circle_concurrency, fair.per_circle_rate)
        self._sched: CircleScheduler[Ahead] = CircleScheduler(caps, fair=fair.fair_share)
        # one-circle batches: Lambda tenant isolation, or the local pool's --isolate-circles
        one_circle = fair.tenant_isolation or settings.local.isolate_circles
        shaped = fair.fair_share or one_circle or caps != CircleCaps()
        # Plain oldest-first needs no window: a batch or two ahead, as before.
        self._window = fair.window if shaped else 2 * settings.batch.batch_size
        self._one_circle = one_circle
        # No caps, no one-circle batches: the circles of a read that fits one batch into
        # an empty window cannot change what goes out next, so the delivery reads them.
        self._lazy_circles = not one_circle and caps == CircleCaps()
        self._changed = asyncio.Event()  # ids arrived, or a circle's task settled
        self._room = asyncio.Event()  # ids left the window
        self._running: dict[str, list[str]] = {}  # delivered, unsettled id -> its circles
        self._popped: list[Ahead] = []  # out of the window, not yet an invocation
        self._last_dispatch: float | None = None
        self._error_logged = -_ERROR_LOG_S
        self.paused = False

    def __len__(self) -> int:
        return len(self._sched)

    # --- reading ahead --------------------------------------------------------------
    async def read_loop(self) -> None:
        """Keep the window full until cancelled; blocks in Redis on an empty queue."""
        delay_s = _RETRY_MIN_S
        while True:
            room = self._window - len(self._sched)
            if room <= 0:
                await self._wait_for_room()
                continue
            try:
                # Blocking at once: the BLMOVE returns at once when ids are there, and the
                # move of up to `want` more rides in the same round trip.
                got = await self._source.read_ahead(
                    self.worker_id, min(room, _READ_CHUNK), block_s=self._s.queues.block_s,
                    unread_up_to=self._lazy_up_to,
                )  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis said no: the queue must not stop for good
                self._log_failure(exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(_RETRY_MAX_S, delay_s * 2)
                continue
            delay_s = _RETRY_MIN_S
            if got.paused:
                await self._paused()
                continue
            for item in got.items:
                self._sched.push(item.circle, item)
            if got.items:
                self._changed.set()
                # The drain loop takes its batch before the next read starts: a read into
                # an empty window may deliver as it moves (see ``_lazy_up_to``).
                await asyncio.sleep(0)

    def _lazy_up_to(self) -> int:
        """How many ids a read may bring back with circles unread (see ``_lazy_circles``):
        asked once the read has its ids (a blocking read may wait long)."""
        # (ids popped and being delivered are on their way out: they do not count)
        return self._s.batch.batch_size if self._lazy_circles and not len(self._sched) else 0

    async def _wait_for_room(self) -> None:
        """A full window looks at the pause switch every poll, as an empty queue would."""
        self._room.clear()
        try:
            async with asyncio.timeout(self._s.queues.pause_poll_s):
                await self._room.wait()
        except TimeoutError:
            if await self._source.is_paused(self.worker_id):
                await self._paused()

    async def _paused(self) -> None:
        log.info("queue %s is paused", self.worker_id)
        self.paused = True
        await self.hand_back(include_popped=False)
        while await self._source.is_paused(self.worker_id):
            await asyncio.sleep(self._s.queues.pause_poll_s)
        self.paused = False
        log.info("queue %s resumed", self.worker_id)

    def _log_failure(self, exc: Exception, delay_s: float) -> None:
        """A Redis refusal (WRONGTYPE: someone's hash on the queue key) is one line per
        queue a minute, not a traceback per retry; anything else is a bug: traceback."""
        if not isinstance(exc, RedisResponseError):
            log.error("take from %s failed; retrying in %.2f s", self.worker_id, delay_s,
                      exc_info=exc)  # fmt: skip
            return
        now = time.monotonic()
        if now - self._error_logged >= _ERROR_LOG_S:
            self._error_logged = now
            log.error("queue %s cannot be taken from: %s (retrying; logged once a minute)",
                      self.worker_id, exc)  # fmt: skip

    # --- batches --------------------------------------------------------------------
    async def wait_ready(self) -> None:
        """Return once some held id may start now (caps allowing)."""
        while True:
            wait_s = self._sched.wait_s()
            if wait_s == 0:
                return
            self._changed.clear()
            try:
                async with asyncio.timeout(wait_s):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def next_batch(self) -> list[Taken]:
        """Pop the next batch (possibly empty) and deliver it: attempts counted."""
        size = self._s.batch.batch_size
        batch = self._pop(size)
        since = None if self._last_dispatch is None else time.monotonic() - self._last_dispatch
        wait_s = window_wait_s(
            taken=len(batch), batch_size=size, window_s=self._s.batch.window_s,
            since_last_dispatch_s=since,
        )  # fmt: skip
        if batch and wait_s > 0:  # a busy queue: let the window fill the batch
            await asyncio.sleep(wait_s)
            batch += self._pop(size - len(batch), circle=batch[0].circle)
        if not batch:
            return []
        try:
            taken = await self._source.deliver(self.worker_id, batch)
        except Exception:  # Redis refused: they wait in the window again (none is lost)
            self._popped.clear()
            for item in batch:
                self._sched.release(item.circle)
            self._unpop(batch)
            raise
        self._popped.clear()  # the caller owns them now (or they were dropped)
        popped_as = {item.task_id: item.circle for item in batch}
        for one in taken:
            if popped_as.get(one.task_id, one.circle) != one.circle:  # UNREAD, or rewritten
                self._sched.recount(popped_as[one.task_id], one.circle)
            self._running.setdefault(one.task_id, []).append(one.circle)
        kept = {t.task_id for t in taken}
        for item in batch:
            if item.task_id not in kept:  # final or malformed: never ran
                self._sched.release(item.circle)
        self._last_dispatch = time.monotonic()
        return list(taken)

    def _pop(self, max_items: int, circle: str | None = None) -> list[Ahead]:
        if self._one_circle and circle is not None:  # a one-circle batch's top-up
            got = [a for _, a in self._sched.pop_from(circle, max_items)]
        else:
            got = [a for _, a in self._sched.pop_batch(max_items, one_circle=self._one_circle)]
        self._popped += got
        if got:
            self._room.set()
        return got

    def _unpop(self, items: Sequence[Ahead]) -> None:
        for item in items:
            self._sched.push(item.circle, item)

    def settled(self, task_ids: Sequence[str]) -> None:
        """These delivered ids left in-flight (acked, dead-lettered, handed back)."""
        ended: dict[str, int] = {}  # circle -> how many of its tasks ended
        for task_id in task_ids:
            circles = self._running.get(task_id)
            if not circles:
                continue
            circle = circles.pop()
            ended[circle] = ended.get(circle, 0) + 1
            if not circles:
                del self._running[task_id]
        for circle, count in ended.items():
            self._sched.release(circle, count)
        if ended:
            self._changed.set()

    def busiest(self, top: int) -> list[tuple[str, int, int]]:
        """(circle, queued in the window, running) of the ``top`` busiest circles (ids
        whose circle is not read yet are left out: they are on their way out)."""
        return [row for row in self._sched.busiest(top + 1) if row[0] != UNREAD][:top]

    async def hand_back(self, *, include_popped: bool = True) -> int:
        """Hand the window back to the queue, oldest at its front (pause, shutdown)."""
        held = [a for _, a in self._sched.take_all()]
        if include_popped:
            held = [*self._popped, *held]
            self._popped.clear()
        self._room.set()
        if not held:
            return 0
        # newest first: each lands at the queue's taking end, so the oldest ends up next
        return await self._source.hand_back(self.worker_id, [a.task_id for a in reversed(held)])


def circles_info(intakes: Mapping[str, Intake], top: int = _TOP_CIRCLES) -> str:
    """The :data:`CIRCLES_FIELD` value for these intakes."""
    return json.dumps({w: intake.busiest(top) for w, intake in intakes.items()})
