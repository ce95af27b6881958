"""Every exception of the circle store, under one root.

::

    CircleError (RhailambdaError)
    ├── InsufficientAuthorization (PermissionError)  the caller is neither the owner
    │                                                 nor a member (or not the owner,
    │                                                 for membership changes)
    ├── InvalidArgument (ValueError)    a collection name, id, record or limit a script
    │                                   passed is not acceptable
    ├── ScriptTimeout (TimeoutError)    the script's time ran out in a ``db::`` call
    ├── CommitTooLarge                  the staged changes exceed what the backend can
    │                                   apply atomically (DynamoDB: 100 items,
    │                                   one of them the task's receipt)
    ├── StoreConflict (CommitConflict)  a concurrent writer won: run the script again
    ├── TaskCommitted (AlreadyCommitted)  another run of the same task committed
    │                                   first: reply with its output, apply nothing
    └── StoreError                      the backend failed (network, throttling, ...)

The messages are what a script author reads in the task's ``error``; they never
name another circle's data.
"""

from __future__ import annotations

from rhailambda.errors import RhailambdaError
from rhailambda.extension import AlreadyCommitted, CommitConflict

__all__ = [
    "CircleError",
    "CommitTooLarge",
    "InsufficientAuthorization",
    "InvalidArgument",
    "ScriptTimeout",
    "StoreConflict",
    "StoreError",
    "TaskCommitted",
]


class CircleError(RhailambdaError):
    """Root of the circle store's exceptions."""


class InsufficientAuthorization(CircleError, PermissionError):
    """``caller_id`` may not do ``action`` in circle ``context_id``."""

    def __init__(self, caller_id: str, context_id: str, action: str) -> None:
        super().__init__(
            f"Insufficient authorization: caller {caller_id!r} may not {action} "
            f"in circle {context_id!r}"
        )
        self.caller_id = caller_id
        self.context_id = context_id
        self.action = action


class InvalidArgument(CircleError, ValueError):
    """A script passed an argument the store does not accept."""


class ScriptTimeout(CircleError, TimeoutError):
    """The script's time ran out while (or before) a ``db::`` call reached the store."""


class CommitTooLarge(CircleError):
    """The staged changes need ``items`` items in one transaction; ``limit`` is the most."""

    def __init__(self, items: int, limit: int, what: str = "items") -> None:
        super().__init__(
            f"too many changes for one atomic commit: {items} {what}, at most {limit} "
            "(split the work over several tasks)"
        )
        self.items = items
        self.limit = limit


class StoreConflict(CircleError, CommitConflict):
    """A concurrent writer changed data this script read or wrote; ``what`` says which."""

    def __init__(self, what: str) -> None:
        super().__init__(f"commit conflict: {what} changed concurrently")
        self.what = what


class TaskCommitted(CircleError, AlreadyCommitted):
    """A receipt of the same task is stored: an overlapping delivery committed first."""


class StoreError(CircleError):
    """The storage backend failed; the commit may be retried later."""
