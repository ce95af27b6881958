"""The Redis :class:`~rhailambda.shim.source.LeaseStore`: shim leases and the reaper.

Each live shim is a member of the sorted set ``layout.shims()`` scored by its
lease expiry (ms since the epoch), with an info hash ``layout.shim_info(id)``
naming its queues and health; both share one slot (the ``{shims}`` tag). A shim
whose lease expired is reaped by any live shim, one slot at a time:

1. per queue it served (queue slot): its in-flight list (and its stage list, see
   :mod:`rhailambda.shim.quick_take`) goes back onto the front of the queue (oldest
   first), one script each;
2. (lease slot) its registration is removed, only if its lease is still expired.

A reaper that dies between the two leaves the registration, so the next reaper
repeats step 1 (which moves whatever is still there) and step 2. A shim that wakes
up after a stall while it is being reaped may find its in-flight ids delivered
again by others: fencing by attempt keeps one reply per task, and its heartbeat
reports the lapse when it was removed.

Each pass also adopts what shims of the previous key layout left
(:mod:`rhailambda.shim.upgrade`) until none of them holds a lease.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from rhailambda.protocol import KeyLayout
from rhailambda.resp_async import AsyncRespClient, AsyncScript
from rhailambda.resp_wire import raise_error
from rhailambda.shim.health import Health
from rhailambda.shim.inflight_lua import HAND_BACK_LUA
from rhailambda.shim.upgrade import LegacyKeys

__all__ = ["WORKERS_FIELD", "RedisLeaseStore"]

WORKERS_FIELD = "workers"

# KEYS: shims zset, info hash. ARGV: shim id, expiry ms, then info field/value pairs.
# Returns 1 when the shim was not registered (new, or removed by a reaper).
_HEARTBEAT_LUA = """
local added = redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if #ARGV > 2 then redis.call('HSET', KEYS[2], unpack(ARGV, 3)) end
return added
"""

# KEYS: shims zset, info hash. ARGV: shim id, now ms, force ('1': remove even if live).
_REMOVE_LUA = """
if ARGV[3] ~= '1' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""


def now_ms() -> int:
    return int(time.time() * 1000)


class RedisLeaseStore:
    """This shim's lease, and the reaper of other shims' expired ones."""

    def __init__(
        self, client: AsyncRespClient, layout: KeyLayout, shim_id: str, health: Health
    ) -> None:
        self._client = client
        self._layout = layout
        self._shim_id = shim_id
        self._health = health
        self._heartbeat = AsyncScript(_HEARTBEAT_LUA)
        self._return = AsyncScript(HAND_BACK_LUA)  # no ids: the whole list
        self._remove = AsyncScript(_REMOVE_LUA)
        self._registered = False
        self._legacy = LegacyKeys(client, layout, health)  # the previous key layout's

    async def heartbeat(self, info: Mapping[str, str], *, lease_s: float) -> bool:
        expiry = now_ms() + int(lease_s * 1000)
        keys = [self._layout.shims(), self._layout.shim_info(self._shim_id)]
        args: list[str | int] = [self._shim_id, expiry, *(x for kv in info.items() for x in kv)]
        added = await self._health.call(
            "heartbeat", lambda: self._heartbeat(self._client, keys, args)
        )
        kept = not (self._registered and added == 1)  # re-added: we had been removed
        self._registered = True
        return kept

    async def _reap_one(self, shim_id: str, worker_ids: Sequence[str], *, force: bool) -> int:
        info_key = self._layout.shim_info(shim_id)
        reads: list[list[str | int]] = [
            ["HGET", info_key, WORKERS_FIELD],
            ["ZSCORE", self._layout.shims(), shim_id],
        ]  # one slot: one round trip
        got = await self._health.call("lease", lambda: self._client.round_trip(reads))
        listed, score = (raise_error(r) for r in got)
        workers = [w for w in dict.fromkeys([*str(listed or "").split(","), *worker_ids]) if w]
        if not force and score is not None and float(score) > now_ms():
            return -1  # it renewed since we listed it as expired
        calls: list[tuple[list[str], list[str]]] = [
            ([held(w, shim_id), self._layout.queue(w)], [])
            for w in workers
            for held in (self._layout.inflight, self._layout.stage)
        ]  # every queue's lists in one round trip (one write per node)
        replies = await self._health.call("reap", lambda: self._return.many(self._client, calls))
        moved = sum(int(raise_error(r)) for r in replies)
        keys = [self._layout.shims(), info_key]
        args: list[str | int] = [shim_id, now_ms(), "1" if force else "0"]
        await self._health.call("unregister", lambda: self._remove(self._client, keys, args))
        return moved

    async def recover_own(self, worker_ids: Sequence[str]) -> int:
        moved = await self._reap_one(self._shim_id, worker_ids, force=True)
        self._registered = False
        return moved

    async def reap_expired(self, worker_ids: Sequence[str]) -> dict[str, int]:
        expired = await self._health.call(
            "zrangebyscore",
            lambda: self._client.execute("ZRANGEBYSCORE", self._layout.shims(), "-inf", now_ms()),
        )
        reaped: dict[str, int] = {}
        if self._legacy.pending:
            adopted = await self._legacy.adopt(worker_ids)
            if adopted:
                reaped["(old key layout)"] = adopted
        for shim_id in expired:
            if shim_id == self._shim_id:
                continue  # our own lease is renewed by our heartbeat, not reaped by us
            moved = await self._reap_one(str(shim_id), worker_ids, force=False)
            if moved >= 0:
                reaped[str(shim_id)] = moved
        return reaped

    async def deregister(self) -> None:
        keys = [self._layout.shims(), self._layout.shim_info(self._shim_id)]
        args: list[str | int] = [self._shim_id, now_ms(), "1"]
        await self._health.call("deregister", lambda: self._remove(self._client, keys, args))
        self._registered = False
