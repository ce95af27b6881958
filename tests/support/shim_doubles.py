"""Test doubles for the shim: an in-memory invoker, handlers for the local backend.

Kept under tests/ so they never ship to Lambda: the local worker processes and
shims that tests start import them by path (tests/conftest.py puts ``tests/`` on
their ``PYTHONPATH``).

Handlers (import path ``support.shim_doubles.<name>``) read their behaviour
from the task ids, so one pool serves every test: an id containing ``crash``
kills the worker process, ``sleep`` sleeps past any budget, ``raise`` raises,
``fail`` is reported in ``batchItemFailures``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from rhailambda.event import BatchResponse, InvocationEvent
from rhailambda.resp import parse_url
from rhailambda.resp_async import AsyncRespClient
from rhailambda.settings import ProtocolSettings
from rhailambda.shim.health import Health
from rhailambda.shim.redis_queue import RedisQueueSource

__all__ = [
    "RUNS_KEY",
    "FakeInvoker",
    "OwnedQueueSource",
    "RunCounter",
    "behaviour_handler",
    "echo_handler",
    "queue_source",
    "run_counter",
    "seed_tasks",
    "wait_until",
]

Behaviour = Callable[[InvocationEvent], Awaitable[BatchResponse]]


async def _all_done(event: InvocationEvent) -> BatchResponse:
    return BatchResponse({t.task_id: "completed" for t in event.tasks})


class FakeInvoker:
    """An in-memory :class:`~rhailambda.shim.invoker.Invoker` that records every call."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour: Behaviour = behaviour or _all_done
        self.events: list[InvocationEvent] = []
        self.running = 0
        self.max_running = 0
        self.running_by_worker: dict[str, int] = {}
        self.max_by_worker: dict[str, int] = {}
        self.closed = False

    @property
    def task_ids(self) -> list[str]:
        return [t.task_id for e in self.events for t in e.tasks]

    async def invoke(self, event: InvocationEvent, *, timeout_s: float) -> BatchResponse:
        self.events.append(event)
        w = event.worker_id
        self.running += 1
        self.running_by_worker[w] = self.running_by_worker.get(w, 0) + 1
        self.max_running = max(self.max_running, self.running)
        self.max_by_worker[w] = max(self.max_by_worker.get(w, 0), self.running_by_worker[w])
        try:
            return await self.behaviour(event)
        finally:
            self.running -= 1
            self.running_by_worker[w] -= 1

    async def aclose(self) -> None:
        self.closed = True


async def wait_until(
    predicate: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.01, what: str = ""
) -> None:
    """Wait until ``predicate()`` (sync or async) is truthy; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what or predicate}")
        await asyncio.sleep(interval_s)


# --- handlers for the local backend ---------------------------------------------


def echo_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Every task completed; reports the worker pid and remaining time for inspection."""
    return {
        "batchItemFailures": [],
        "outcomes": {t["taskId"]: "completed" for t in event["tasks"]},
        "pid": os.getpid(),
        "remaining_ms": context.get_remaining_time_in_millis(),
        "function_name": context.function_name,
    }


def behaviour_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Behaves by task id: ``crash`` exits the process, ``sleep`` overruns, ``raise``
    raises, ``fail`` is reported failed; an id with ``once`` does so only on attempt 1."""
    failures = []
    for t in event["tasks"]:
        task_id, attempt = t["taskId"], t.get("attempt", 1)
        if "once" in task_id and attempt > 1:
            continue
        if "crash" in task_id:
            os._exit(3)
        if "sleep" in task_id:
            time.sleep(context.get_remaining_time_in_millis() / 1000 + 30)
        if "raise" in task_id:
            raise RuntimeError(f"boom on {task_id}")
        if "fail" in task_id:
            failures.append({"itemIdentifier": task_id})
    return {"batchItemFailures": failures}


class OwnedQueueSource(RedisQueueSource):
    """A :class:`RedisQueueSource` that owns its client: :meth:`close` closes both.

    Close it in the event loop that used it (``with source:`` inside the coroutine):
    a transport still open when ``asyncio.run`` closes its loop is a ResourceWarning.
    """

    def __init__(self, client: AsyncRespClient, *args: Any) -> None:
        super().__init__(client, *args)
        self._owned_client = client

    def close(self) -> None:
        super().close()
        self._owned_client.close()

    def __enter__(self) -> OwnedQueueSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def queue_source(
    client: Any, redis_url: str, shim_id: str = "s1", *, health: Any = None, protocol: Any = None
) -> OwnedQueueSource:
    """A queue source on its own shim client for ``redis_url`` (close it: ``with``).

    ``client`` (a client of the test) is not used by the source: the shim speaks
    through an :class:`~rhailambda.resp_async.AsyncRespClient` of its own.
    """
    del client
    return OwnedQueueSource(
        AsyncRespClient(parse_url(redis_url)),
        protocol or ProtocolSettings(),
        shim_id,
        health or Health(redis_url=redis_url),
    )


def seed_tasks(
    client: Any, layout: Any, worker_id: str, task_ids: list[str], *, created_at: str = ""
) -> None:
    """Write pending task hashes and LPUSH their ids (in order: the first is the oldest)."""
    from rhailambda.protocol import now_rfc3339

    stamp = created_at or now_rfc3339()
    pipe = client.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.hset(
            layout.task(task_id),
            mapping={
                "taskId": task_id,
                "script": "1",
                "callerId": "c",
                "contextId": "c",
                "workerId": worker_id,
                "status": "pending",
                "createdAt": stamp,
                "updatedAt": stamp,
            },
        )
    for i in range(0, len(task_ids), 1000):
        pipe.lpush(layout.queue(worker_id), *task_ids[i : i + 1000])
    pipe.execute()


RUNS_KEY = "rhailambda:test:runs"


class _RunCounterSession:
    def __init__(self, client: Any) -> None:
        self._client = client

    def _ran(self, task_id: str) -> bool:
        self._client.execute("HINCRBY", RUNS_KEY, task_id, 1)
        return True

    def modules(self) -> dict[str, dict[str, Callable[..., Any]]]:
        return {"probe": {"ran": self._ran}}

    def commit(self) -> None:
        pass

    def discard(self) -> None:
        pass


class RunCounter:
    """An extension giving scripts ``probe::ran(TASK_ID)``: counts executions, unstaged.

    The count lands in Redis the moment the script runs (not at commit), so a run
    cut short by a killed worker is counted too: an id counted twice was executed
    twice. For chaos tests: ``RHAILAMBDA_EXTENSIONS=support.shim_doubles:run_counter``.
    """

    name = "probe"

    def __init__(self, redis_url: str) -> None:
        from rhailambda.resp import from_url

        self._client = from_url(redis_url, client_name="rhailambda-probe")

    def open(self, ctx: Any) -> _RunCounterSession:
        return _RunCounterSession(self._client)


def run_counter(env: Any) -> RunCounter:
    """``RHAILAMBDA_EXTENSIONS`` factory for :class:`RunCounter` (reads REDIS_URL)."""
    from rhailambda.settings import RedisSettings

    return RunCounter(RedisSettings.from_env(env).url)
