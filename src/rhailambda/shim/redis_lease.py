"""The Redis :class:`~rhailambda.shim.source.LeaseStore`: shim leases and the reaper.

Each live shim is a member of the sorted set ``layout.shims()`` scored by its
lease expiry (ms since the epoch), with an info hash ``layout.shim_info(id)``
naming its queues and health. A shim whose lease expired is reaped by any live
shim: one Lua call per dead shim re-checks the lease (a shim that renewed in the
meantime is left alone), moves each of its in-flight lists back onto the front
of its queue (oldest first), and removes its registration.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis

from rhailambda.protocol import KeyLayout
from rhailambda.shim.health import Health

__all__ = ["WORKERS_FIELD", "RedisLeaseStore"]

WORKERS_FIELD = "workers"

# KEYS: shims zset, info hash, then (inflight, queue) pairs.
# ARGV: shim id, now ms, force ('1': reap even if the lease is live: our own restart).
_REAP_LUA = """
if ARGV[3] ~= '1' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if score and tonumber(score) > tonumber(ARGV[2]) then return -1 end
end
local moved = 0
for k = 3, #KEYS, 2 do
  local items = redis.call('LRANGE', KEYS[k], 0, -1)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', KEYS[k + 1], unpack(items, i, math.min(i + 999, #items)))
  end
  redis.call('DEL', KEYS[k])
  moved = moved + #items
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return moved
"""


def now_ms() -> int:
    return int(time.time() * 1000)


class RedisLeaseStore:
    """This shim's lease, and the reaper of other shims' expired ones."""

    def __init__(
        self, client: aioredis.Redis, layout: KeyLayout, shim_id: str, health: Health
    ) -> None:
        self._client = client
        self._layout = layout
        self._shim_id = shim_id
        self._health = health
        self._reap = client.register_script(_REAP_LUA)
        self._registered = False

    async def heartbeat(self, info: Mapping[str, str], *, lease_s: float) -> bool:
        expiry = now_ms() + int(lease_s * 1000)
        flat = [x for pair in info.items() for x in pair]

        async def beat() -> list[object]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zadd(self._layout.shims(), {self._shim_id: expiry})
                pipe.hset(self._layout.shim_info(self._shim_id), items=flat)
                return list(await pipe.execute())

        added = (await self._health.call("heartbeat", beat))[0]
        kept = not (self._registered and added == 1)  # re-added: we had been removed
        self._registered = True
        return kept

    async def _reap_one(self, shim_id: str, worker_ids: Sequence[str], *, force: bool) -> int:
        info_key = self._layout.shim_info(shim_id)
        listed = await self._health.call("hget", lambda: self._client.hget(info_key, WORKERS_FIELD))
        text = listed.decode() if isinstance(listed, bytes) else (listed or "")
        workers = dict.fromkeys([*text.split(","), *worker_ids])
        keys = [self._layout.shims(), info_key]
        for worker_id in workers:
            if worker_id:
                keys += [self._layout.inflight(worker_id, shim_id), self._layout.queue(worker_id)]
        args: list[str | int] = [shim_id, now_ms(), "1" if force else "0"]
        moved = await self._health.call("reap", lambda: self._reap(keys=keys, args=args))
        return int(moved)

    async def recover_own(self, worker_ids: Sequence[str]) -> int:
        moved = await self._reap_one(self._shim_id, worker_ids, force=True)
        self._registered = False
        return moved

    async def reap_expired(self, worker_ids: Sequence[str]) -> dict[str, int]:
        expired = await self._health.call(
            "zrangebyscore",
            lambda: self._client.zrangebyscore(self._layout.shims(), "-inf", now_ms()),
        )
        reaped: dict[str, int] = {}
        for shim_id in expired:
            if shim_id == self._shim_id:
                continue  # our own lease is renewed by our heartbeat, not reaped by us
            moved = await self._reap_one(str(shim_id), worker_ids, force=False)
            if moved >= 0:
                reaped[str(shim_id)] = moved
        return reaped

    async def deregister(self) -> None:
        async def remove() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._layout.shims(), self._shim_id)
                pipe.delete(self._layout.shim_info(self._shim_id))
                await pipe.execute()

        await self._health.call("deregister", remove)
        self._registered = False
