"""The drain loop's rules on an in-memory queue source: no Redis, no network.

Retry with a new attempt, dead letter with the reason once attempts run out or the
error cannot be helped, throttling that spends no attempt and lowers concurrency,
rejected ids dead-lettered alone, and a shutdown that hands pending retries back.
The same rules against a real Redis: tests/integration/test_shim_drain.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from memory_source import MemoryQueueSource
from support.shim_doubles import FakeInvoker
from support.unit_rig import SETTINGS, W, until

from rhailambda.errors import InvocationError, PayloadTooLargeError, ThrottledError
from rhailambda.event import BatchResponse, InvocationEvent, Outcome
from rhailambda.shim.drain import Drainer
from rhailambda.shim.settings import (
    RetrySettings,
    ShimSettings,
)

Behaviour = Callable[[InvocationEvent], Awaitable[BatchResponse]]


def drain(
    source: MemoryQueueSource,
    behaviour: Behaviour,
    done: Callable[[], bool],
    *,
    settings: ShimSettings = SETTINGS,
    before_stop: Callable[[Drainer], Awaitable[None]] | None = None,
) -> tuple[FakeInvoker, Drainer]:
    invoker = FakeInvoker(behaviour)

    async def go() -> Drainer:
        drainer = Drainer(settings, source, invoker)
        drainer.start()
        try:
            await until(done)
            if before_stop is not None:
                await before_stop(drainer)
        finally:
            await drainer.stop_taking()
            await drainer.finish_invocations(1.0)
        return drainer

    return invoker, asyncio.run(go())


def outcomes(**by_id: Outcome) -> Behaviour:
    """Each listed id gets its outcome; every other id completes."""

    async def behave(event: InvocationEvent) -> BatchResponse:
        return BatchResponse({t.task_id: by_id.get(t.task_id, "completed") for t in event.tasks})

    return behave


def source_with(*task_ids: str) -> MemoryQueueSource:
    source = MemoryQueueSource()
    source.push(W, task_ids)
    return source


def attempts_of(invoker: FakeInvoker, task_id: str) -> list[int]:
    return [t.attempt for e in invoker.events for t in e.tasks if t.task_id == task_id]


def test_a_failed_task_is_retried_with_a_new_attempt_and_its_neighbours_once() -> None:
    source = source_with("a", "b", "c")
    failed_once: set[str] = set()

    async def behave(event: InvocationEvent) -> BatchResponse:
        out: dict[str, Outcome] = {}
        for t in event.tasks:
            first = t.task_id == "b" and "b" not in failed_once
            failed_once.update({"b"} if first else set())
            out[t.task_id] = "failed" if first else "completed"
        return BatchResponse(out)

    invoker, drainer = drain(source, behave, lambda: len(source.acked) == 3)
    assert attempts_of(invoker, "b") == [1, 2]
    assert attempts_of(invoker, "a") == [1] and attempts_of(invoker, "c") == [1]
    assert source.dead == {} and source.held(W) == []
    assert drainer.stats.retried == 1


def test_attempts_run_out_into_a_dead_letter_with_the_reason() -> None:
    source = source_with("a", "b")
    invoker, drainer = drain(source, outcomes(b="failed"), lambda: bool(source.dead))
    assert attempts_of(invoker, "b") == [1, 2, 3]
    assert source.dead[W] == [
        ("b", "dead-lettered after 3 attempts: the function reported the task as failed")
    ]
    assert source.tasks["a"].final and source.tasks["a"].error is None
    assert drainer.stats.dead_lettered == 1


def test_an_error_no_retry_can_fix_is_dead_lettered_at_once() -> None:
    source = source_with("a", "b")

    async def too_large(event: InvocationEvent) -> BatchResponse:
        raise PayloadTooLargeError("response exceeds 6 MB")

    invoker, _ = drain(source, too_large, lambda: len(source.dead.get(W, [])) == 2)
    assert len(invoker.events) == 1
    assert {reason for _, reason in source.dead[W]} == {
        "dead-lettered (not retryable): response exceeds 6 MB"
    }


def test_an_invocation_error_retries_the_whole_batch() -> None:
    source = source_with("a", "b")
    calls = 0

    async def crash_once(event: InvocationEvent) -> BatchResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise InvocationError("worker process died")
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    invoker, _ = drain(source, crash_once, lambda: len(source.acked) == 2)
    assert attempts_of(invoker, "a") == [1, 2] and attempts_of(invoker, "b") == [1, 2]
    assert source.dead == {}


def test_a_throttled_batch_runs_again_without_spending_an_attempt() -> None:
    source = source_with("a", "b")
    throttles = 2

    async def throttled(event: InvocationEvent) -> BatchResponse:
        nonlocal throttles
        if throttles:
            throttles -= 1
            raise ThrottledError("TooManyRequestsException", retry_after_s=0.001)
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    invoker, drainer = drain(source, throttled, lambda: len(source.acked) == 2)
    assert attempts_of(invoker, "a") == [1, 1, 1]
    assert drainer.stats.throttled == 2 and drainer.stats.retried == 0
    assert source.dead == {}


def test_throttling_lowers_the_concurrency_limit() -> None:
    source = source_with(*[f"t{i}" for i in range(8)])
    seen: list[int] = []
    throttles = 0

    async def throttled(event: InvocationEvent) -> BatchResponse:
        nonlocal throttles
        throttles += 1
        raise ThrottledError("TooManyRequestsException", retry_after_s=0.001)

    async def record(drainer: Drainer) -> None:
        seen.append(drainer.limiter.limit)

    drain(source, throttled, lambda: throttles >= 2, before_stop=record)
    assert seen and seen[0] < SETTINGS.flow.max_concurrency


def test_rejected_ids_are_dead_lettered_alone_with_the_functions_reason() -> None:
    source = source_with("good1", "bad", "good2")

    async def reject(event: InvocationEvent) -> BatchResponse:
        out: dict[str, Outcome] = {t.task_id: "completed" for t in event.tasks}
        out["bad"] = "rejected"
        return BatchResponse(out, reasons={"bad": "taskId must be a non-empty string"})

    invoker, _ = drain(source, reject, lambda: len(source.acked) == 2 and bool(source.dead))
    assert source.dead[W] == [
        ("bad", "dead-lettered (rejected): taskId must be a non-empty string")
    ]
    assert sorted(t.task_id for t in source.acked) == ["good1", "good2"]
    assert len(invoker.events) == 1


def test_an_id_delivered_past_max_attempts_is_dead_lettered_without_running() -> None:
    source = source_with("old", "new")
    source.tasks["old"].attempt = 3  # three deliveries that never finished (reaped shims)
    invoker, _ = drain(source, outcomes(), lambda: len(source.acked) == 1 and bool(source.dead))
    assert invoker.task_ids == ["new"]
    assert source.dead[W][0][0] == "old" and "after 3 attempts" in source.dead[W][0][1]


def test_shutdown_hands_pending_retries_back_to_the_queue_front() -> None:
    slow = dataclasses.replace(
        SETTINGS, retry=RetrySettings(max_attempts=3, backoff_base_s=60, backoff_cap_s=60)
    )
    source = source_with("a", "b")
    invoker, _ = drain(source, outcomes(a="failed"), lambda: drainer_retried(source), settings=slow)
    assert list(source.queues[W]) == ["a"]  # back on the queue, taken next
    assert source.held(W) == [] and source.dead == {}
    assert attempts_of(invoker, "a") == [1]


def drainer_retried(source: MemoryQueueSource) -> bool:
    """'a' failed and waits for its retry: 'b' is done, 'a' still held."""
    return len(source.acked) == 1 and source.held(W) == ["a"]


def test_a_paused_queue_is_not_taken_from_until_resumed() -> None:
    source = source_with("a")
    source.paused.add(W)

    async def resume_later(event: InvocationEvent) -> BatchResponse:
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    invoker = FakeInvoker(resume_later)

    async def go() -> None:
        drainer = Drainer(SETTINGS, source, invoker)
        drainer.start()
        await asyncio.sleep(0.05)
        assert invoker.events == []
        source.paused.discard(W)
        await until(lambda: len(source.acked) == 1)
        await drainer.stop_taking()
        await drainer.finish_invocations(1.0)

    asyncio.run(go())
    assert invoker.task_ids == ["a"]


@pytest.mark.parametrize("bug", [RuntimeError("backend bug"), KeyError("x")])
def test_an_unexpected_invoker_error_loses_nothing(bug: Exception) -> None:
    source = source_with("a")
    raised = False

    async def buggy(event: InvocationEvent) -> Any:
        nonlocal raised
        if not raised:
            raised = True
            raise bug
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    invoker, _ = drain(source, buggy, lambda: len(source.acked) == 1)
    assert attempts_of(invoker, "a") == [1, 2]
