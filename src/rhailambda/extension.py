"""How DSL modules reach the engine the function builds for every task.

The contract between the function (:mod:`rhailambda.functions`) and every extension,
the circle store (:mod:`rhailambda.circle`) among them: both import it, neither the other.

An :class:`Extension` is built once per cold start (it may hold clients). For each
task the function calls ``open(ctx)`` and gets a :class:`Session`: its ``modules()``
are registered in that task's engine (``{"db": {"save": fn, ...}}`` makes
``db::save(...)`` callable from the script). After the script succeeds the function
calls ``commit()``; after it fails, ``discard()``. A session may stage writes and
apply them only in ``commit()``, so a failed script leaves nothing half-written.
``commit()`` raises :class:`CommitConflict` when a concurrent writer won; the
function then runs the script again on fresh data (a bounded number of times).

Receipts (optional, :class:`ReceiptKeeper`): an extension that also has
``recall(tasks)`` keeps a :class:`Receipt` of each task whose writes it committed,
written in the same atomic commit as those writes: its sessions take
``commit(receipt)``. Before a task delivered again (attempt > 1) runs, the function
asks every such extension for a receipt; if one exists for the same task (see
:meth:`Receipt.covers`), the earlier run's writes are in and the task is finished
with the recorded output instead of running again. A commit that finds another run's
receipt of the same task raises :class:`AlreadyCommitted` (two deliveries overlapped)
and applies nothing; a receipt of a different task under the same id (a reused id)
is replaced.

Users add their own modules without editing the function: list factories in
``RHAILAMBDA_EXTENSIONS`` (``package.module:factory``, comma separated), each a
callable ``factory(env) -> Extension`` that reads its own settings from the
environment reader (:class:`rhailambda.settings.Env`) it is given. The circle
extension is the list's default first entry (``RHAILAMBDA_CIRCLE_ENABLED=false``
leaves it out).
"""

from __future__ import annotations

from _blake2 import blake2b  # hashlib would load OpenSSL (~4 ms of a cold start)
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rhailambda.errors import RhailambdaError

__all__ = [
    "AlreadyCommitted",
    "CommitConflict",
    "Extension",
    "Receipt",
    "ReceiptKeeper",
    "ReceiptSession",
    "ScriptContext",
    "Session",
    "task_fingerprint",
]


@dataclass(frozen=True, slots=True)
class ScriptContext:
    """Who runs what, where: the constants every script sees."""

    caller_id: str
    context_id: str
    worker_id: str
    task_id: str
    #: ``time.monotonic()`` past which the script's time is up: an extension's calls
    #: (their time counts against the script's timeout) should fail once it passed
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """A run of a task whose writes were committed: the reply output to give again.

    ``output`` is None when the store could not keep one that large (the writes are
    in; the task then gets an error reply saying so). ``fingerprint`` is
    :func:`task_fingerprint` of the task: a client may submit a new task under an old
    id, and a receipt of the old task must not answer the new one. ``first_claim``
    (not stored) says the committing run's claim was the first since the client wrote
    the task hash: no earlier delivery of THIS task can have committed, so only a
    later delivery's receipt (a higher attempt) is its own. Within one task each
    attempt claims at most once, so a receipt of the same attempt is another task's.
    """

    task_id: str
    output: str | None
    attempt: int
    fingerprint: str
    first_claim: bool = False

    def covers(self, new: Receipt) -> bool:
        """Whether this stored receipt is of the same task as the run committing ``new``."""
        if self.fingerprint != new.fingerprint or self.attempt == new.attempt:
            return False
        return self.attempt > new.attempt or not new.first_claim


def task_fingerprint(script: str, caller_id: str, context_id: str, created_at: str) -> str:
    """What a task is, in 32 hex digits (BLAKE2b: no OpenSSL load on the cold start)."""
    # each field is its length (8 bytes, big-endian) and its UTF-8; written out: per task
    a, b = script.encode("utf-8", "surrogatepass"), caller_id.encode("utf-8", "surrogatepass")
    c, d = context_id.encode("utf-8", "surrogatepass"), created_at.encode("utf-8", "surrogatepass")
    n = int.to_bytes
    data = b"".join((n(len(a), 8), a, n(len(b), 8), b, n(len(c), 8), c, n(len(d), 8), d))
    return blake2b(data, digest_size=16).hexdigest()


class CommitConflict(RhailambdaError):
    """Staged writes could not be applied because the data changed meanwhile."""


class AlreadyCommitted(RhailambdaError):
    """Another run of the same task committed first; nothing was applied."""

    def __init__(self, receipt: Receipt) -> None:
        super().__init__(
            f"task {receipt.task_id} was already committed by attempt {receipt.attempt}"
        )
        self.receipt = receipt


class Session(Protocol):
    def modules(self) -> Mapping[str, Mapping[str, Callable[..., Any]]]: ...

    def commit(self) -> None: ...

    def discard(self) -> None: ...


class Extension(Protocol):
    name: str

    def open(self, ctx: ScriptContext) -> Session: ...


class ReceiptSession(Session, Protocol):
    def commit(self, receipt: Receipt | None = None) -> None:
        """Apply the staged writes and, only if there were any, ``receipt`` with them."""
        ...


class ReceiptKeeper(Extension, Protocol):
    """An extension that keeps receipts (recognised by its ``recall`` method)."""

    def open(self, ctx: ScriptContext) -> ReceiptSession: ...

    def recall(self, tasks: Sequence[ScriptContext]) -> list[Receipt | None]:
        """The receipt of each task (None: none kept), in one store round trip if possible."""
        ...
