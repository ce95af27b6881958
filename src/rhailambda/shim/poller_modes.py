"""The poller's two modes: ``always-on`` (runs back to back) and ``on-demand`` (scale to zero).

``RHAILAMBDA_POLLER_MODE`` picks one (the template's ``PollerMode``):

- ``on-demand``: every scheduled trigger first calls :func:`probe`, which reads, in one
  pipelined round trip (one per node on a cluster), the length of every queue the poller
  serves (paused ones excluded), its own in-flight lists (a killed run of the same shim
  id) and the number of shims whose lease expired (dead shims whose in-flight lists the
  reaper must hand back). All zero: the run returns at once. Otherwise it drains, and
  :func:`watch_idle` stops it once the same probe saw nothing for
  ``RHAILAMBDA_POLLER_IDLE_EXIT_S`` (default 60 s); it then hands back as before.
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

from rhailambda.protocol import KeyLayout
from rhailambda.resp_async import AsyncRespClient
from rhailambda.settings import Env
from rhailambda.shim.redis_lease import now_ms
from rhailambda.shim.settings import ALWAYS_ON, ON_DEMAND, PollerSettings

__all__ = [
    "ALWAYS_ON",
    "HANDOVER_WAIT_S",
    "ON_DEMAND",
    "PollerMode",
    "hand_over",
    "live_pollers",
    "mode_from_env",
    "probe",
    "watch_idle",
]

log = logging.getLogger("rhailambda.shim")
HANDOVER_WAIT_S = 30.0
HANDOVER_OVERLAP_S = 2.0  # both runs drain this long once the successor's lease is live
IDLE_PROBE_S = 1.0
HANDOVER_EVENT = "rhailambda-handover"


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


async def watch_idle(
    client: AsyncRespClient,
    layout: KeyLayout,
    worker_ids: tuple[str, ...],
    shim_id: str,
    idle_exit_s: float,
    stop: asyncio.Event,
) -> None:
    """Set ``stop`` once :func:`probe` saw no work for ``idle_exit_s`` seconds."""
    idle_since = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(min(IDLE_PROBE_S, idle_exit_s / 4))
        try:
            work = await probe(client, layout, worker_ids, shim_id)
        except Exception:  # Redis trouble is the shim's to report; count it as work
            work = 1
        now = time.monotonic()
        if work:
            idle_since = now
        elif now - idle_since >= idle_exit_s:
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
