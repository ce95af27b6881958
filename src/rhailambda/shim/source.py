"""The seams between the drain loop and where task ids live (Redis, in production).

:class:`QueueSource` is what the drain loop needs from a set of worker queues;
:class:`LeaseStore` is what the lease keeper needs. Ids taken from a queue sit in
an in-flight list owned by this shim until they are acknowledged, dead-lettered
or handed back, so a crash never loses one.

Taking is two calls: :meth:`QueueSource.read_ahead` moves ids into in-flight and
reads each one's circle (read-only on the task), so the drain loop can hold a large
window and order it by circle (shim.fair); :meth:`QueueSource.deliver` counts the
attempt (the fencing token) of the ids it puts into a batch, right before invoking.
A read that comes back small into an empty window may leave circles unread
(:data:`UNREAD`): they are read by the delivery instead, one round trip fewer for a
lone task (the warm latency).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "UNREAD",
    "Ahead",
    "LeaseStore",
    "QueueSource",
    "ReadAhead",
    "TakeResult",
    "Taken",
    "UnreadUpTo",
]

#: The circle of an id read ahead without its circle (``unread_up_to``): its delivery
#: reads it. A NUL byte starts it, so no circle id users write collides with it.
UNREAD = "\x00unread"
#: Asked once a read has moved its ids: up to how many may come back :data:`UNREAD`.
UnreadUpTo = Callable[[], int] | None


@dataclass(frozen=True, slots=True)
class Taken:
    """One delivery of a task id: ``attempt`` is the fencing token sent to the function."""

    task_id: str
    attempt: int
    created_at: str = ""
    circle: str = ""  # the task's contextId ("" when it has none)


@dataclass(frozen=True, slots=True)
class Ahead:
    """An id read ahead (in flight, no attempt counted yet) and its circle."""

    task_id: str
    circle: str = ""


@dataclass(frozen=True, slots=True)
class ReadAhead:
    items: tuple[Ahead, ...] = ()
    paused: bool = False


@dataclass(frozen=True, slots=True)
class TakeResult:
    items: tuple[Taken, ...] = ()
    paused: bool = False


class QueueSource(Protocol):
    async def read_ahead(
        self, worker_id: str, max_items: int, *, block_s: float, unread_up_to: UnreadUpTo = None
    ) -> ReadAhead:
        """Move up to ``max_items`` ids (oldest first) into in-flight and read each one's
        circle; no attempt is counted and the task hashes are not written.

        With ``block_s`` > 0, wait that long for the first id on an empty queue. A
        paused queue moves nothing (``paused``). When at most ``unread_up_to`` ids come
        back (``unread_up_to()``, asked once they are moved), their circles may be left
        :data:`UNREAD` (their delivery reads them).
        """
        ...

    async def deliver(self, worker_id: str, items: Sequence[Ahead]) -> tuple[Taken, ...]:
        """Count an attempt for read-ahead ids about to be invoked (oldest first); each
        delivery carries its circle as the task hash says now.

        Ids of tasks already final are dropped (acknowledged) without a delivery;
        malformed ones are dead-lettered.
        """
        ...

    async def redeliver(self, worker_id: str, task_ids: Sequence[str]) -> tuple[Taken, ...]:
        """Count a new attempt for ids we still hold (for a retry); drops final ones."""
        ...

    async def ack(self, worker_id: str, items: Sequence[Taken]) -> None:
        """Forget deliveries that are done (remove them from in-flight).

        A delivery older than the task's latest (the shim was reaped and took the id
        again) leaves the entry alone: it belongs to the newer delivery.
        """
        ...

    async def dead_letter(self, worker_id: str, task_ids: Sequence[str], reason: str) -> None:
        """Give each an error reply saying ``reason``, then move it to the dead-letter list."""
        ...

    async def hand_back(self, worker_id: str, task_ids: Sequence[str] | None = None) -> int:
        """Return ids (all in-flight ones when None) to the queue's front (taken next)."""
        ...

    async def is_paused(self, worker_id: str) -> bool: ...


class LeaseStore(Protocol):
    async def heartbeat(self, info: Mapping[str, str], *, lease_s: float) -> bool:
        """Renew this shim's lease and info; False when it had lapsed (we were reaped)."""
        ...

    async def recover_own(self, worker_ids: Sequence[str]) -> int:
        """Hand back what a previous run with this shim id left in flight."""
        ...

    async def reap_expired(self, worker_ids: Sequence[str]) -> dict[str, int]:
        """Hand back the in-flight ids of shims whose lease expired; shim id -> count."""
        ...

    async def deregister(self) -> None: ...
