"""Wake the on-demand poller when a submit finds no live shim lease.

With ``RHAILAMBDA_WAKE_FUNCTION`` set (the poller's name or ARN), :class:`Client`
reads the number of live leases in the same round trip as the submit (the
``ZCOUNT`` rides in the pipeline with the ``LPUSH``es) and, when none is live,
sends an asynchronous ``Invoke`` (``InvocationType=Event``) of the poller from a
background thread: the submit does not wait for AWS. At most one wake-up per
:data:`WAKE_INTERVAL_S` per process (a poller's cold start takes about that long);
boto3 is imported only when a wake-up is sent. The IAM for it is the stack's
``WakePollerPolicyArn`` output.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping

from rhailambda import protocol as p
from rhailambda.resp import Arg
from rhailambda.settings import WAKE_ENV, Env, WakeSettings

__all__ = ["WAKE_ENV", "WAKE_INTERVAL_S", "Waker"]

WAKE_INTERVAL_S = 5.0
log = logging.getLogger("rhailambda.wake")

_lock = threading.Lock()
_last_sent: dict[str, float] = {}  # function -> monotonic time of the last wake-up


class Waker:
    """Sends the poller's wake-up; one per :class:`~rhailambda.client.Client`."""

    def __init__(self, function: str, layout: p.KeyLayout) -> None:
        self.function = function
        self._layout = layout
        self.sent = 0
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: WakeSettings, layout: p.KeyLayout) -> Waker | None:
        return cls(settings.function, layout) if settings.function else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], layout: p.KeyLayout) -> Waker | None:
        return cls.from_settings(WakeSettings.from_env(Env(environ)), layout)

    @classmethod
    def default(cls, layout: p.KeyLayout) -> Waker | None:
        """The client's edge: a Client built without ``wake_function`` reads its process's."""
        return cls.from_env(os.environ, layout)

    def lease_check(self) -> list[Arg]:
        """The command that counts live leases (scores are expiry times in ms)."""
        return ["ZCOUNT", self._layout.shims(), f"({int(time.time() * 1000)}", "+inf"]

    def after_submit(self, live_leases: object) -> bool:
        """Wake the poller if no lease is live (and none was sent lately); True if sent."""
        if isinstance(live_leases, int) and live_leases > 0:
            return False
        now = time.monotonic()
        with _lock:
            last = _last_sent.get(self.function)
            if last is not None and now - last < WAKE_INTERVAL_S:
                return False
            _last_sent[self.function] = now
        self.sent += 1
        self._thread = threading.Thread(target=self._invoke, name="rhailambda-wake", daemon=True)
        self._thread.start()
        return True

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for a wake-up still being sent."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _invoke(self) -> None:
        try:
            import boto3  # lazily: only a client that wakes a poller needs it

            boto3.client("lambda").invoke(
                FunctionName=self.function, InvocationType="Event", Payload=b"{}"
            )
        except Exception as exc:  # the scheduled check still comes within a minute
            log.warning("could not wake the poller %s: %s", self.function, exc)
