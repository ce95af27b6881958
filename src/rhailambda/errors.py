"""Every exception rhailambda raises, under one root.

::

    RhailambdaError
    ├── SettingError            a setting is missing or malformed (carries its name)
    ├── InvalidIdError          a task or worker id the client refuses (carries which)
    ├── ReplyTimeoutError       the client waited for a reply that did not come in time
    ├── RedisError              the function's Redis client (:mod:`rhailambda.resp`) failed
    │   ├── RedisConnectionError  Redis unreachable, the connection broke, or no reply
    │   │                       within the socket timeout (the command may have run)
    │   └── RedisResponseError  Redis answered with an error (``code``: NOSCRIPT, ...)
    └── InvocationError         an invocation of the function did not complete
        ├── ThrottledError      the backend said "too many requests": retry later,
        │                       without spending the tasks' attempts
        └── PayloadTooLargeError  the event or response exceeds the backend's limit
"""

from __future__ import annotations

__all__ = [
    "InvalidIdError",
    "InvocationError",
    "PayloadTooLargeError",
    "RedisConnectionError",
    "RedisError",
    "RedisResponseError",
    "ReplyTimeoutError",
    "RhailambdaError",
    "SettingError",
    "ThrottledError",
]


class RhailambdaError(Exception):
    """Root of every rhailambda exception."""


class SettingError(RhailambdaError, ValueError):
    """A setting is missing or malformed; ``name`` is the environment variable or flag."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


class InvalidIdError(RhailambdaError, ValueError):
    """An id the client will not submit; ``what`` says which (``task id``, ``worker id``)."""

    def __init__(self, what: str, value: str, reason: str) -> None:
        super().__init__(f"{what} {value!r}: {reason}" if value else f"{what}: {reason}")
        self.what = what
        self.value = value


class ReplyTimeoutError(RhailambdaError, TimeoutError):
    """No reply arrived for ``task_id`` within ``timeout_s``."""

    def __init__(self, task_id: str, timeout_s: float) -> None:
        super().__init__(f"no reply for task {task_id} within {timeout_s:g} s")
        self.task_id = task_id
        self.timeout_s = timeout_s


class RedisError(RhailambdaError):
    """The function's Redis client failed."""


class RedisConnectionError(RedisError, ConnectionError):
    """Redis could not be reached, the connection broke, or no reply came in time."""


class RedisResponseError(RedisError):
    """Redis answered a command with an error reply (the message is Redis's own)."""

    @property
    def code(self) -> str:
        """The error's first word: ``NOSCRIPT``, ``WRONGTYPE``, ``ERR``, ..."""
        text = str(self)
        return text.split(" ", 1)[0] if text else ""


class InvocationError(RhailambdaError):
    """An invocation failed as a whole (crash, timeout, transport error).

    ``retryable`` is False for failures that another attempt cannot fix.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ThrottledError(InvocationError):
    """The backend refused the invocation for lack of capacity; the tasks did not run."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, retryable=True)
        self.retry_after_s = retry_after_s


class PayloadTooLargeError(InvocationError):
    """The event or response exceeds the backend's payload limit (6 MB on Lambda)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)
