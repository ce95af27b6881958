"""The Redis :class:`~rhailambda.shim.source.QueueSource`: reliable take, ack, dead-letter.

Every script touches one slot (a Redis Cluster refuses anything else): a queue's
in-flight lists, dead letters and pause switch share the queue's slot; a task's
hash and done marker share the hash's slot (:class:`~rhailambda.protocol.KeyLayout`).
So taking is two steps, and the drain loop may hold ids between them for long (its
fair-share read-ahead window, shim.intake):

1. *read ahead* (:meth:`RedisQueueSource.read_ahead`): the *move* (queue slot):
   ``BLMOVE queue inflight RIGHT LEFT``, then one script pipelined behind it that
   checks the pause switch and moves up to n - 1 more ids with ``LMOVE``: ids go
   straight into our in-flight list, never through a bare pop. Then each id's circle
   is read, read-only: one script on a standalone server, an ``HMGET`` per key on a
   cluster. A small read into an empty window skips this (``unread_up_to``): on a
   cluster the delivery reads the circles; on a standalone server the read delivers
   as it moves (:mod:`rhailambda.shim.quick_take`: one round trip for a lone task).
2. *deliver* (:meth:`RedisQueueSource.deliver`, task slots: one script per slot on
   a cluster, one in all on a standalone server), for the ids put into a batch:
   skip tasks already final or finished (their done marker), count the attempt
   (``HINCRBY``: the fencing token), read createdAt and the circle. An id whose task
   key is not a hash, or whose attempt field is not an integer, is poison:
   dead-lettered with an error reply, alone. Any other refusal (OOM, READONLY) is
   Redis's, not the task's: the script fails and the call is waited out.

Ids dropped by *deliver* leave the in-flight list in one more queue-slot call; the
rest are handed to the drain loop. If a step fails half-way (connection lost after
the server ran it), ids can sit in our in-flight list unknown to us: the next take
on that queue hands such orphans back to the queue.

The in-flight list holds the newest id on the left and may hold a whole read-ahead
window (tens of thousands). Acks, dead letters and retries' checks look for ids that
were read ahead earlier, near its right end: they scan from the right (``LREM -1``,
``LPOS RANK -1``), so each costs the ids older than it, not the window. A hand-back
(read-ahead ids at a pause or shutdown, newest first) scans from the left.

Each queue's taker owns a channel (its own connections: BLMOVE blocks); every
other call shares the client's pipelined connection per node.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from rhailambda.errors import RedisResponseError
from rhailambda.resp_async import AsyncChannel, AsyncRespClient, AsyncScript
from rhailambda.settings import ProtocolSettings
from rhailambda.shim import finishing, quick_take
from rhailambda.shim.health import Health
from rhailambda.shim.inflight_lua import (
    DEAD_LETTER_LUA,
    FORGET_LUA,
    HAND_BACK_LUA,
    HELD_LUA,
    MOVE_LUA,
)
from rhailambda.shim.source import UNREAD, Ahead, ReadAhead, Taken, TakeResult, UnreadUpTo
from rhailambda.shim.taskslot import (
    CIRCLES_LUA,
    DELIVER_LUA,
    MOVE_DELIVER_LUA,
    circle_from,
    circle_read,
    collision,
)
from rhailambda.slots import by_group

__all__ = ["RedisQueueSource"]

_BLOCK_MARGIN_S = 5.0  # a BLMOVE's reply may take this much longer than its block

_ARGS_PER_CALL = 1000  # ElastiCache allows 3,999 arguments per command


def _chunks(items: Sequence[str], size: int = _ARGS_PER_CALL) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _refused(reply: Any) -> bool:
    return isinstance(reply, RedisResponseError)


class RedisQueueSource:
    """Worker queues of one shim in Redis, on the shim's client (any deployment)."""

    def __init__(
        self,
        client: AsyncRespClient,
        protocol: ProtocolSettings,
        shim_id: str,
        health: Health,
        worker_ids: Sequence[str] = (),
    ) -> None:
        self._client = client
        self._channels: dict[str, AsyncChannel] = {}  # one per queue's taker
        self._protocol = protocol
        self._layout = protocol.layout
        self._queue_keys = {self._layout.queue(w) for w in worker_ids}  # ids may not name one
        self._shim_id = shim_id
        self._health = health
        self._move = AsyncScript(MOVE_LUA)
        self._deliver = AsyncScript(DELIVER_LUA)
        self._move_deliver = AsyncScript(MOVE_DELIVER_LUA)
        self._circles_script = AsyncScript(CIRCLES_LUA)
        self._forget = AsyncScript(FORGET_LUA)
        self._held_script = AsyncScript(HELD_LUA)
        self._dead_letter = AsyncScript(DEAD_LETTER_LUA)
        self._hand_back = AsyncScript(HAND_BACK_LUA)
        self._held: dict[str, Counter[str]] = {}  # ids handed to the drain loop, per queue
        self._suspect: set[str] = set()  # queues where a move may have half-failed
        #: per queue: ids a standalone read delivered already (MOVE_DELIVER_LUA's answers)
        self._answered: dict[str, dict[str, list[Any]]] = {}

    async def _script(
        self, what: str, script: AsyncScript, keys: list[str], args: Sequence[str | int]
    ) -> Any:
        """One script call on the shared client, waited out through outages."""
        return await self._health.call(what, lambda: script(self._client, keys, args))

    def _channel(self, worker_id: str) -> AsyncChannel:
        channel = self._channels.get(worker_id)
        if channel is None:
            channel = self._channels[worker_id] = self._client.channel()
        return channel

    def close(self) -> None:
        """Close the takers' channels (the client is closed by its owner)."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def held_count(self) -> int:
        return sum(c.total() for c in self._held.values())

    def _keys(self, worker_id: str) -> tuple[str, str]:
        return self._layout.queue(worker_id), self._layout.inflight(worker_id, self._shim_id)

    def _hold(self, worker_id: str, items: Sequence[Taken | Ahead]) -> None:
        held = self._held.setdefault(worker_id, Counter())
        for item in items:
            held[item.task_id] += 1

    def _release(self, worker_id: str, task_ids: Sequence[str]) -> None:
        held = self._held.get(worker_id)
        if held is not None:
            held.subtract(task_ids)
            for task_id in task_ids:
                if held[task_id] <= 0:
                    del held[task_id]

    async def take(self, worker_id: str, max_items: int, *, block_s: float) -> TakeResult:
        """Read ahead and deliver at once (tools and tests; the drain loop calls the two)."""
        ahead = await self.read_ahead(worker_id, max_items, block_s=block_s)
        if ahead.paused:
            return TakeResult(paused=True)
        return TakeResult(await self.deliver(worker_id, ahead.items))

    async def read_ahead(
        self, worker_id: str, max_items: int, *, block_s: float, unread_up_to: UnreadUpTo = None
    ) -> ReadAhead:
        if worker_id in self._suspect:
            await self._hand_back_orphans(worker_id)
        queue, inflight = self._keys(worker_id)
        self._queue_keys.add(queue)
        block_s = max(block_s, 0.01) if block_s > 0 else 0.0  # BLMOVE 0 blocks forever
        keys = [queue, inflight, self._layout.paused(worker_id)]
        args: list[str | int] = [max_items]
        channel = self._channel(worker_id)
        tries = calls = 0  # round trips sent vs. operations asked for

        async def step(what: str, op: Callable[[], Awaitable[Any]]) -> Any:
            nonlocal tries, calls
            calls += 1

            def once() -> Awaitable[Any]:
                nonlocal tries
                tries += 1
                return op()

            return await self._health.call(what, once)

        quick = self._quick_up_to(unread_up_to) if block_s > 0 else 0
        try:
            if quick:  # standalone, an empty window: move and deliver in one round trip
                qkeys = quick_take.keys(self._layout, worker_id, self._shim_id)
                qargs = quick_take.args(self._layout, quick, self._queue_keys, max_items)
                got = await step("blmove", lambda: quick_take.blmove_deliver(
                    channel, self._move_deliver, qkeys, qargs, block_s))  # fmt: skip
                if got is None:
                    return ReadAhead(paused=True)
                ids, quick_circles, answers = got
                if answers:
                    self._answered.setdefault(worker_id, {}).update(zip(ids, answers, strict=True))
            # A blocking take goes straight to BLMOVE (it returns at once when ids are
            # there): the drain loop only blocks after a non-blocking take found none.
            elif block_s > 0 and self._move.sha is not None:
                # BLMOVE and the move of whatever else is there in one round trip: Redis
                # runs the script once the BLMOVE returns (a lone task's wake-up).
                rest: list[str | int] = [max_items - 1]  # the BLMOVE takes the first
                first, ids = await step("blmove", lambda: quick_take.blmove_move(
                    channel, self._move, block_s, keys, rest))  # fmt: skip
                if ids and ids[0] == -1:  # paused: the BLMOVE's id goes back
                    if first is not None:
                        await self._script("hand_back", self._hand_back, [inflight, queue],
                                           [first])  # fmt: skip
                    return ReadAhead(paused=True)
                if first is not None:
                    ids = [first, *ids]
            else:
                if block_s > 0:
                    timeout_s = block_s + _BLOCK_MARGIN_S
                    blmove: list[str | float] = [
                        "BLMOVE", queue, inflight, "RIGHT", "LEFT", block_s]  # fmt: skip
                    first = await step(
                        "blmove", lambda: channel.execute(*blmove, timeout_s=timeout_s)
                    )
                    if first is None:
                        return ReadAhead()
                    args.append(str(first))
                ids = await step("take", lambda: self._move(channel, keys, args))
                if ids and ids[0] == -1:
                    return ReadAhead(paused=True)
            task_ids = [str(i) for i in ids]
            if not task_ids:
                return ReadAhead()
            if quick:
                circles = quick_circles
            elif unread_up_to is not None and len(task_ids) <= unread_up_to():  # delivery reads
                circles = [UNREAD] * len(task_ids)
            else:
                circles = await self._circles(task_ids)  # read-only: retried freely
        except RedisResponseError as exc:
            self._suspect.add(worker_id)
            if exc.code == "WRONGTYPE" and await self._evict_task_on_queue(worker_id):
                return ReadAhead()
            raise
        except BaseException:
            self._suspect.add(worker_id)  # cancelled or failed mid-move: look for orphans
            raise
        finally:
            # A move retried through an outage may have run before its reply was lost:
            # ids it moved sit in our in-flight list unknown to us. Hand them back next.
            if tries > calls:
                self._suspect.add(worker_id)
        items = tuple(Ahead(t, c) for t, c in zip(task_ids, circles, strict=True))
        self._hold(worker_id, items)
        return ReadAhead(items)

    async def _circles(self, task_ids: Sequence[str]) -> list[str]:
        """Each id's circle (contextId, or its snake_case spelling); "" when the task has
        none or its key is no hash (deliver dead-letters those). One script on a
        standalone server; one HMGET per key on a cluster (every key its own slot)."""
        usable = [t for t in task_ids if collision(self._layout, self._queue_keys, t) is None]
        if not usable:
            return ["" for _ in task_ids]
        keys = [self._layout.task(t) for t in usable]
        if self._client.cluster:
            reads = [circle_read(k) for k in keys]
            replies = await self._health.call("circles", lambda: self._client.round_trip(reads))
            found = [circle_from(r) for r in replies]
        else:
            found = [str(c) for c in await self._script("circles", self._circles_script, keys, [])]
        circle = dict(zip(usable, found, strict=True))
        return [circle.get(t, "") for t in task_ids]

    async def deliver(self, worker_id: str, items: Sequence[Ahead]) -> tuple[Taken, ...]:
        answered = self._answered.get(worker_id)
        known = quick_take.pop_answers(answered, [a.task_id for a in items]) if answered else {}
        return await self._delivered(worker_id, [a.task_id for a in items], known=known)

    def _quick_up_to(self, unread_up_to: UnreadUpTo) -> int:
        """How many ids a blocking read may deliver at once: 0 (the two steps) unless the
        server is known to be standalone and the window is empty (``unread_up_to``)."""
        if self._client.topology.cluster is not False or unread_up_to is None:
            return 0
        return unread_up_to()

    async def _delivered(
        self,
        worker_id: str,
        task_ids: Sequence[str],
        step: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]] | None = None,
        known: dict[int, list[Any]] | None = None,
    ) -> tuple[Taken, ...]:
        """Count an attempt for each id we hold in flight (``known``: per index, the
        answer of a delivery made by the read); settle the ones not to run."""
        if not task_ids:
            return ()
        step = step or self._health.call
        # an empty id has no task key of its own, another's key is not its own: poison,
        # without asking Redis (the dead-letter's finish removes a hash it left there)
        queues, layout, known = self._queue_keys, self._layout, known or {}
        verdicts: list[Any] = [
            known[i] if i in known else collision(layout, queues, t) for i, t in enumerate(task_ids)
        ]
        task_keys = [self._layout.task(t) for t in task_ids]
        usable = [i for i, v in enumerate(verdicts) if v is None]
        calls = []
        for idx in by_group(usable, task_keys, self._client.slot_group, per_item=2):
            keys = [k for i in idx for k in (task_keys[i], self._layout.done(task_ids[i]))]
            calls.append((idx, keys))
        pending = calls

        async def deliver() -> None:
            # A slot group Redis refused (OOM, READONLY) is sent again alone: the others
            # counted their attempts already.
            nonlocal pending
            replies = await self._deliver.many(self._client, [(k, []) for _, k in pending])
            refused: list[tuple[tuple[list[int], list[str]], RedisResponseError]] = []
            for call, reply in zip(pending, replies, strict=True):
                if _refused(reply):
                    refused.append((call, reply))
                    continue
                for i, verdict in zip(call[0], reply, strict=True):
                    verdicts[i] = verdict
            pending = [call for call, _ in refused]
            if refused:
                raise refused[0][1]

        if calls:
            await step("deliver", deliver)
        items: list[Taken] = []
        drop: list[str] = []
        poison: dict[str, list[str]] = {}
        for task_id, verdict in zip(task_ids, verdicts, strict=True):
            if verdict[0] == "go":
                items.append(Taken(task_id, int(verdict[1]), str(verdict[2]), str(verdict[3])))
            elif verdict[0] == "drop":
                drop.append(task_id)
            else:
                poison.setdefault(str(verdict[1]), []).append(task_id)
        _, inflight = self._keys(worker_id)
        for chunk in _chunks(drop):
            await self._script("forget", self._forget, [inflight], chunk)
        self._release(worker_id, drop)  # held since read_ahead, as are the others
        for why, ids in poison.items():
            await self.dead_letter(worker_id, ids, f"malformed task: its task key {why}")
        return tuple(items)

    async def _evict_task_on_queue(self, worker_id: str) -> bool:
        """A task hash written AT the queue key (task id = worker id, pushed nowhere):
        dead-letter it with an error reply (its finish deletes the hash), so the
        queue works again. False when the key holds anything else."""
        queue, inflight = self._keys(worker_id)
        try:
            found = await self._health.call(
                "hget", lambda: self._client.execute("HGET", queue, "taskId")
            )
        except RedisResponseError:
            return False  # not a hash: someone else's value, reported by status
        if found != worker_id:
            return False
        await self._health.call("evict", lambda: self._client.execute("LPUSH", inflight, found))
        self._hold(worker_id, [Taken(found, 1)])
        why = f"its task key {queue!r} is a worker's queue (a task id may not name a worker)"
        await self.dead_letter(worker_id, [found], f"malformed task: {why}")
        return True

    async def _hand_back_orphans(self, worker_id: str) -> None:
        _, inflight = self._keys(worker_id)
        raw = await self._health.call(
            "lrange", lambda: self._client.execute("LRANGE", inflight, 0, -1)
        )
        held = Counter(self._held.get(worker_id, Counter()))
        orphans: list[str] = []
        for task_id in raw:
            if held[task_id] > 0:
                held[task_id] -= 1
            else:
                orphans.append(task_id)
        if orphans:
            await self.hand_back(worker_id, orphans)
        if self._client.topology.cluster is False:  # a quick read's BLMOVE may have staged one
            keys = [self._layout.stage(worker_id, self._shim_id), self._layout.queue(worker_id)]
            await self._script("hand_back", self._hand_back, keys, [])
        self._suspect.discard(worker_id)

    async def redeliver(self, worker_id: str, task_ids: Sequence[str]) -> tuple[Taken, ...]:
        _, inflight = self._keys(worker_id)
        still: list[str] = []
        for chunk in _chunks(task_ids):
            got = await self._script("held", self._held_script, [inflight], chunk)
            still += [str(t) for t in got]
        gone = set(task_ids).difference(still)  # reaped meanwhile: no longer ours
        self._release(worker_id, [t for t in task_ids if t in gone])
        return await self._delivered(worker_id, still)

    async def ack(self, worker_id: str, items: Sequence[Taken]) -> None:
        if not items:
            return
        _, inflight = self._keys(worker_id)
        held = self._held.get(worker_id, Counter())
        plain = [t.task_id for t in items if held[t.task_id] <= 1]
        twice = [t for t in items if held[t.task_id] > 1]
        if twice:
            # We hold two deliveries of these ids (reaped, then taken again): a stale
            # delivery's ack must not remove the entry of the newer one.
            reads: list[list[str | int]] = [
                ["HGET", self._layout.task(t.task_id), "rhailambdaAttempt"] for t in twice
            ]
            latest = await self._health.call("latest", lambda: self._client.round_trip(reads))
            for item, value in zip(twice, latest, strict=True):
                if not isinstance(value, str) or not value.isdigit() or int(value) <= item.attempt:
                    plain.append(item.task_id)
        for chunk in _chunks(plain):
            await self._script("ack", self._forget, [inflight], chunk)
        self._release(worker_id, [t.task_id for t in items])

    async def dead_letter(self, worker_id: str, task_ids: Sequence[str], reason: str) -> None:
        if not task_ids:
            return
        _, inflight = self._keys(worker_id)
        ids = list(task_ids)
        usable = [t for t in ids if t]  # an empty id has no task or reply key of its own
        # Reply first: a crash after it leaves an id whose task is final (skipped later).
        await self._health.call(
            "fail_tasks",
            lambda: finishing.fail_tasks_async(self._client, self._protocol, usable, reason),
        )
        dlq = self._layout.dead_letter(worker_id)
        for chunk in _chunks(ids):
            await self._script("dead_letter", self._dead_letter, [inflight, dlq], chunk)
        self._release(worker_id, ids)

    async def hand_back(self, worker_id: str, task_ids: Sequence[str] | None = None) -> int:
        queue, inflight = self._keys(worker_id)
        ids = list(task_ids) if task_ids is not None else []
        if task_ids is not None and not ids:
            return 0
        moved = 0
        for chunk in _chunks(ids) if ids else [[]]:
            moved += int(await self._script("hand_back", self._hand_back, [inflight, queue], chunk))
        answered = self._answered.get(worker_id, {})
        if task_ids is None:
            self._held.pop(worker_id, None)
            answered.clear()
        else:
            self._release(worker_id, ids)
            for task_id in ids:
                answered.pop(task_id, None)
        return moved

    async def is_paused(self, worker_id: str) -> bool:
        paused = await self._health.call(
            "paused", lambda: self._client.execute("EXISTS", self._layout.paused(worker_id))
        )
        return bool(paused)
