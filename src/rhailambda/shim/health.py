"""Redis health for the shim: retry an operation through an outage, log it once.

Every Redis call of the shim goes through :meth:`Health.call`: a connection error
marks the shim unhealthy, logs one line, and retries with capped exponential
backoff until Redis answers (or the caller is cancelled, e.g. at shutdown). The
ids themselves are safe meanwhile: they sit in Redis lists. A cancel that
was swallowed during the call (Python 3.11, see :mod:`rhailambda.shim.cancel`)
is raised when the call returns. Error replies that mean "not now" (OOM, READONLY,
LOADING, BUSY, TRYAGAIN, CLUSTERDOWN, MASTERDOWN) are waited out the same way:
the ids held meanwhile move on once Redis recovers, with no restart.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from rhailambda.errors import RedisResponseError
from rhailambda.shim.cancel import cancel_requests, raise_if_cancel_lost

__all__ = ["TRANSIENT_CODES", "TRANSIENT_ERRORS", "Health", "is_transient"]

T = TypeVar("T")
log = logging.getLogger("rhailambda.shim")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError)
#: error replies that say "not now" (memory full, a failover or a load under way):
#: the call is waited out like an outage, and the shim reports itself unhealthy
TRANSIENT_CODES = frozenset(
    {"OOM", "READONLY", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "NOREPLICAS"}
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, RedisResponseError):
        return exc.code in TRANSIENT_CODES
    return isinstance(exc, TRANSIENT_ERRORS)


class Health:
    """Whether Redis answered the last call, and since when it has not."""

    def __init__(self, *, redis_url: str, min_delay_s: float = 0.05, max_delay_s: float = 5.0):
        self._redacted_url = redis_url
        self._min_delay_s = min_delay_s
        self._max_delay_s = max_delay_s
        self.healthy = True
        self.last_error = ""
        self.down_since: float | None = None
        self.outages = 0

    async def call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` until it succeeds; transient Redis errors are waited out."""
        cancels = cancel_requests()
        delay = self._min_delay_s
        while True:
            try:
                result = await op()
            except Exception as exc:
                if not is_transient(exc):
                    self.last_error = f"{what}: {type(exc).__name__}: {exc}"
                    raise
                raise_if_cancel_lost(cancels)
                self._mark_down(what, exc)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(self._max_delay_s, delay * 2)
                continue
            self._mark_up()
            # The command ran; a cancel that arrived meanwhile is honoured now, as if
            # it had come just after the reply (callers already handle that case).
            raise_if_cancel_lost(cancels)
            return result

    def _mark_down(self, what: str, exc: BaseException) -> None:
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        if self.healthy:
            self.healthy = False
            self.down_since = time.monotonic()
            self.outages += 1
            log.warning("redis %s unreachable (%s); retrying", self._redacted_url, self.last_error)

    def _mark_up(self) -> None:
        if not self.healthy:
            down_s = time.monotonic() - (self.down_since or time.monotonic())
            log.warning("redis %s reachable again after %.1f s", self._redacted_url, down_s)
            self.healthy = True
            self.down_since = None
