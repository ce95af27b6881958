"""The Redis :class:`~rhailambda.shim.source.QueueSource`: reliable take, ack, dead-letter.

Every script touches one slot (a Redis Cluster refuses anything else): a queue's
in-flight lists, dead letters and pause switch share the queue's slot; a task's
hash and done marker share the hash's slot (:class:`~rhailambda.protocol.KeyLayout`).
So taking is two steps:

1. *move* (queue slot): ``BLMOVE queue inflight RIGHT LEFT`` only on an empty
   queue, then one script that checks the pause switch and fills the batch with
   ``LMOVE``: ids go straight into our in-flight list, never through a bare pop.
2. *deliver* (task slots: one script per slot on a cluster, one in all on a
   standalone server): skip tasks already final or finished (their done marker),
   count the attempt (``HINCRBY`` on the hash: the fencing token), read createdAt.
   An id whose task key is not a hash, or whose attempt field is not an integer, is
   poison: dead-lettered with an error reply, alone. Any other refusal (OOM, READONLY)
   is Redis's, not the task's: the script fails and the call is waited out.

Ids dropped by *deliver* leave the in-flight list in one more queue-slot call; the
rest are handed to the drain loop. If a step fails half-way (connection lost after
the server ran it), ids can sit in our in-flight list unknown to us: the next take
on that queue hands such orphans back to the queue.

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
from rhailambda.shim import finishing
from rhailambda.shim.health import Health
from rhailambda.shim.source import Taken, TakeResult
from rhailambda.slots import by_group

__all__ = ["HAND_BACK_LUA", "RedisQueueSource"]

_BLOCK_MARGIN_S = 5.0  # a BLMOVE's reply may take this much longer than its block

# KEYS: queue, inflight, paused. ARGV: n, [first id (moved by BLMOVE)]
_MOVE_LUA = """
local queue, inflight = KEYS[1], KEYS[2]
local ids = {}
if ARGV[2] then ids[1] = ARGV[2] end
if redis.call('EXISTS', KEYS[3]) == 1 then
  for i = #ids, 1, -1 do
    if redis.call('LREM', inflight, 1, ids[i]) == 1 then redis.call('RPUSH', queue, ids[i]) end
  end
  return {-1}
end
local n = tonumber(ARGV[1])
while #ids < n do
  local id = redis.call('LMOVE', queue, inflight, 'RIGHT', 'LEFT')
  if not id then break end
  ids[#ids + 1] = id
end
return ids
"""

# KEYS: task1, done1, task2, done2, ... (one slot). Per task: {'go', attempt, createdAt},
# {'drop'} (final and answered, or finished and cleaned up), or {'poison', why}. A final
# task that still holds its staged reply is not answered yet (its finish died after
# step 1, see rhailambda.taskstore): it goes, and the function completes the finish.
_DELIVER_LUA = """
local out = {}
for i = 1, #KEYS / 2 do
  local key, done = KEYS[2 * i - 1], KEYS[2 * i]
  local h = redis.pcall('HMGET', key, 'status', 'createdAt', 'created_at', 'rhailambdaReply')
  if h['err'] and not string.find(h['err'], '^WRONGTYPE') then return redis.error_reply(h['err'])
  elseif h['err'] then
    out[i] = {'poison', 'holds a ' .. redis.call('TYPE', key)['ok'] .. ', not a task hash'}
  elseif (h[1] == 'completed' or h[1] == 'error') and not h[4] then
    out[i] = {'drop'}
  elseif h[1] or redis.call('EXISTS', key) == 1 then
    local attempt = redis.pcall('HINCRBY', key, 'rhailambdaAttempt', 1)
    if type(attempt) == 'table' and not string.find(attempt['err'], 'not an integer') then
      return redis.error_reply(attempt['err'])  -- OOM, READONLY...: Redis's, not the task's
    elseif type(attempt) == 'table' then
      out[i] = {'poison', 'its rhailambdaAttempt field is not an integer'}
    else
      out[i] = {'go', attempt, h[2] or h[3] or ''}
    end
  elseif redis.call('EXISTS', done) == 1 then
    out[i] = {'drop'}
  else
    out[i] = {'go', 1, ''}  -- no hash: the function answers "not found"
  end
end
return out
"""

# KEYS: inflight. ARGV: ids to forget (one entry each). Returns how many were removed.
_FORGET_LUA = """
local removed = 0
for i = 1, #ARGV do removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i]) end
return removed
"""

# KEYS: inflight. ARGV: ids. Returns the ids still in flight (for a retry).
_HELD_LUA = """
local out = {}
for i = 1, #ARGV do
  if redis.call('LPOS', KEYS[1], ARGV[i]) then out[#out + 1] = ARGV[i] end
end
return out
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
        self._move = AsyncScript(_MOVE_LUA)
        self._deliver = AsyncScript(_DELIVER_LUA)
        self._forget = AsyncScript(_FORGET_LUA)
        self._held_script = AsyncScript(_HELD_LUA)
        self._dead_letter = AsyncScript(_DEAD_LETTER_LUA)
        self._hand_back = AsyncScript(HAND_BACK_LUA)
        self._held: dict[str, Counter[str]] = {}  # ids handed to the drain loop, per queue
        self._suspect: set[str] = set()  # queues where a move may have half-failed

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

        try:
            # A blocking take goes straight to BLMOVE (it returns at once when ids are
            # there): the drain loop only blocks after a non-blocking take found none.
            if block_s > 0:
                timeout_s = block_s + _BLOCK_MARGIN_S
                blmove: list[str | float] = ["BLMOVE", queue, inflight, "RIGHT", "LEFT", block_s]
                first = await step("blmove", lambda: channel.execute(*blmove, timeout_s=timeout_s))
                if first is None:
                    return TakeResult()
                args.append(str(first))
            ids = await step("take", lambda: self._move(channel, keys, args))
            if ids and ids[0] == -1:
                return TakeResult(paused=True)
            items = await self._delivered(worker_id, [str(i) for i in ids], step)
        except RedisResponseError as exc:
            self._suspect.add(worker_id)
            if exc.code == "WRONGTYPE" and await self._evict_task_on_queue(worker_id):
                return TakeResult()
            raise
        except BaseException:
            self._suspect.add(worker_id)  # cancelled or failed mid-move: look for orphans
            raise
        finally:
            # A move retried through an outage may have run before its reply was lost:
            # ids it moved sit in our in-flight list unknown to us. Hand them back next.
            if tries > calls:
                self._suspect.add(worker_id)
        return TakeResult(items)

    async def _delivered(
        self,
        worker_id: str,
        task_ids: Sequence[str],
        step: Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]] | None = None,
    ) -> tuple[Taken, ...]:
        """Count an attempt for each id now in flight; settle the ones not to run."""
        if not task_ids:
            return ()
        step = step or self._health.call
        # an empty id has no task key of its own, another's key is not its own: poison,
        # without asking Redis (the dead-letter's finish removes a hash it left there)
        verdicts: list[Any] = [self._collision(t) for t in task_ids]
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
                items.append(Taken(task_id, int(verdict[1]), str(verdict[2])))
            elif verdict[0] == "drop":
                drop.append(task_id)
            else:
                poison.setdefault(str(verdict[1]), []).append(task_id)
        _, inflight = self._keys(worker_id)
        for chunk in _chunks(drop):
            await self._script("forget", self._forget, [inflight], chunk)
        self._hold(worker_id, items)
        for why, ids in poison.items():
            self._hold(worker_id, [Taken(t, 1) for t in ids])
            await self.dead_letter(worker_id, ids, f"malformed task: its task key {why}")
        return tuple(items)

    def _collision(self, task_id: str) -> list[str] | None:
        """Why ``task_id``'s key is not a task key of its own, or None."""
        key = self._layout.task(task_id)
        if not task_id:
            return ["poison", "is empty"]
        if self._layout.is_reply_key(key):
            return ["poison", f"{key!r} is a reply list (a task id may not start with 'reply:')"]
        if key in self._queue_keys:
            return ["poison", f"{key!r} is a worker's queue (a task id may not name a worker)"]
        return None

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
        self._suspect.discard(worker_id)

    async def redeliver(self, worker_id: str, task_ids: Sequence[str]) -> tuple[Taken, ...]:
        _, inflight = self._keys(worker_id)
        still: list[str] = []
        for chunk in _chunks(task_ids):
            got = await self._script("held", self._held_script, [inflight], chunk)
            still += [str(t) for t in got]
        self._release(worker_id, task_ids)  # _delivered holds those still in flight again
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
        if task_ids is None:
            self._held.pop(worker_id, None)
        else:
            self._release(worker_id, ids)
        return moved

    async def is_paused(self, worker_id: str) -> bool:
        paused = await self._health.call(
            "paused", lambda: self._client.execute("EXISTS", self._layout.paused(worker_id))
        )
        return bool(paused)
