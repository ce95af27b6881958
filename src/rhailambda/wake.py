"""Wake the on-demand poller when a submit finds no live poller lease.

With ``RHAILAMBDA_WAKE_FUNCTION`` set (the poller's name or ARN), :class:`Client`
reads the ids of the live leases in the same round trip as the submit (the
``ZRANGEBYSCORE`` rides in the pipeline with the ``LPUSH``es) and, when none of them
is a poller's (:func:`is_poller_lease`: a self-run shim serving other queues must not
suppress the wake-up), sends an asynchronous ``Invoke`` (``InvocationType=Event``) of
the poller from a
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

__all__ = ["POLLER_ID_MARK", "WAKE_ENV", "WAKE_INTERVAL_S", "Waker", "is_poller_lease"]

WAKE_INTERVAL_S = 5.0
#: A poller's shim id ends with this (the template's ``RHAILAMBDA_SHIM_ID`` is
#: ``<stack>-poller``); an always-on run appends ``-<run>`` to it.
POLLER_ID_MARK = "-poller"
log = logging.getLogger("rhailambda.wake")

_lock = threading.Lock()
_last_sent: dict[str, float] = {}  # function -> monotonic time of the last wake-up


def is_poller_lease(shim_id: str | bytes) -> bool:
    """``<stack>-poller`` (an on-demand run) or ``<stack>-poller-<run>`` (an always-on run)."""
    text = shim_id.decode(errors="replace") if isinstance(shim_id, bytes) else shim_id
    base, mark, run = text.rpartition(POLLER_ID_MARK)
    return bool(base and mark) and (run == "" or (run[:1] == "-" and run[1:].isalnum()))


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
        """The command that lists the live leases' ids (scores are expiry times in ms)."""
        return ["ZRANGEBYSCORE", self._layout.shims(), f"({int(time.time() * 1000)}", "+inf"]

    def after_submit(self, live_leases: object) -> bool:
        """Wake the poller if no poller lease is live (and none was sent lately); True if sent.

        ``live_leases``: the reply to :meth:`lease_check` (anything else counts as none).
        """
        if isinstance(live_leases, list) and any(
            isinstance(i, str | bytes) and is_poller_lease(i) for i in live_leases
        ):
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

            client = boto3.client("lambda")
            try:
                client.invoke(FunctionName=self.function, InvocationType="Event", Payload=b"{}")
            finally:
                client.close()  # its connection pool: this process may never wake again
        except Exception as exc:  # the scheduled check still comes within a minute
            log.warning("could not wake the poller %s: %s", self.function, exc)
