"""The sinks of one shim run, as its settings switch them on (README, "Metrics").

:class:`Telemetry` is what :func:`~rhailambda.shim.app.serve` starts and stops:
the EMF publisher every ``--metrics-interval-s`` (and once more at the end, after
the hand-back), and the HTTP port with ``/metrics``, ``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rhailambda.errors import SettingError
from rhailambda.resp_async import AsyncRespClient
from rhailambda.resp_wire import Arg, raise_error
from rhailambda.shim.metrics import DrainView, Sample, Sampler
from rhailambda.shim.settings import ShimSettings

if TYPE_CHECKING:
    from rhailambda.shim.healthz import HealthServer

__all__ = ["Telemetry"]

log = logging.getLogger("rhailambda.shim")
_PING_TIMEOUT_S = 1.0


class _Serial:
    """A channel of its own, one request at a time: a slow read or a timed-out probe
    closes only this connection, never the one the drain loop shares."""

    def __init__(self, client: AsyncRespClient) -> None:
        self._channel = client.channel()
        self._lock = asyncio.Lock()

    async def round_trip(
        self, commands: Sequence[Sequence[Arg]], *, timeout_s: float | None = None
    ) -> list[Any]:
        async with self._lock:
            return await self._channel.round_trip(commands, timeout_s=timeout_s)

    def close(self) -> None:
        self._channel.close()


class Telemetry:
    def __init__(
        self,
        settings: ShimSettings,
        client: AsyncRespClient,
        drain: DrainView,
        *,
        lease_held: Callable[[], bool],
    ) -> None:
        self._m = settings.metrics
        self._redis = _Serial(client)
        self._sampler = Sampler(
            self._redis, settings.protocol.layout, settings.queues.worker_ids, drain
        )
        self._lease_held = lease_held
        self.serving = True  # liveness: cleared when serve() ends
        self.draining = False  # readiness: the drain loop takes (after start, before stop)
        self._emf = None
        if self._m.emf:
            from rhailambda.shim.metrics_emf import EmfPublisher

            self._emf = EmfPublisher(self._m.namespace, self._m.service)
        self._server: HealthServer | None = None
        if self._m.port is not None:
            try:  # prometheus-client: the `metrics` extra (the poller never needs it)
                from rhailambda.shim.healthz import HealthServer
            except ImportError as exc:
                raise SettingError(
                    "--metrics-port (RHAILAMBDA_METRICS_PORT)",
                    f"needs prometheus-client ({exc}): pip install 'rhailambda[metrics]'",
                ) from None
            self._server = HealthServer(
                self._m.host, self._m.port, self._sampler, live=self._live, ready=self._ready
            )
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the port (a port in use stops the shim here, by name) and start EMF."""
        if self._server is not None:
            await self._server.start()
        if self._emf is not None:
            self._loop = asyncio.create_task(self._publish_loop(), name="metrics:emf")

    async def close(self) -> Sample | None:
        """Stop both sinks; with EMF, publish a last sample and return it."""
        self.serving = self.draining = False
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        last = await self.publish() if self._emf is not None else None
        if self._server is not None:
            await self._server.close()
        self._redis.close()
        return last

    async def publish(self) -> Sample | None:
        """One EMF publish; never the reason a shim stops (a failure is logged)."""
        if self._emf is None:
            return None
        try:
            sample = await self._sampler.sample()
            if sample.error:
                log.warning("metrics: queues not read (%s)", sample.error)
            self._emf.publish(sample)
        except Exception:
            log.exception("metrics not published")
            return None
        return sample

    async def _publish_loop(self) -> None:
        while True:
            await self.publish()
            await asyncio.sleep(self._m.interval_s)

    async def _live(self) -> str:
        return "" if self.serving else "the shim has stopped"

    async def _ready(self) -> str:
        if not self.draining:
            return "not draining (starting or stopping)"
        try:
            async with asyncio.timeout(2 * _PING_TIMEOUT_S):  # the connect included
                raise_error(
                    (await self._redis.round_trip([["PING"]], timeout_s=_PING_TIMEOUT_S))[0]
                )
        except Exception as exc:
            return f"redis unreachable: {type(exc).__name__}: {exc}"
        return "" if self._lease_held() else "lease not held (no heartbeat within --lease-s)"
