"""The local backend: the unchanged Lambda handler in a pool of local worker processes.

Each worker (:mod:`rhailambda.shim.local_worker`) is a warm environment: it
imports the handler once and serves invocations one at a time over pipes. The
pool scales up on demand to ``max_workers``, retires workers idle longer than
``idle_timeout_s`` (an idle stack scales to zero), and replaces a worker that
crashed or overran its budget (killed). Failures map onto the invoker contract:
a crash or timeout is a retryable :class:`InvocationError`; an exception from the
handler is an :class:`InvocationError` carrying its type and message.
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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rhailambda.errors import InvocationError
from rhailambda.event import BatchResponse, EventError, InvocationEvent
from rhailambda.shim.local_worker import encode_frame
from rhailambda.shim.settings import ShimSettings

__all__ = ["LocalInvoker", "check_handler"]

log = logging.getLogger("rhailambda.shim.local")
_HEADER = struct.Struct(">I")
_INIT_TIMEOUT_S = 60.0


@dataclass(eq=False)
class _Worker:
    proc: asyncio.subprocess.Process
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
            env={**os.environ, **settings.function_env}, check=False,
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
    ) -> None:
        self._argv = [python, "-m", "rhailambda.shim.local_worker", handler, function_name,
                      str(memory_mb)]  # fmt: skip
        self._idle_timeout_s = idle_timeout_s
        # The workers inherit the shim's environment plus the function's settings.
        self._env = {**os.environ, **(env or {})}
        self._margin_s = timeout_margin_s
        self._idle: list[_Worker] = []
        self._count = 0
        # One slot per invocation. A slot is taken by awaiting and given back without
        # awaiting, so a cancel can never lose one (see _acquire).
        self._slots = asyncio.Semaphore(max_workers)
        self._retirer: asyncio.Task[None] | None = None
        self._closed = False
        self.spawned = 0

    @classmethod
    def from_settings(cls, settings: ShimSettings) -> LocalInvoker:
        return cls(
            handler=settings.local.handler,
            max_workers=settings.local.max_workers,
            idle_timeout_s=settings.local.idle_timeout_s,
            env=settings.function_env,
            function_name=settings.function.function_name,
            memory_mb=settings.local.memory_limit_mb,
            timeout_margin_s=min(settings.function.timeout_margin_s, 2.0),
        )

    @property
    def worker_count(self) -> int:
        return self._count

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._idle]

    # --- the pool ------------------------------------------------------------------
    def _start_retirer(self) -> None:
        if self._retirer is None:
            self._retirer = asyncio.create_task(self._retire_idle())

    async def _acquire(self) -> _Worker:
        """A slot, then an idle worker (the warmest) or a new one.

        Cancellation-proof: a waiter cancelled just after being handed a slot passes it
        on (asyncio.Semaphore does), and once owned the slot is given back on every
        exit without an await. Not an asyncio.Condition: on Python 3.11 a waiter
        cancelled after its wake-up loses it (the others sleep on beside idle workers),
        and giving a slot back would await its lock.
        """
        self._start_retirer()
        await self._slots.acquire()
        if self._idle:
            return self._idle.pop()  # the most recently used: the warmest
        # Idle and running workers together never exceed the slots: spawn only when
        # no idle worker is left.
        self._count += 1
        try:
            return await self._spawn()
        except BaseException:
            self._release(None)
            raise

    def _release(self, worker: _Worker | None) -> None:
        """Give the slot back, with the worker to keep or None (a worker gone or killed).
        Never awaits: a cancel cannot interrupt it."""
        if worker is None:
            self._count -= 1
        else:
            worker.last_used = time.monotonic()
            self._idle.append(worker)
        self._slots.release()

    async def _spawn(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self._env,
        )
        worker = _Worker(proc)
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
        log.debug("local worker %d started", proc.pid)
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
        worker = await self._acquire()
        request = {
            "event": event.to_json(),
            "requestId": str(uuid.uuid4()),
            "deadlineMs": int((time.time() + timeout_s) * 1000),
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
        await asyncio.gather(*(self._stop_worker(w) for w in idle), return_exceptions=True)
