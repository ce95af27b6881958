"""The poller's two modes: ``always-on`` (runs back to back) and ``on-demand`` (scale to zero).

``RHAILAMBDA_POLLER_MODE`` picks one (the template's ``PollerMode``):

- ``on-demand``: every scheduled trigger first calls :func:`probe`, which reads, in one
  pipelined round trip (one per node on a cluster), the length of every queue the poller
  serves (paused ones excluded), its own in-flight lists (a killed run of the same shim
  id) and the number of shims whose lease expired (dead shims whose in-flight lists the
  reaper must hand back). All zero: the run returns at once. Otherwise it drains, and
  :func:`watch_idle` stops it once the same probe saw nothing for
  ``RHAILAMBDA_POLLER_IDLE_EXIT_S`` (default 60 s); it then hands back as before.
  A run with work it does :func:`claim` the fixed shim id first (a trigger that finds
  a live poller run, or a run just starting, returns "busy"). A run whose budget ends
  before its idle exit (it saw work within the idle period) hands over as always-on
  does (:func:`hand_over`): a steady stream leaves the queue empty at any instant, so
  the queue's length then says nothing. Its successor runs as ``<id>-<request id>``
  (the fixed id is still live then) and stops once idle.
- ``always-on``: a run drains for its whole budget; before it stops taking it invokes
  its own function asynchronously (a *hand-over* event) and keeps draining until the
  successor's lease is live (or :data:`HANDOVER_WAIT_S` passed), so a drainer is always
  taking. That needs two concurrent runs for a few seconds (reserved concurrency 2); a
  scheduled trigger that finds a live poller lease returns at once, so at most two run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from rhailambda.event import BatchResponse, InvocationEvent
from rhailambda.protocol import KeyLayout
from rhailambda.resp_async import AsyncRespClient, AsyncScript
from rhailambda.settings import Env
from rhailambda.shim.invoker import Invoker
from rhailambda.shim.redis_lease import now_ms
from rhailambda.shim.settings import ALWAYS_ON, ON_DEMAND, PollerSettings

__all__ = [
    "ALWAYS_ON",
    "HANDOVER_WAIT_S",
    "ON_DEMAND",
    "Activity",
    "PollerMode",
    "claim",
    "hand_over",
    "live_pollers",
    "mode_from_env",
    "probe",
    "release_claim",
    "watch_idle",
]

log = logging.getLogger("rhailambda.shim")
HANDOVER_WAIT_S = 30.0
HANDOVER_OVERLAP_S = 2.0  # both runs drain this long once the successor's lease is live
IDLE_PROBE_S = 1.0
HANDOVER_EVENT = "rhailambda-handover"
CLAIM_S = 10.0  # a claim covers the run's start until its own lease is live

# KEYS: shims zset, claim key (one slot). ARGV: base id, now ms, claim ms.
# 1: claimed; 0: a run of this poller is live (base or base-*) or starting (claimed).
_CLAIM_LUA = """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf')
local prefix = ARGV[1] .. '-'
for _, id in ipairs(live) do
  if id == ARGV[1] or string.sub(id, 1, #prefix) == prefix then return 0 end
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return 1 end
return 0
"""
_claim = AsyncScript(_CLAIM_LUA)


PollerMode = PollerSettings  # the poller's settings object (rhailambda.shim.settings)


def mode_from_env(environ: Mapping[str, str]) -> PollerMode:
    return PollerSettings.from_env(Env(environ))


def is_handover(event: Mapping[str, Any]) -> bool:
    return event.get("source") == HANDOVER_EVENT


async def probe(
    client: AsyncRespClient, layout: KeyLayout, worker_ids: tuple[str, ...], shim_id: str
) -> int:
    """Work waiting for this poller, read in one round trip (per node): 0 means none."""
    commands: list[list[str | int]] = [["ZCOUNT", layout.shims(), "-inf", now_ms()]]
    for w in worker_ids:
        commands += [
            ["LLEN", layout.queue(w)],
            ["EXISTS", layout.paused(w)],
            ["LLEN", layout.inflight(w, shim_id)],
        ]
    replies = await client.round_trip(commands)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    work = int(replies[0])
    for i in range(len(worker_ids)):
        queued, paused, inflight = replies[1 + 3 * i : 4 + 3 * i]
        work += int(inflight) + (0 if int(paused) else int(queued))
    return work


def _claim_key(layout: KeyLayout, base_id: str) -> str:
    return f"{layout.shims()}:claim:{base_id}"


async def claim(client: AsyncRespClient, layout: KeyLayout, base_id: str) -> bool:
    """Claim the fixed id ``base_id`` for a starting run, atomically: False when a run of
    this poller is live or another run claimed it in the last :data:`CLAIM_S` seconds.

    Runs may overlap (reserved concurrency 2, for the hand-over), so two triggers that
    both saw work (the schedule and a client's wake-up, or wake-ups from many clients)
    must not both drain as ``base_id``: the second would hand back the first's ids.
    """
    keys = [layout.shims(), _claim_key(layout, base_id)]
    return bool(await _claim(client, keys, [base_id, now_ms(), int(CLAIM_S * 1000)]))


async def release_claim(client: AsyncRespClient, layout: KeyLayout, base_id: str) -> None:
    """The run's end: the next trigger may claim ``base_id`` at once."""
    await client.execute("DEL", _claim_key(layout, base_id))


class Activity:
    """The run's invoker, wrapped: when it last ran a batch (:func:`watch_idle` reads it).

    A probe is a sample: a steady stream of quick tasks leaves the queues empty at
    almost any instant, so the samples alone would call a busy run idle.
    """

    def __init__(self, inner: Invoker) -> None:
        self._inner = inner
        self.running = 0
        self.last_s = time.monotonic()

    async def invoke(self, event: InvocationEvent, *, timeout_s: float) -> BatchResponse:
        self.running += 1
        try:
            return await self._inner.invoke(event, timeout_s=timeout_s)
        finally:
            self.running -= 1
            self.last_s = time.monotonic()

    async def aclose(self) -> None:
        await self._inner.aclose()


async def watch_idle(
    client: AsyncRespClient,
    layout: KeyLayout,
    worker_ids: tuple[str, ...],
    shim_id: str,
    idle_exit_s: float,
    stop: asyncio.Event,
    activity: Activity | None = None,
) -> None:
    """Set ``stop`` once :func:`probe` saw no work and ``activity`` ran no batch for
    ``idle_exit_s`` seconds."""
    idle_since = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(min(IDLE_PROBE_S, idle_exit_s / 4))
        try:
            work = await probe(client, layout, worker_ids, shim_id)
        except Exception:  # Redis trouble is the shim's to report; count it as work
            work = 1
        now = time.monotonic()
        if work or (activity is not None and activity.running):
            idle_since = now
        else:
            if activity is not None:
                idle_since = max(idle_since, activity.last_s)
            if now - idle_since >= idle_exit_s:
                stop.set()


async def live_pollers(client: AsyncRespClient, layout: KeyLayout, base_id: str) -> list[str]:
    """Shim ids of this poller's runs whose lease is live (``base_id`` or ``base_id-*``)."""
    members = await client.execute("ZRANGEBYSCORE", layout.shims(), f"({now_ms()}", "+inf")
    ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members or []]
    return [i for i in ids if i == base_id or i.startswith(base_id + "-")]


async def hand_over(
    client: AsyncRespClient, layout: KeyLayout, base_id: str, own_id: str, function_name: str
) -> bool:
    """Invoke the successor run and wait until its lease is live; True when it is."""

    def invoke() -> None:
        try:
            # Lazily, and off the event loop: building a boto3 client takes ~0.5 s
            # of CPU, during which this run would not take.
            import boto3

            boto3.client("lambda").invoke(
                FunctionName=function_name,
                InvocationType="Event",
                Payload=b'{"source": "' + HANDOVER_EVENT.encode() + b'"}',
            )
        except Exception as exc:  # the lease wait below reports the consequence
            log.warning("hand-over invoke of %s failed: %s", function_name, exc)

    # A daemon thread, not awaited: an emulator that runs Event invokes synchronously
    # must not hold this run (or asyncio.run's executor shutdown) until the next ends.
    threading.Thread(target=invoke, name="rhailambda-handover", daemon=True).start()
    deadline = time.monotonic() + HANDOVER_WAIT_S
    while time.monotonic() < deadline:
        if [i for i in await live_pollers(client, layout, base_id) if i != own_id]:
            # Its lease precedes its first take (recovery, reaping): overlap a little.
            await asyncio.sleep(HANDOVER_OVERLAP_S)
            return True
        await asyncio.sleep(0.2)
    return False
