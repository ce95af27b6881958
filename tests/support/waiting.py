"""Waiting for another process's effect (a shim, a server, a port) with a deadline.

Synchronous: for tests and the benchmarks that poll from outside (``bench/`` imports
it too). Waits inside an event loop: :func:`support.shim_doubles.wait_until`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["wait_for"]


def wait_for(
    predicate: Callable[[], Any], timeout_s: float, what: str, *, interval_s: float = 0.02
) -> Any:
    """The first truthy value of ``predicate()``; AssertionError once ``timeout_s`` ran out."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)
