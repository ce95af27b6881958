"""An in-memory :class:`~rhailambda.shim.source.QueueSource`: the drain rules without Redis.

It keeps the contract the Redis source keeps (ids move to in-flight when read ahead,
each delivery or redelivery counts an attempt, final tasks are dropped at delivery,
a dead letter records its reason as the task's error reply, a hand-back puts ids at
the front), with every step visible to a test. A queue is a deque whose right end is
the oldest id, as a Redis list fed by LPUSH and read by RPOP.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rhailambda.shim.source import UNREAD, Ahead, ReadAhead, Taken, UnreadUpTo


@dataclass
class MemoryTask:
    attempt: int = 0
    final: bool = False
    created_at: str = ""
    circle: str = ""
    error: str | None = None  # the error reply a dead letter gave


@dataclass
class MemoryQueueSource:
    queues: dict[str, deque[str]] = field(default_factory=dict)
    tasks: dict[str, MemoryTask] = field(default_factory=dict)
    inflight: dict[str, list[str]] = field(default_factory=dict)
    dead: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    acked: list[Taken] = field(default_factory=list)
    takes: int = 0  # read-ahead calls

    def __post_init__(self) -> None:
        self._arrived = asyncio.Event()

    def push(
        self, worker_id: str, task_ids: Iterable[str], *, created_at: str = "", circle: str = ""
    ) -> None:
        """Queue new tasks (LPUSH: newest on the left)."""
        queue = self.queues.setdefault(worker_id, deque())
        for task_id in task_ids:
            self.tasks.setdefault(task_id, MemoryTask(created_at=created_at, circle=circle))
            queue.appendleft(task_id)
        self._arrived.set()

    def held(self, worker_id: str) -> list[str]:
        return list(self.inflight.get(worker_id, []))

    # --- QueueSource --------------------------------------------------------------
    async def read_ahead(
        self, worker_id: str, max_items: int, *, block_s: float, unread_up_to: UnreadUpTo = None
    ) -> ReadAhead:
        self.takes += 1
        if worker_id in self.paused:
            return ReadAhead(paused=True)
        queue = self.queues.setdefault(worker_id, deque())
        if not queue and block_s > 0:
            self._arrived.clear()
            try:
                async with asyncio.timeout(block_s):
                    await self._arrived.wait()
            except TimeoutError:
                return ReadAhead()
        items: list[Ahead] = []
        while queue and len(items) < max_items:
            task_id = queue.pop()
            task = self.tasks.setdefault(task_id, MemoryTask())
            self.inflight.setdefault(worker_id, []).append(task_id)
            items.append(Ahead(task_id, task.circle))
        if (
            unread_up_to is not None and len(items) <= unread_up_to()
        ):  # as Redis does: the delivery reads the circles
            items = [Ahead(a.task_id, UNREAD) for a in items]
        return ReadAhead(tuple(items))

    async def deliver(self, worker_id: str, items: Sequence[Ahead]) -> tuple[Taken, ...]:
        held = self.inflight.setdefault(worker_id, [])
        out: list[Taken] = []
        for item in items:
            task = self.tasks[item.task_id]
            if task.final:  # dropped without a delivery
                if item.task_id in held:
                    held.remove(item.task_id)
                continue
            task.attempt += 1
            out.append(Taken(item.task_id, task.attempt, task.created_at, task.circle))
        return tuple(out)

    async def redeliver(self, worker_id: str, task_ids: Sequence[str]) -> tuple[Taken, ...]:
        out = []
        for task_id in task_ids:
            task = self.tasks[task_id]
            if task.final or task_id not in self.inflight.get(worker_id, []):
                continue
            task.attempt += 1
            out.append(Taken(task_id, task.attempt, task.created_at, task.circle))
        return tuple(out)

    async def ack(self, worker_id: str, items: Sequence[Taken]) -> None:
        held = self.inflight.setdefault(worker_id, [])
        for item in items:
            if self.tasks[item.task_id].attempt == item.attempt and item.task_id in held:
                held.remove(item.task_id)
                self.tasks[item.task_id].final = True
                self.acked.append(item)

    async def dead_letter(self, worker_id: str, task_ids: Sequence[str], reason: str) -> None:
        held = self.inflight.setdefault(worker_id, [])
        for task_id in task_ids:
            if task_id in held:
                held.remove(task_id)
            task = self.tasks[task_id]
            task.final, task.error = True, reason
            self.dead.setdefault(worker_id, []).append((task_id, reason))

    async def hand_back(self, worker_id: str, task_ids: Sequence[str] | None = None) -> int:
        held = self.inflight.setdefault(worker_id, [])
        back = list(held) if task_ids is None else [t for t in task_ids if t in held]
        for task_id in back:
            held.remove(task_id)
            self.queues.setdefault(worker_id, deque()).append(task_id)  # taken next
        if back:
            self._arrived.set()
        return len(back)

    async def is_paused(self, worker_id: str) -> bool:
        return worker_id in self.paused
