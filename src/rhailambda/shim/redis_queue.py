"""The Redis :class:`~rhailambda.shim.source.QueueSource`: reliable take, ack, dead-letter.

Taking is ``BLMOVE queue inflight RIGHT LEFT`` (only on an empty queue) plus one
Lua call that fills the batch with ``LMOVE``, skips tasks already final, and
counts the attempt (``HINCRBY`` on the task hash, only where the hash exists):
one or two round trips per batch, never a bare pop. Every later step (ack,
dead-letter, hand back) is one round trip per batch as well.

Each queue's taker owns one lean connection (:mod:`rhailambda.resp_async`) for
``BLMOVE`` and the take script, and acks share one more: the hot path, and the one
that runs cold after an idle pause; everything else goes through redis-py.

If a call that moves ids fails half-way (connection lost after the server ran
it), ids can sit in our in-flight list unknown to us; the next successful take
on that queue hands such orphans back to the queue.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from rhailambda import taskstore
from rhailambda.resp import Address
from rhailambda.resp_async import AsyncConnection, AsyncScript
from rhailambda.settings import ProtocolSettings
from rhailambda.shim.health import Health
from rhailambda.shim.source import Taken, TakeResult

__all__ = ["RedisQueueSource"]

_BLOCK_MARGIN_S = 5.0  # a BLMOVE's reply may take this much longer than its block

# One delivery of an in-flight id: drop it if the task is already final (or finished
# and cleaned up: its done marker), dead-letter it if its task key is not a hash (a
# poison id must not stop the queue), else count the attempt (only where the hash
# exists) and report id, attempt, createdAt.
_DELIVER_LUA = """
local function deliver(inflight, dlq, prefix, done_prefix, id, out)
  local key = prefix .. id
  local h = redis.pcall('HMGET', key, 'status', 'createdAt', 'created_at')
  if h['err'] then  -- WRONGTYPE: the task key is not a hash
    redis.call('LREM', inflight, 1, id)
    redis.call('LPUSH', dlq, id)
    return
  end
  if h[1] == 'completed' or h[1] == 'error' then
    redis.call('LREM', inflight, 1, id)
    return
  end
  local attempt = 1
  if h[1] or redis.call('EXISTS', key) == 1 then
    attempt = redis.call('HINCRBY', key, 'rhailambdaAttempt', 1)
  elseif redis.call('EXISTS', done_prefix .. id) == 1 then
    redis.call('LREM', inflight, 1, id)  -- finished and cleaned up: a late redelivery
    return
  end
  out[#out + 1] = id
  out[#out + 1] = attempt
  out[#out + 1] = h[2] or h[3] or ''
end
"""

# KEYS: queue, inflight, paused, dead letters.
# ARGV: n, worker id, task key prefix, done-marker prefix, [first id]
_TAKE_LUA = (
    _DELIVER_LUA
    + """
local queue, inflight, dlq = KEYS[1], KEYS[2], KEYS[4]
local n, prefix, done_prefix = tonumber(ARGV[1]), ARGV[3], ARGV[4]
local ids = {}
if ARGV[5] then ids[1] = ARGV[5] end
if redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 1 then
  for i = #ids, 1, -1 do
    if redis.call('LREM', inflight, 1, ids[i]) == 1 then redis.call('RPUSH', queue, ids[i]) end
  end
  return {-1}
end
while #ids < n do
  local id = redis.call('LMOVE', queue, inflight, 'RIGHT', 'LEFT')
  if not id then break end
  ids[#ids + 1] = id
end
local out = {}
for _, id in ipairs(ids) do deliver(inflight, dlq, prefix, done_prefix, id, out) end
return out
"""
)

# KEYS: inflight, dead letters. ARGV: task key prefix, done-marker prefix, ids...
# (only ids still in flight are redelivered)
_REDELIVER_LUA = (
    _DELIVER_LUA
    + """
local inflight, dlq, prefix, done_prefix = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV do
  if redis.call('LPOS', inflight, ARGV[i]) then
    deliver(inflight, dlq, prefix, done_prefix, ARGV[i], out)
  end
end
return out
"""
)

# KEYS: inflight. ARGV: task key prefix, the number of plain ids, the plain ids, then
# (id, attempt) pairs to check: ids this shim holds more than one delivery of (it was
# reaped and took them again). A stale delivery's ack must not remove the entry of
# the newer one, so those are removed only when no newer attempt was counted.
_ACK_LUA = """
local prefix, plain = ARGV[1], tonumber(ARGV[2])
local removed = 0
for i = 3, 2 + plain do removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i]) end
for i = 3 + plain, #ARGV, 2 do
  local latest = redis.pcall('HGET', prefix .. ARGV[i], 'rhailambdaAttempt')
  if type(latest) ~= 'string' or tonumber(latest) <= tonumber(ARGV[i + 1]) then
    removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i])
  end
end
return removed
"""

# KEYS: inflight, dead-letter list. ARGV: ids.
_DEAD_LETTER_LUA = """
-- Only ids still in flight move: a retry after a lost reply pushes nothing twice.
local moved = 0
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i])
    moved = moved + 1
  end
end
return moved
"""

# KEYS: inflight, queue. ARGV: ids (newest first), or none for all.
# The in-flight list holds the newest on the left; pushing left-to-right onto the
# queue's right end leaves the oldest at the very right: taken next, oldest first.
HAND_BACK_LUA = """
local inflight, queue = KEYS[1], KEYS[2]
local moved = 0
if #ARGV == 0 then
  local items = redis.call('LRANGE', inflight, 0, -1)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', queue, unpack(items, i, math.min(i + 999, #items)))
  end
  redis.call('DEL', inflight)
  return #items
end
for i = 1, #ARGV do
  if redis.call('LREM', inflight, 1, ARGV[i]) == 1 then
    redis.call('RPUSH', queue, ARGV[i])
    moved = moved + 1
  end
end
return moved
"""


def _parse_taken(flat: list[Any]) -> tuple[Taken, ...]:
    return tuple(
        Taken(str(flat[i]), int(flat[i + 1]), str(flat[i + 2])) for i in range(0, len(flat), 3)
    )


class RedisQueueSource:
    """Worker queues of one shim in Redis. ``client`` must decode strings."""

    def __init__(
        self,
        client: aioredis.Redis,
        protocol: ProtocolSettings,
        shim_id: str,
        health: Health,
        address: Address,
    ) -> None:
        self._client = client
        self._address = address
        self._taker_conns: dict[str, AsyncConnection] = {}  # one per queue's taker
        self._ack_conn: AsyncConnection | None = None  # acks of every queue, pipelined
        self._ack_opening = asyncio.Lock()  # concurrent acks open one connection
        self._protocol = protocol
        self._layout = protocol.layout
        self._shim_id = shim_id
        self._health = health
        self._task_prefix = self._layout.task("")
        self._done_prefix = self._layout.done("")
        self._take = AsyncScript(_TAKE_LUA)
        self._redeliver = client.register_script(_REDELIVER_LUA)
        self._ack = AsyncScript(_ACK_LUA)
        self._dead_letter = client.register_script(_DEAD_LETTER_LUA)
        self._hand_back = client.register_script(HAND_BACK_LUA)
        self._held: dict[str, Counter[str]] = {}  # ids handed to the drain loop, per queue
        self._suspect: set[str] = set()  # queues where a move may have half-failed

    async def _taker_conn(self, worker_id: str) -> AsyncConnection:
        conn = self._taker_conns.get(worker_id)
        if conn is None or conn.closed:
            conn = await AsyncConnection.open(self._address, "rhailambda-shim")
            self._taker_conns[worker_id] = conn
        return conn

    async def _blmove(self, worker_id: str, queue: str, inflight: str, block_s: float) -> Any:
        conn = await self._taker_conn(worker_id)
        timeout_s = block_s + _BLOCK_MARGIN_S
        return await conn.execute(
            "BLMOVE", queue, inflight, "RIGHT", "LEFT", block_s, timeout_s=timeout_s
        )

    async def _take_script(self, worker_id: str, keys: list[str], args: list[str | int]) -> Any:
        return await self._take(await self._taker_conn(worker_id), keys, args)

    async def _ack_script(self, keys: list[str], args: list[str | int]) -> Any:
        async with self._ack_opening:
            if self._ack_conn is None or self._ack_conn.closed:
                self._ack_conn = await AsyncConnection.open(self._address, "rhailambda-shim")
            conn = self._ack_conn
        return await self._ack(conn, keys, args)

    def close(self) -> None:
        """Close the lean connections (redis-py's client is closed by its owner)."""
        for conn in [*self._taker_conns.values(), self._ack_conn]:
            if conn is not None:
                conn.close()
        self._taker_conns.clear()
        self._ack_conn = None

    def held_count(self) -> int:
        return sum(c.total() for c in self._held.values())

    def _keys(self, worker_id: str) -> tuple[str, str]:
        return self._layout.queue(worker_id), self._layout.inflight(worker_id, self._shim_id)

    def _hold(self, worker_id: str, items: Sequence[Taken]) -> None:
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
        if worker_id in self._suspect:
            await self._hand_back_orphans(worker_id)
        queue, inflight = self._keys(worker_id)
        block_s = max(block_s, 0.01) if block_s > 0 else 0.0  # BLMOVE 0 blocks forever
        keys = [queue, inflight, self._layout.paused(), self._layout.dead_letter(worker_id)]
        args: list[str | int] = [max_items, worker_id, self._task_prefix, self._done_prefix]
        tries = calls = 0  # round trips sent vs. operations asked for

        async def move(what: str, op: Callable[[], Awaitable[Any]]) -> Any:
            nonlocal tries, calls
            calls += 1

            def once() -> Awaitable[Any]:
                nonlocal tries
                tries += 1
                return op()

            return await self._health.call(what, once)

        first: str | None = None
        try:
            # A blocking take goes straight to BLMOVE (it returns at once when ids are
            # there): the drain loop only blocks after a non-blocking take found none.
            if block_s > 0:
                first = await move(
                    "blmove", lambda: self._blmove(worker_id, queue, inflight, block_s)
                )
                if first is None:
                    return TakeResult()
                args.append(str(first))
            flat = await move("take", lambda: self._take_script(worker_id, keys, args))
        except BaseException:
            self._suspect.add(worker_id)  # cancelled or failed mid-move: look for orphans
            raise
        finally:
            # A move retried through an outage may have run before its reply was lost:
            # ids it moved sit in our in-flight list unknown to us. Hand them back next.
            if tries > calls:
                self._suspect.add(worker_id)
        if flat and flat[0] == -1:
            return TakeResult(paused=True)
        items = _parse_taken(flat)
        self._hold(worker_id, items)
        return TakeResult(items)

    async def _hand_back_orphans(self, worker_id: str) -> None:
        _, inflight = self._keys(worker_id)
        raw = await self._health.call("lrange", lambda: self._client.lrange(inflight, 0, -1))
        present = [x.decode() if isinstance(x, bytes) else x for x in raw]
        held = Counter(self._held.get(worker_id, Counter()))
        orphans: list[str] = []
        for task_id in present:
            if held[task_id] > 0:
                held[task_id] -= 1
            else:
                orphans.append(task_id)
        if orphans:
            await self.hand_back(worker_id, orphans)
        self._suspect.discard(worker_id)

    async def redeliver(self, worker_id: str, task_ids: Sequence[str]) -> tuple[Taken, ...]:
        _, inflight = self._keys(worker_id)
        args = [self._task_prefix, self._done_prefix, *task_ids]
        keys = [inflight, self._layout.dead_letter(worker_id)]
        flat = await self._health.call("redeliver", lambda: self._redeliver(keys=keys, args=args))
        items = _parse_taken(flat)
        kept = {t.task_id for t in items}
        self._release(worker_id, [t for t in task_ids if t not in kept])
        return items

    async def ack(self, worker_id: str, items: Sequence[Taken]) -> None:
        if not items:
            return
        _, inflight = self._keys(worker_id)
        held = self._held.get(worker_id, Counter())
        plain = [t.task_id for t in items if held[t.task_id] <= 1]
        args: list[str | int] = [self._task_prefix, len(plain), *plain]
        for item in items:
            if held[item.task_id] > 1:
                args += [item.task_id, item.attempt]
        await self._health.call("ack", lambda: self._ack_script([inflight], args))
        self._release(worker_id, [t.task_id for t in items])

    async def dead_letter(self, worker_id: str, task_ids: Sequence[str], reason: str) -> None:
        if not task_ids:
            return
        _, inflight = self._keys(worker_id)
        ids = list(task_ids)
        # Reply first: a crash after it leaves an id whose task is final (skipped later).
        await self._health.call(
            "fail_tasks",
            lambda: taskstore.fail_tasks_async(self._client, self._protocol, ids, reason),
        )
        dlq = self._layout.dead_letter(worker_id)
        await self._health.call(
            "dead_letter", lambda: self._dead_letter(keys=[inflight, dlq], args=ids)
        )
        self._release(worker_id, ids)

    async def hand_back(self, worker_id: str, task_ids: Sequence[str] | None = None) -> int:
        queue, inflight = self._keys(worker_id)
        ids = list(task_ids) if task_ids is not None else []
        if task_ids is not None and not ids:
            return 0
        moved = await self._health.call(
            "hand_back", lambda: self._hand_back(keys=[inflight, queue], args=ids)
        )
        if task_ids is None:
            self._held.pop(worker_id, None)
        else:
            self._release(worker_id, ids)
        return int(moved)

    async def is_paused(self, worker_id: str) -> bool:
        paused = await self._health.call(
            "sismember", lambda: self._client.sismember(self._layout.paused(), worker_id)
        )
        return bool(paused)
