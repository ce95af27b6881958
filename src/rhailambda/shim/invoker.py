"""The seam between the drain loop and a backend that runs the function.

The shim knows only this Protocol. Backends: ``local_backend`` (the handler in a
pool of local worker processes) and ``lambda_backend`` (boto3 ``Invoke``).

An ``invoke`` call either returns the function's :class:`BatchResponse` (ids in
``batchItemFailures`` are retried, the others are done) or raises:

- :class:`~rhailambda.errors.ThrottledError`: no capacity; nothing ran. Retry the
  whole batch later WITHOUT counting an attempt, and slow down.
- :class:`~rhailambda.errors.InvocationError`: the invocation failed as a whole
  (crash, timeout, transport); every id in it counts an attempt and is retried
  (or dead-lettered when ``retryable`` is False or attempts are exhausted).
"""

from __future__ import annotations

from typing import Protocol

from rhailambda.event import BatchResponse, InvocationEvent

__all__ = ["Invoker"]


class Invoker(Protocol):
    async def invoke(self, event: InvocationEvent, *, timeout_s: float) -> BatchResponse:
        """Run one batch; ``timeout_s`` is the function's time budget for it."""
        ...

    async def aclose(self) -> None:
        """Release processes, clients and threads."""
        ...
