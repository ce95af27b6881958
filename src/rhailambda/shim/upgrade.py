"""Adopting what a shim of the previous key layout left in Redis (the upgrade step).

Before the cluster work our own keys had no hash tags: in-flight lists
``rhailambda:inflight:<worker>:<shim>``, dead letters ``rhailambda:dlq:<worker>``,
one set of paused worker ids ``rhailambda:paused``, leases in ``rhailambda:shims``
with info hashes ``rhailambda:shim:<id>`` (``internal_prefix`` in front of each).
That version ran on a standalone server only (on a cluster it failed every take), so
old keys can only be found on one, and every step here is a standalone script.

A new shim, at start and then with each reaper pass while old leases remain:

* moves the in-flight ids of every old shim whose lease has expired back to the
  front of their queues (the reaper's rule: a live old shim keeps its ids), and
  removes its registration;
* appends the old dead letters of its queues to the new dead-letter lists;
* carries the old pause switches over to the new per-queue keys.

So the upgrade is: stop the old shims (or let them die), start the new ones; no id
is lost and nothing must be drained first. A mixed fleet is not supported: an old
shim does not see the new pause keys and takes no part in the new leases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from rhailambda.protocol import KeyLayout
from rhailambda.resp_async import AsyncRespClient, AsyncScript
from rhailambda.resp_wire import Arg, raise_error
from rhailambda.shim.health import Health
from rhailambda.shim.inflight_lua import HAND_BACK_LUA

__all__ = ["LegacyKeys"]

log = logging.getLogger("rhailambda.shim")
Call = tuple[list[Arg], list[Arg]]  # one script run: keys, args

# KEYS: old paused set, new paused key. ARGV: worker id.
_PAUSE_LUA = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  redis.call('SET', KEYS[2], '1')
  redis.call('SREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""


class LegacyKeys:
    """The previous layout's keys of one shim's queues, adopted until none is left."""

    def __init__(self, client: AsyncRespClient, layout: KeyLayout, health: Health) -> None:
        self._client = client
        self._layout = layout
        self._health = health
        self._old = layout.internal_prefix
        self._append = AsyncScript(HAND_BACK_LUA)  # no ids: the whole list, oldest first
        self._pause = AsyncScript(_PAUSE_LUA)
        self.pending = True  # until a pass found no old lease left

    async def adopt(self, worker_ids: Sequence[str]) -> int:
        """One pass; returns how many ids came back onto queues or dead-letter lists."""
        if not self.pending:
            return 0
        await self._client.execute("PING")  # learn the topology
        if self._client.cluster:
            self.pending = False  # the old layout never ran on a cluster
            return 0
        return await self._health.call("upgrade", lambda: self._pass(worker_ids))

    async def _pass(self, worker_ids: Sequence[str]) -> int:
        """Each step for all queues (and all expired old shims) in one round trip."""
        shims_key, paused_key = f"{self._old}shims", f"{self._old}paused"
        leases, kinds = await self._client.round_trip(
            [["ZRANGE", shims_key, 0, -1, "WITHSCORES"], ["TYPE", paused_key]]
        )
        leases = raise_error(leases)
        dead: list[Call] = [
            ([f"{self._old}dlq:{w}", self._layout.dead_letter(w)], []) for w in worker_ids
        ]
        moved = sum(int(raise_error(n)) for n in await self._append.many(self._client, dead))
        if raise_error(kinds) == "set":
            pauses: list[Call] = [([paused_key, self._layout.paused(w)], [w]) for w in worker_ids]
            carried = await self._pause.many(self._client, pauses)
            for worker, was_paused in zip(worker_ids, carried, strict=True):
                if raise_error(was_paused):
                    log.warning("upgrade: queue %s was paused by an old shim: still paused", worker)
        now_ms = time.time() * 1000
        expired = [str(shim_id) for shim_id, score in zip(leases[::2], leases[1::2], strict=True)
                   if float(score) <= now_ms]  # fmt: skip
        if expired:
            moved += await self._reap(shims_key, expired, worker_ids)
        live = len(leases) // 2 - len(expired)
        if live:
            log.warning("upgrade: %d shims of the old version still hold a lease", live)
        self.pending = live > 0
        return moved

    async def _reap(self, shims_key: str, expired: list[str], worker_ids: Sequence[str]) -> int:
        """Hand the in-flight ids of expired old shims back; forget their registrations."""
        infos = [f"{self._old}shim:{shim_id}" for shim_id in expired]
        listed = await self._client.round_trip([["HGET", info, "workers"] for info in infos])
        lists: list[tuple[str, str]] = []  # (old shim, worker) per in-flight list
        for shim_id, workers in zip(expired, listed, strict=True):
            named = str(raise_error(workers) or "").split(",")
            lists += [(shim_id, w) for w in dict.fromkeys([*named, *worker_ids]) if w]
        calls: list[Call] = [
            ([f"{self._old}inflight:{w}:{shim_id}", self._layout.queue(w)], [])
            for shim_id, w in lists
        ]
        moved = 0
        replies = await self._append.many(self._client, calls)
        for (shim_id, worker), reply in zip(lists, replies, strict=True):
            got = int(raise_error(reply))
            if got:
                log.warning(
                    "upgrade: %d ids left in flight by old shim %s back on %s",
                    got, shim_id, worker,
                )  # fmt: skip
            moved += got
        forget: list[list[Arg]] = []
        for shim_id, info in zip(expired, infos, strict=True):
            forget += [["ZREM", shims_key, shim_id], ["DEL", info]]
        await self._client.round_trip(forget)
        return moved
