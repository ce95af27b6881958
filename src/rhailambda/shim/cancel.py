"""Cancelling shim tasks reliably on Python 3.11, where a cancel can be lost.

Python 3.11's ``asyncio.wait_for`` returns the inner result instead of raising
when the cancel arrives after the inner awaitable finished but before
``wait_for`` resumed (CPython gh-86296; 3.12 rebuilt ``wait_for`` on
``asyncio.timeout``). redis-py wraps every socket write in ``wait_for``, so a task
cancelled at that moment carries on as if it never was: into the read of a
BLMOVE that lasts its whole block, or round a loop that never ends. The request
is still counted by :meth:`asyncio.Task.cancelling`, and a second cancel lands
(the task is then awaiting an ordinary future, such as the read).

- :func:`raise_if_cancel_lost` turns a cancel lost inside a call into a
  :class:`asyncio.CancelledError` right after the call returns.
- :func:`cancel_and_wait` cancels tasks and cancels again those still running, so
  a blocked read is interrupted instead of waited out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait", "cancel_requests", "raise_if_cancel_lost"]

_CANCEL_AGAIN_AFTER_S = 0.1


def cancel_requests() -> int:
    """How many cancels of the current task are pending (0 outside a task)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def raise_if_cancel_lost(before: int) -> None:
    """Raise CancelledError if the current task was cancelled since :func:`cancel_requests`
    returned ``before`` and is still running: the cancel was swallowed on the way."""
    if cancel_requests() > before:
        raise asyncio.CancelledError


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]],
    timeout_s: float,
    *,
    again_after_s: float = _CANCEL_AGAIN_AFTER_S,
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait up to ``timeout_s`` for them to end; returns those still
    running. One still running after ``again_after_s`` is cancelled again: its cancel
    may have been lost (see the module docstring). Only for tasks whose clean-up after
    a cancel takes no longer than that, or may be cut short."""
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending:
        for task in pending:
            task.cancel()
        remaining_s = deadline - loop.time()
        if remaining_s <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(again_after_s, remaining_s))
    return pending
