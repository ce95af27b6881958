"""The lease keeper: renew this shim's lease, publish its health, reap dead shims.

Every ``lease_s / 3`` it renews the lease (with the info hash ``rhailambda status``
reads) and reaps shims whose lease expired. At start it first hands back what a
previous run with the same shim id left in flight, so a restarted shim recovers
its own ids at once instead of after a lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from rhailambda.shim.settings import ShimSettings
from rhailambda.shim.source import LeaseStore

__all__ = ["LeaseKeeper"]

log = logging.getLogger("rhailambda.shim")


class LeaseKeeper:
    def __init__(
        self,
        store: LeaseStore,
        settings: ShimSettings,
        info: Callable[[], Mapping[str, str]],
    ) -> None:
        self._store = store
        self._queues = settings.queues
        self._info = info
        self._renewed_at: float | None = None  # monotonic time of the last heartbeat

    @property
    def held(self) -> bool:
        """Whether the last heartbeat is younger than the lease (readiness)."""
        renewed = self._renewed_at
        return renewed is not None and time.monotonic() - renewed < self._queues.lease_s

    @property
    def period_s(self) -> float:
        return self._queues.lease_s / 3.0

    async def start(self) -> int:
        """Recover our own leftovers, register, reap; returns how many ids came back."""
        recovered = await self._store.recover_own(self._queues.worker_ids)
        if recovered:
            log.warning(
                "shim %s: handed back %d ids left in flight by its previous run",
                self._queues.shim_id, recovered,
            )  # fmt: skip
        await self.tick()
        return recovered

    async def tick(self) -> None:
        sent = time.monotonic()
        kept = await self._store.heartbeat(self._info(), lease_s=self._queues.lease_s)
        self._renewed_at = sent
        if not kept:
            log.warning(
                "shim %s: lease had lapsed (Redis outage or stall); its in-flight ids may "
                "have been handed back and be delivered again",
                self._queues.shim_id,
            )
        reaped = await self._store.reap_expired(self._queues.worker_ids)
        for shim_id, moved in reaped.items():
            log.warning("reaped expired shim %s: %d ids back on their queues", shim_id, moved)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the lease die quietly
                log.exception("lease keeper tick failed")
