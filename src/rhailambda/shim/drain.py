"""The drain loop: worker queues in, invocations out, outcomes settled.

Each queue has an intake (shim.intake: a reader keeps a read-ahead window of its
ids, ordered by circle) and a taker, which waits until the intake has an id that
may start, then for a slot (its queue's cap, then the FIFO-fair global cap),
takes the intake's next batch and hands it to an invocation task, which settles the
outcome: done ids are acknowledged; failed ids are retried after a jittered
backoff with a new attempt (a new fencing token) or dead-lettered with an error
reply; a throttled batch is retried as it is (no attempt spent) and halves the
global concurrency for a while. The loop knows a :class:`QueueSource` and an
:class:`Invoker`, never Redis or a backend.

Shutdown is :meth:`Drainer.stop_taking` then :meth:`Drainer.finish_invocations`.
Once it begins no invocation starts: the read-ahead windows and pending retries'
ids are handed back to their queues at once, and a batch that fails or is throttled
meanwhile is handed back instead of scheduled for a retry. Every step is bounded:
an invocation that does not end soon after its cancel is abandoned, its ids left in
flight for the caller's final hand-back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

from rhailambda.errors import InvocationError, ThrottledError
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.protocol import age_s
from rhailambda.shim.cancel import cancel_and_wait
from rhailambda.shim.intake import Intake
from rhailambda.shim.invoker import Invoker
from rhailambda.shim.limiter import FairLimiter
from rhailambda.shim.policy import backoff_s
from rhailambda.shim.settings import ShimSettings
from rhailambda.shim.source import QueueSource, Taken

__all__ = ["DrainStats", "Drainer"]

log = logging.getLogger("rhailambda.shim")
_STOP_TAKING_S = 2.0
_STOP_INVOKING_S = 2.0  # after its cancel, for an invocation to end
_LOGGED_IDS = 20
_TAKE_RETRY_MIN_S = 0.05
_TAKE_RETRY_MAX_S = 5.0


@dataclass(slots=True)
class DrainStats:
    batches: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    throttled: int = 0
    invocation_errors: int = 0  # invocations that failed whole (crash, timeout, backend error)
    batch_s: float = 0.0  # seconds spent in invocations, all batches (metrics: the mean)

    def as_info(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}


class Drainer:
    """Drains the queues of ``settings`` through ``invoker`` until :meth:`stop_taking`."""

    def __init__(
        self,
        settings: ShimSettings,
        source: QueueSource,
        invoker: Invoker,
        *,
        limiter: FairLimiter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._s = settings
        self._source = source
        self._invoker = invoker
        self.limiter = limiter or FairLimiter(settings.flow.max_concurrency)
        self._rng = rng or random.Random()
        self._queue_slots = {
            w: asyncio.Semaphore(settings.flow.per_queue_concurrency)
            for w in settings.queues.worker_ids
        }
        self.intakes = {w: Intake(w, source, settings) for w in settings.queues.worker_ids}
        self._throttle_streak = 0
        self._takers: list[asyncio.Task[None]] = []
        # Running invocations and the ids each holds: (worker id, task ids).
        self._invocations: dict[asyncio.Task[None], tuple[str, list[str]]] = {}
        # Pending retries and the ids each holds (until it starts their invocation).
        self._retries: dict[asyncio.Task[None], tuple[str, list[str]]] = {}
        self._stopping = False
        self.stats = DrainStats()

    # --- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        for worker_id in self._s.queues.worker_ids:
            read = self.intakes[worker_id].read_loop()
            for name, loop in (("read", read), ("take", self._take_loop(worker_id))):
                task = asyncio.create_task(loop, name=f"{name}:{worker_id}")
                task.add_done_callback(_log_crash)
                self._takers.append(task)

    async def stop_taking(self) -> None:
        """Start the shutdown: stop the takers, cancel pending retries and hand their ids
        back to their queues. From here on no invocation starts."""
        self._stopping = True
        # Bounded (the final hand-back moves the whole in-flight list anyway); a taker
        # whose cancel redis-py lost on Python 3.11 is cancelled again, mid-BLMOVE.
        stuck = await cancel_and_wait([*self._takers, *self._retries], _STOP_TAKING_S)
        if stuck:
            log.warning("%d takers or retries did not stop within %g s", len(stuck), _STOP_TAKING_S)
        self._takers.clear()
        await self._hand_back_read_ahead()
        await self._hand_back_retries()

    async def _hand_back_read_ahead(self) -> None:
        """Hand back the read-ahead windows (the final hand-back of the whole in-flight
        list covers them too, should Redis refuse now)."""
        try:
            async with asyncio.timeout(_STOP_TAKING_S):
                for intake in self.intakes.values():
                    await intake.hand_back()
        except Exception:
            log.exception("handing back read-ahead ids failed")

    async def finish_invocations(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for running invocations, then cancel the rest and wait
        up to 2 s more for them to end. Returns how many were cancelled.

        One still running after that (its invoker's clean-up hangs) is abandoned: logged
        and left running, its ids in flight, so the caller's final hand-back of the
        whole in-flight list returns them to their queues.
        """
        self._stopping = True  # nothing new starts; every invocation is in the dict below
        pending = set(self._invocations)
        if pending and timeout_s > 0:
            _, pending = await asyncio.wait(pending, timeout=timeout_s)
        # Cancelled again while still running: a cancel can be lost on Python 3.11.
        abandoned = await cancel_and_wait(pending, _STOP_INVOKING_S)
        if abandoned:
            self._log_abandoned(abandoned)
        await cancel_and_wait(self._retries, _STOP_TAKING_S)  # none, unless stop_taking was skipped
        await self._hand_back_retries()
        return len(pending)

    def _log_abandoned(self, abandoned: set[asyncio.Task[None]]) -> None:
        by_queue: dict[str, list[str]] = {}
        for task in abandoned:
            worker_id, task_ids = self._invocations.get(task, ("?", []))
            by_queue.setdefault(worker_id, []).extend(task_ids)
        held = "; ".join(f"{w}: {_some(ids)}" for w, ids in by_queue.items())
        log.warning(
            "%d cancelled invocations did not end within %g s and are abandoned; their ids "
            "stay in flight for the final hand-back: %s",
            len(abandoned), _STOP_INVOKING_S, held,
        )  # fmt: skip

    async def _hand_back_retries(self) -> None:
        """Hand back the ids of retries that ended without starting their invocation."""
        by_queue: dict[str, list[str]] = {}
        for task in [t for t in self._retries if t.done()]:
            worker_id, task_ids = self._retries.pop(task)
            by_queue.setdefault(worker_id, []).extend(task_ids)
        try:
            async with asyncio.timeout(_STOP_TAKING_S):
                for worker_id, task_ids in by_queue.items():
                    await self._hand_back(worker_id, task_ids)
        except Exception:  # Redis down or refusing: the final hand-back moves them
            log.exception("handing back %d retried ids failed",
                          sum(map(len, by_queue.values())))  # fmt: skip

    @property
    def running_invocations(self) -> int:
        return len(self._invocations)

    def retries_waiting(self) -> dict[str, int]:
        """Ids waiting out a retry backoff, per queue (in flight meanwhile)."""
        waiting: dict[str, int] = {}
        for worker_id, task_ids in self._retries.values():
            waiting[worker_id] = waiting.get(worker_id, 0) + len(task_ids)
        return waiting

    def _start_invocation(
        self, worker_id: str, items: list[Taken], slots: asyncio.Semaphore
    ) -> None:
        """Run ``items`` as one invocation task, which owns both slots and releases them."""
        task = asyncio.create_task(self._run(worker_id, items, slots), name=f"invoke:{worker_id}")
        self._invocations[task] = (worker_id, [t.task_id for t in items])
        task.add_done_callback(self._forget_invocation)
        task.add_done_callback(_log_crash)

    def _forget_invocation(self, task: asyncio.Task[None]) -> None:
        self._invocations.pop(task, None)

    # --- taking ------------------------------------------------------------------
    async def _take_loop(self, worker_id: str) -> None:
        """Batches out of the queue's intake, one per free slot.

        An idle queue is waited on (the intake's reader blocks in Redis) holding NO
        slot, so neither other queues nor this queue's own retries wait behind it.
        """
        intake = self.intakes[worker_id]
        slots = self._queue_slots[worker_id]
        delay_s = _TAKE_RETRY_MIN_S
        while True:
            await intake.wait_ready()
            await self._acquire(slots)
            try:
                items = await intake.next_batch()
            except asyncio.CancelledError:
                self._release(slots)
                raise
            except Exception:  # Redis refused the delivery: the ids wait in the window
                self._release(slots)
                log.exception("delivering a batch of %s failed; retrying in %.2f s",
                              worker_id, delay_s)  # fmt: skip
                await asyncio.sleep(delay_s)
                delay_s = min(_TAKE_RETRY_MAX_S, delay_s * 2)
                continue
            delay_s = _TAKE_RETRY_MIN_S
            if not items:
                self._release(slots)
                continue
            if self._stopping:  # a taker that outlived its cancel (see stop_taking)
                self._release(slots)
                await self._hand_back(worker_id, [t.task_id for t in items])
                return
            self._start_invocation(worker_id, items, slots)

    async def _acquire(self, slots: asyncio.Semaphore) -> None:
        """The queue's slot, then a global one (FIFO-fair across queues)."""
        await slots.acquire()
        try:
            await self.limiter.acquire()
        except BaseException:
            slots.release()
            raise

    def _release(self, slots: asyncio.Semaphore) -> None:
        self.limiter.release()
        slots.release()

    async def _hand_back(self, worker_id: str, task_ids: list[str]) -> None:
        await self._source.hand_back(worker_id, task_ids)
        self.intakes[worker_id].settled(task_ids)

    # --- invoking and settling ----------------------------------------------------
    async def _run(self, worker_id: str, items: list[Taken], slots: asyncio.Semaphore) -> None:
        try:
            items = await self._drop_expired(worker_id, items)
            if not items:
                return
            failed, reason, retryable = await self._invoke(worker_id, items)
        finally:
            self._release(slots)
        if failed:
            try:
                await self._settle_failures(worker_id, failed, reason, retryable=retryable)
            except Exception:  # Redis refused the dead-letter or retry bookkeeping
                log.exception("settling %d failed ids of %s failed; handing them back",
                              len(failed), worker_id)  # fmt: skip
                await self._hand_back(worker_id, [t.task_id for t in failed])

    async def _invoke(self, worker_id: str, items: list[Taken]) -> tuple[list[Taken], str, bool]:
        """One invocation; returns the failed items, the reason and whether to retry them."""
        isolate = self._s.fair.tenant_isolation or self._s.local.isolate_circles
        tenant = items[0].circle if isolate else None  # a one-circle batch names its circle
        event = InvocationEvent(
            worker_id, tuple(TaskRef(t.task_id, t.attempt) for t in items), tenant_id=tenant
        )
        fn = self._s.function
        started = time.monotonic()
        outcome = "ok"
        failed: list[Taken] = []
        reason, retryable = "", True
        try:
            # asyncio.timeout, not wait_for: the invoker runs in this task, so a cancel
            # reaches it and shutdown sees it end (or not). Python 3.11's wait_for runs it
            # in a task of its own that a second cancel detaches, still running, unseen.
            async with asyncio.timeout(fn.function_timeout_s + 2 * fn.timeout_margin_s):
                response = await self._invoker.invoke(event, timeout_s=fn.function_timeout_s)
        except ThrottledError as exc:
            await self._on_throttled(worker_id, items, exc)
            outcome = "throttled"
        except (InvocationError, TimeoutError) as exc:
            failed, reason = items, str(exc) or "invocation timed out"
            retryable = getattr(exc, "retryable", True)
            outcome = "invocation-error"
        except Exception as exc:  # a backend bug must not lose the batch
            log.exception("invoker raised an unexpected error")
            failed, reason = items, f"{type(exc).__name__}: {exc}"
            outcome = "invocation-error"
        else:
            self._throttle_streak = 0
            self.limiter.on_success()
            bad = response.failed_ids
            failed = [t for t in items if t.task_id in bad]
            reason = "the function reported the task as failed"
            rejected = response.rejected  # no retry can help: dead letters, with the reason
            for why in dict.fromkeys(rejected.values()):
                group = [t for t in items if rejected.get(t.task_id) == why]
                await self._dead_letter(worker_id, group, f"dead-lettered (rejected): {why}")
            done = [t for t in items if t.task_id not in bad and t.task_id not in rejected]
            await self._source.ack(worker_id, done)
            self.intakes[worker_id].settled([t.task_id for t in done])
        self.stats.batches += 1
        self.stats.invocation_errors += outcome == "invocation-error"
        self.stats.batch_s += time.monotonic() - started
        self.stats.completed += len(items) - len(failed) if outcome == "ok" else 0
        self.stats.failed += len(failed)
        log.info(
            "batch worker=%s size=%d attempt=%d duration_ms=%.1f outcome=%s done=%d failed=%d",
            worker_id, len(items), max(t.attempt for t in items),
            (time.monotonic() - started) * 1000, outcome,
            len(items) - len(failed) if outcome == "ok" else 0, len(failed),
        )  # fmt: skip
        return failed, reason, retryable

    async def _drop_expired(self, worker_id: str, items: list[Taken]) -> list[Taken]:
        """Dead-letter, without invoking, ids past max attempts or max age."""
        max_attempts = self._s.retry.max_attempts
        over = [t for t in items if t.attempt > max_attempts]
        old = self._too_old(items)
        if over:
            await self._dead_letter(
                worker_id, over,
                f"dead-lettered after {max_attempts} attempts: delivered again without finishing",
            )  # fmt: skip
        if old:
            await self._dead_letter(worker_id, [t for t in old if t not in over], self._age_msg())
        gone = {t.task_id for t in (*over, *old)}
        return [t for t in items if t.task_id not in gone] if gone else items

    def _too_old(self, items: Sequence[Taken]) -> list[Taken]:
        max_age = self._s.retry.max_task_age_s
        if max_age is None:
            return []
        now = time.time()
        return [t for t in items if (age := age_s(t.created_at, now)) is not None and age > max_age]

    def _age_msg(self, last_error: str = "") -> str:
        suffix = f": {last_error}" if last_error else ""
        max_age = self._s.retry.max_task_age_s
        return f"dead-lettered: older than the maximum task age {max_age:g} s{suffix}"

    async def _settle_failures(
        self, worker_id: str, failed: list[Taken], reason: str, *, retryable: bool
    ) -> None:
        retry = self._s.retry
        if not retryable:
            await self._dead_letter(worker_id, failed, f"dead-lettered (not retryable): {reason}")
            return
        spent = [t for t in failed if t.attempt >= retry.max_attempts]
        for attempt in sorted({t.attempt for t in spent}):
            group = [t for t in spent if t.attempt == attempt]
            await self._dead_letter(
                worker_id, group, f"dead-lettered after {attempt} attempts: {reason}"
            )
        rest = [t for t in failed if t.attempt < retry.max_attempts]
        old = self._too_old(rest)
        if old:
            await self._dead_letter(worker_id, old, self._age_msg(reason))
            rest = [t for t in rest if t not in old]
        if rest:
            delay = backoff_s(
                max(t.attempt for t in rest), retry.backoff_base_s, retry.backoff_cap_s, self._rng
            )
            await self._retry(worker_id, rest, delay, redeliver=True)

    async def _dead_letter(self, worker_id: str, items: Sequence[Taken], message: str) -> None:
        if not items:
            return
        self.stats.dead_lettered += len(items)
        log.warning("dead-letter worker=%s count=%d reason=%s", worker_id, len(items), message)
        task_ids = [t.task_id for t in items]
        await self._source.dead_letter(worker_id, task_ids, message)
        self.intakes[worker_id].settled(task_ids)

    async def _on_throttled(self, worker_id: str, items: list[Taken], exc: ThrottledError) -> None:
        self.stats.throttled += 1
        self._throttle_streak += 1
        self.limiter.on_throttle()
        retry = self._s.retry
        delay = exc.retry_after_s
        if delay is None:
            delay = backoff_s(self._throttle_streak, retry.backoff_base_s, retry.backoff_cap_s)
        log.warning(
            "throttled worker=%s size=%d; concurrency now %d, retry in %.2f s",
            worker_id, len(items), self.limiter.limit, delay,
        )  # fmt: skip
        await self._retry(worker_id, items, delay, redeliver=False)

    async def _retry(
        self, worker_id: str, items: list[Taken], delay_s: float, *, redeliver: bool
    ) -> None:
        """Run ``items`` again after ``delay_s``; once stopping, hand them back instead."""
        task_ids = [t.task_id for t in items]
        if self._stopping:
            await self._hand_back(worker_id, task_ids)
            return
        self.stats.retried += len(items) if redeliver else 0
        task = asyncio.create_task(
            self._retry_later(worker_id, items, delay_s, redeliver=redeliver),
            name=f"retry:{worker_id}",
        )
        self._retries[task] = (worker_id, task_ids)
        task.add_done_callback(_log_crash)

    async def _retry_later(
        self, worker_id: str, items: list[Taken], delay_s: float, *, redeliver: bool
    ) -> None:
        await asyncio.sleep(delay_s)
        if redeliver:  # a new delivery: a new attempt, the fencing token of this run
            circle = {t.task_id: t.circle for t in items}
            again = await self._source.redeliver(worker_id, [t.task_id for t in items])
            self.intakes[worker_id].settled(
                sorted(set(circle).difference(t.task_id for t in again))
            )
            items = [replace(t, circle=circle[t.task_id]) for t in again]
        if items:
            slots = self._queue_slots[worker_id]
            await self._acquire(slots)
            if self._stopping:  # outlived its cancel: stop_taking or the final step hands back
                self._release(slots)
                return
            # From here the batch is an invocation (shutdown waits for it), not a retry.
            self._start_invocation(worker_id, items, slots)
        current = asyncio.current_task()
        assert current is not None
        del self._retries[current]  # its ids are an invocation's now, or final


def _some(task_ids: Sequence[str]) -> str:
    shown = ", ".join(task_ids[:_LOGGED_IDS])
    rest = len(task_ids) - _LOGGED_IDS
    return f"{shown} and {rest} more" if rest > 0 else shown


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("shim task %s crashed", task.get_name(), exc_info=exc)
