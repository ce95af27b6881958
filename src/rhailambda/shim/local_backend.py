"""The local backend: the unchanged Lambda handler in a pool of local worker processes.

Each worker (:mod:`rhailambda.shim.local_worker`) is a warm environment: it
imports the handler once and serves invocations one at a time over pipes. The
pool scales up on demand to ``max_workers``, retires workers idle longer than
``idle_timeout_s`` (an idle stack scales to zero), and replaces a worker that
crashed or overran its budget (killed). Workers are forked from a template
process that imported the handler's modules once (:mod:`rhailambda.shim.forkserver`),
so one started after the pool scaled to zero is ready in a few ms; the template
stays for the pool's life. Failures map onto the invoker contract:
a crash or timeout is a retryable :class:`InvocationError`; an exception from the
handler is an :class:`InvocationError` carrying its type and message.

``isolate_circles`` (``--isolate-circles``): a worker serves one circle (the
batch's ``tenant_id``) for its whole life and is never handed another's batch; a
batch for a circle without an idle worker gets a fresh one, retiring the least
recently used idle worker when the pool is full. A batch without ``tenant_id``
(the drain loop does not build one-circle batches yet) is split by each task's
``contextId``, read from its hash in one round trip, and its parts run one after
the other, each on its circle's worker (each within the time left of the batch's
budget); their answers are merged (a part that failed as a whole reports its ids
failed, unless every part failed: then its error is raised). Each worker checks
its batches itself too (:class:`~rhailambda.shim.local_worker.CircleGuard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from rhailambda.errors import InvocationError, RhailambdaError
from rhailambda.event import BatchResponse, EventError, InvocationEvent, Outcome, TaskRef
from rhailambda.shim.forkserver import ForkServer
from rhailambda.shim.local_worker import circle_queries, encode_frame
from rhailambda.shim.settings import ShimSettings

__all__ = ["LocalInvoker", "check_handler"]

log = logging.getLogger("rhailambda.shim.local")
_HEADER = struct.Struct(">I")
_INIT_TIMEOUT_S = 60.0


#: The circle of each task id (``""``: none known), in order.
CircleLookup = Callable[[Sequence[str]], Awaitable[list[str]]]


class _Proc(Protocol):
    """What the pool uses of a worker process (exec'd, or forked by the template)."""

    pid: int

    @property
    def stdin(self) -> asyncio.StreamWriter | None: ...

    @property
    def stdout(self) -> asyncio.StreamReader | None: ...

    @property
    def returncode(self) -> int | None: ...

    def kill(self) -> None: ...

    async def wait(self) -> int: ...


@dataclass(eq=False)
class _Worker:
    proc: _Proc
    circle: str | None = None  # the one circle it serves (isolate_circles)
    last_used: float = field(default_factory=time.monotonic)
    invocations: int = 0

    async def send(self, payload: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(encode_frame(payload))
        await self.proc.stdin.drain()

    async def receive(self) -> Any:
        assert self.proc.stdout is not None
        header = await self.proc.stdout.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        return json.loads(await self.proc.stdout.readexactly(size))

    async def kill(self) -> int | None:
        """SIGKILL and reap. The signal goes before any await: even if this is cancelled
        while waiting, the process dies and asyncio's child watcher reaps it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.proc.wait(), timeout=5)
        return None


def check_handler(settings: ShimSettings, *, python: str = sys.executable) -> str | None:
    """Start one local worker as the pool would and stop it: why it cannot start, or None.

    The shim calls this at start, so a ``--handler`` that does not import (or a
    function setting that fails its cold start) stops the shim with one line
    instead of failing every task later.
    """
    argv = [python, "-m", "rhailambda.shim.local_worker", settings.local.handler,
            settings.function.function_name, str(settings.local.memory_limit_mb)]  # fmt: skip
    try:
        done = subprocess.run(
            argv, input=b"", capture_output=True, timeout=_INIT_TIMEOUT_S,
            env={**os.environ, **worker_env(settings)}, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"a local worker did not start within {_INIT_TIMEOUT_S:g} s"
    out = done.stdout
    if len(out) >= _HEADER.size:
        (size,) = _HEADER.unpack(out[: _HEADER.size])
        with contextlib.suppress(ValueError):
            ready = json.loads(out[_HEADER.size : _HEADER.size + size])
            if isinstance(ready, dict):
                return None if ready.get("ready") else str(ready.get("error"))
    return f"a local worker exited with code {done.returncode} before it was ready"


def worker_env(settings: ShimSettings) -> dict[str, str]:
    """What local workers get on top of the shim's environment: the function's settings,
    and the shim's log level for the function's logger (Powertools reads
    ``POWERTOOLS_LOG_LEVEL``) unless one is set: ``--log-level WARNING`` quiets both."""
    env = dict(settings.function_env)
    if not (os.environ.get("POWERTOOLS_LOG_LEVEL") or env.get("POWERTOOLS_LOG_LEVEL")):
        env["POWERTOOLS_LOG_LEVEL"] = settings.log_level
    return env


class LocalInvoker:
    """An :class:`~rhailambda.shim.invoker.Invoker` running the handler in local processes."""

    def __init__(
        self,
        *,
        handler: str,
        max_workers: int,
        idle_timeout_s: float,
        env: Mapping[str, str] | None = None,
        function_name: str = "rhailambda",
        memory_mb: int = 1024,
        timeout_margin_s: float = 1.0,
        python: str = sys.executable,
        fork_server: bool = True,
        isolate_circles: bool = False,
        circle_lookup: CircleLookup | None = None,
    ) -> None:
        self._worker_args = [handler, function_name, str(memory_mb)]
        self._argv = [python, "-m", "rhailambda.shim.local_worker", *self._worker_args]
        self._idle_timeout_s = idle_timeout_s
        # The workers inherit the shim's environment plus the function's settings.
        self._env = {**os.environ, **(env or {})}
        self._margin_s = timeout_margin_s
        self._max_workers = max_workers
        self._idle: list[_Worker] = []
        self._count = 0
        # One slot per invocation. A slot is taken by awaiting and given back without
        # awaiting, so a cancel can never lose one (see _acquire).
        self._slots = asyncio.Semaphore(max_workers)
        self._retirer: asyncio.Task[None] | None = None
        self._closed = False
        self._fork = fork_server
        self._template: ForkServer | None = None
        self._template_lock = asyncio.Lock()
        self._isolate = isolate_circles
        self._circle_lookup = circle_lookup
        self._stopping: set[asyncio.Task[None]] = set()
        self._lookup_client: Any = None
        self.spawned = 0

    @classmethod
    def from_settings(cls, settings: ShimSettings) -> LocalInvoker:
        invoker = cls(
            handler=settings.local.handler,
            max_workers=settings.local.max_workers,
            idle_timeout_s=settings.local.idle_timeout_s,
            env=worker_env(settings),
            function_name=settings.function.function_name,
            memory_mb=settings.local.memory_limit_mb,
            timeout_margin_s=min(settings.function.timeout_margin_s, 2.0),
            isolate_circles=settings.local.isolate_circles,
        )
        if settings.local.isolate_circles:
            invoker.read_circles_from(settings)
        return invoker

    def read_circles_from(self, settings: ShimSettings) -> None:
        """Read the circles of batches without ``tenant_id`` from the shim's Redis."""
        from rhailambda.resp_async import AsyncRespClient

        client = AsyncRespClient(settings.redis.address(), client_name="rhailambda-shim-circles")
        layout = settings.protocol.layout

        async def lookup(task_ids: Sequence[str]) -> list[str]:
            replies = await client.round_trip(circle_queries(layout, list(task_ids)))
            return [r if isinstance(r, str) else "" for r in replies]

        self._lookup_client = client
        self._circle_lookup = lookup

    @property
    def worker_count(self) -> int:
        return self._count

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._idle]

    def worker_circles(self) -> dict[int, str | None]:
        """The circle each idle worker serves, by pid."""
        return {w.proc.pid: w.circle for w in self._idle}

    @property
    def template(self) -> ForkServer | None:
        """The template process workers are forked from (None: not started, or exec)."""
        return self._template

    # --- the pool ------------------------------------------------------------------
    def _start_retirer(self) -> None:
        if self._retirer is None:
            self._retirer = asyncio.create_task(self._retire_idle())

    async def _acquire(self, circle: str | None) -> _Worker:
        """A slot, then an idle worker (the warmest, of ``circle``) or a new one.

        Cancellation-proof: a waiter cancelled just after being handed a slot passes it
        on (asyncio.Semaphore does), and once owned the slot is given back on every
        exit without an await. Not an asyncio.Condition: on Python 3.11 a waiter
        cancelled after its wake-up loses it (the others sleep on beside idle workers),
        and giving a slot back would await its lock.
        """
        self._start_retirer()
        await self._slots.acquire()
        for i in range(len(self._idle) - 1, -1, -1):  # the most recently used: the warmest
            if self._idle[i].circle == circle:
                return self._idle.pop(i)
        if self._count >= self._max_workers:
            # Isolating circles, every worker idle or busy, none of this circle: the
            # least recently used idle one (we hold a slot, so one is idle) makes room.
            lru = min(self._idle, key=lambda w: w.last_used)
            self._idle.remove(lru)
            self._count -= 1
            self._stop_later(lru)
        # Idle and running workers together never exceed the slots: spawn only when
        # no idle worker is left (or none of the circle).
        self._count += 1
        try:
            worker = await self._spawn()
        except BaseException:
            self._release(None)
            raise
        worker.circle = circle
        return worker

    def _release(self, worker: _Worker | None) -> None:
        """Give the slot back, with the worker to keep or None (a worker gone or killed).
        Never awaits: a cancel cannot interrupt it."""
        if worker is None:
            self._count -= 1
        else:
            worker.last_used = time.monotonic()
            self._idle.append(worker)
        self._slots.release()

    async def _new_process(self) -> _Proc:
        """Forked from the template (started on first use) or, if it cannot be, exec'd."""
        if self._fork:
            async with self._template_lock:
                if self._template is None or not self._template.alive:
                    if self._template is not None:
                        await self._template.aclose()
                        self._template = None
                    self._template = await ForkServer.start(
                        self._worker_args, self._env, timeout_s=_INIT_TIMEOUT_S
                    )
                    self._fork = self._template is not None
                template = self._template
            if template is not None:
                return await template.fork(timeout_s=_INIT_TIMEOUT_S)
        return await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self._env,
        )

    async def _spawn(self) -> _Worker:
        worker = _Worker(await self._new_process())
        self.spawned += 1
        try:
            ready = await asyncio.wait_for(worker.receive(), timeout=_INIT_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            code = await worker.kill()
            raise InvocationError(f"local worker failed to start (exit code {code})") from exc
        except BaseException:
            # Cancelled (or a garbled ready frame) while it starts: the worker is in no
            # pool, so nobody else would ever stop it. Killed, not kept: a half-read
            # frame leaves its pipe unusable, and a cold start is cheap next to a leak.
            await worker.kill()
            raise
        if not ready.get("ready"):
            await worker.kill()
            raise InvocationError(
                f"local worker failed to import the handler: {ready.get('error')}"
            )
        log.debug("local worker %d started", worker.proc.pid)
        return worker

    async def _retire_idle(self) -> None:
        period_s = max(0.05, min(self._idle_timeout_s / 2, 30.0))
        while True:
            await asyncio.sleep(period_s)
            now = time.monotonic()
            # Idle workers hold no slot: retiring them frees none, it only lets a later
            # invocation spawn a fresh worker.
            old = [w for w in self._idle if now - w.last_used > self._idle_timeout_s]
            self._idle = [w for w in self._idle if w not in old]
            self._count -= len(old)
            for worker in old:
                await self._stop_worker(worker)
                log.info("local worker %d retired after %.0f s idle", worker.proc.pid,
                         now - worker.last_used)  # fmt: skip

    def _stop_later(self, worker: _Worker) -> None:
        task = asyncio.create_task(self._stop_worker(worker))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
        log.debug("local worker %d of circle %r retired for another circle", worker.proc.pid,
                  worker.circle)  # fmt: skip

    async def _stop_worker(self, worker: _Worker) -> None:
        if worker.proc.stdin is not None and worker.proc.returncode is None:
            worker.proc.stdin.close()  # EOF: the worker exits on its own
        try:
            await asyncio.wait_for(worker.proc.wait(), timeout=2)
        except TimeoutError:
            await worker.kill()

    # --- the Invoker -----------------------------------------------------------------
    async def invoke(self, event: InvocationEvent, *, timeout_s: float) -> BatchResponse:
        if self._closed:
            raise InvocationError("the local backend is closed")
        if not self._isolate:
            return await self._invoke_on(None, event, timeout_s)
        if event.tenant_id is not None:
            return await self._invoke_on(event.tenant_id, event, timeout_s)
        return await self._invoke_split(event, timeout_s)

    async def _invoke_split(self, event: InvocationEvent, timeout_s: float) -> BatchResponse:
        """A batch of several circles, one part per circle (see the module docstring)."""
        if self._circle_lookup is None:
            raise InvocationError(
                "isolate_circles needs the batch's tenant_id or a circle lookup", retryable=False
            )
        try:
            circles = await self._circle_lookup([t.task_id for t in event.tasks])
        except (ConnectionError, TimeoutError, RhailambdaError) as exc:
            raise InvocationError(f"cannot read the batch's circles: {exc}") from exc
        parts: dict[str, list[TaskRef]] = {}
        for task, circle in zip(event.tasks, circles, strict=True):
            parts.setdefault(circle, []).append(task)
        if not parts:  # only invalid entries: the function rejects them, no script runs
            parts[""] = []
        deadline = time.monotonic() + timeout_s
        outcomes: dict[str, Outcome] = {}
        reasons: dict[str, str] = {}
        errors: list[InvocationError] = []
        for n, (circle, tasks) in enumerate(parts.items()):
            part = replace(event, tasks=tuple(tasks), invalid=event.invalid if n == 0 else (),
                           tenant_id=circle)  # fmt: skip
            try:
                left_s = max(0.001, deadline - time.monotonic())
                got = await self._invoke_on(circle, part, left_s)
            except InvocationError as exc:
                errors.append(exc)
                outcomes |= {t.task_id: "failed" for t in tasks}
                continue
            outcomes |= got.outcomes
            reasons |= got.reasons
        if len(errors) == len(parts):
            raise errors[0]
        return BatchResponse(outcomes, reasons)

    async def _invoke_on(
        self, circle: str | None, event: InvocationEvent, timeout_s: float
    ) -> BatchResponse:
        worker = await self._acquire(circle)
        request = {
            "event": event.to_json(),
            "requestId": str(uuid.uuid4()),
            "deadlineMs": int((time.time() + timeout_s) * 1000),
            **({"tenantId": circle} if circle is not None else {}),
        }
        healthy = False
        try:
            await worker.send(request)
            reply = await asyncio.wait_for(worker.receive(), timeout=timeout_s + self._margin_s)
            healthy = True
        except TimeoutError:
            await worker.kill()
            raise InvocationError(
                f"Task timed out after {timeout_s:g} s (local worker {worker.proc.pid} killed)"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
            code = await worker.kill()
            raise InvocationError(
                f"local worker {worker.proc.pid} exited with code {code} during the invocation"
            ) from None
        except BaseException:
            await worker.kill()  # cancelled mid-invocation: the worker's state is unknown
            raise
        finally:
            worker.invocations += 1
            self._release(worker if healthy else None)
        if not reply.get("ok"):
            raise InvocationError(f"{reply.get('errorType')}: {reply.get('errorMessage')}")
        try:
            return BatchResponse.from_json(reply.get("result"), event)
        except EventError as exc:
            raise InvocationError(f"the handler's response is malformed: {exc}") from exc

    async def aclose(self) -> None:
        self._closed = True
        if self._retirer is not None:
            self._retirer.cancel()
            await asyncio.gather(self._retirer, return_exceptions=True)
        idle, self._idle = self._idle, []
        self._count -= len(idle)
        await asyncio.gather(*(self._stop_worker(w) for w in idle), *self._stopping,
                             return_exceptions=True)  # fmt: skip
        if self._template is not None:
            await self._template.aclose()
        if self._lookup_client is not None:
            self._lookup_client.close()
