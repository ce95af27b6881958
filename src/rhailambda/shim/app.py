"""The shim process: wire Redis, the lease keeper and the drain loop; shut down gracefully.

:func:`serve` runs until ``stop`` is set, then stops taking, waits up to
``shutdown_timeout_s`` for running invocations, hands whatever is still in
flight back to the front of its queue, and deregisters. :func:`run` is the
process entry: it builds the invoker for the configured backend and turns
SIGTERM / SIGINT into ``stop``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time

from rhailambda.protocol import now_rfc3339
from rhailambda.resp_async import AsyncRespClient
from rhailambda.shim.cancel import cancel_and_wait
from rhailambda.shim.drain import Drainer
from rhailambda.shim.health import Health
from rhailambda.shim.intake import CIRCLES_FIELD, circles_info
from rhailambda.shim.invoker import Invoker
from rhailambda.shim.lease import LeaseKeeper
from rhailambda.shim.metrics import Sample
from rhailambda.shim.metrics_sinks import Telemetry
from rhailambda.shim.redis_lease import WORKERS_FIELD, RedisLeaseStore
from rhailambda.shim.redis_queue import RedisQueueSource
from rhailambda.shim.settings import ShimSettings

__all__ = ["build_invoker", "run", "serve"]

log = logging.getLogger("rhailambda.shim")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the traceback if any)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


_FINAL_REDIS_STEPS_S = 10.0  # hand back + deregister; past this the lease covers it
_STOP_LEASE_S = 2.0
_EXIT_WAIT_S = 2.0  # for tasks still running once serve() has returned


async def serve(
    settings: ShimSettings,
    invoker: Invoker,
    *,
    stop: asyncio.Event,
    client: AsyncRespClient | None = None,
) -> Sample | None:
    """Drain the configured queues through ``invoker`` until ``stop`` is set.

    Returns the last metrics sample published (EMF on), else None."""
    queues = settings.queues
    own_client = client is None
    redis_client = client or AsyncRespClient(settings.redis.address())
    health = Health(redis_url=settings.redis.redacted())
    source = RedisQueueSource(
        redis_client, settings.protocol, queues.shim_id, health, queues.worker_ids
    )
    store = RedisLeaseStore(redis_client, settings.protocol.layout, queues.shim_id, health)
    drainer = Drainer(settings, source, invoker)
    started_at = now_rfc3339()

    def info() -> dict[str, str]:
        return {
            "shim_id": queues.shim_id,
            WORKERS_FIELD: ",".join(queues.worker_ids),
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "backend": settings.function.backend,
            "started_at": started_at,
            "heartbeat_at": now_rfc3339(),
            "healthy": "1" if health.healthy else "0",
            "last_error": health.last_error,
            "redis_outages": str(health.outages),
            "concurrency_limit": str(drainer.limiter.limit),
            "running_invocations": str(drainer.running_invocations),
            "held_ids": str(source.held_count()),
            "read_ahead": str(sum(map(len, drainer.intakes.values()))),
            CIRCLES_FIELD: circles_info(drainer.intakes),
            **drainer.stats.as_info(),
        }

    keeper = LeaseKeeper(store, settings, info)
    telemetry: Telemetry | None = None
    try:
        telemetry = Telemetry(settings, redis_client, drainer, lease_held=lambda: keeper.held)
        await telemetry.start()
    except BaseException:
        if telemetry is not None:
            await telemetry.close()
        source.close()
        if own_client:
            redis_client.close()
        raise
    stop_wait = asyncio.create_task(stop.wait())
    startup = asyncio.create_task(keeper.start())
    await asyncio.wait({startup, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if not startup.done():  # stopped before Redis ever answered
        await cancel_and_wait([startup], _STOP_LEASE_S)
        await telemetry.close()
        source.close()
        if own_client:
            redis_client.close()
        return None
    startup.result()
    drainer.start()
    telemetry.draining = True
    lease_task = asyncio.create_task(keeper.run())
    log.info(
        "shim %s draining %s via %s backend (redis %s, batch %d, concurrency %d)",
        queues.shim_id, ",".join(queues.worker_ids), settings.function.backend,
        settings.redis.redacted(), settings.batch.batch_size, settings.flow.max_concurrency,
    )  # fmt: skip
    await stop_wait
    telemetry.draining = False
    log.info("shim %s stopping: no new tasks taken", queues.shim_id)
    await drainer.stop_taking()
    cancelled = await drainer.finish_invocations(settings.flow.shutdown_timeout_s)
    if await cancel_and_wait([lease_task], _STOP_LEASE_S):
        log.warning("shim %s: the lease keeper did not stop within %g s",
                    queues.shim_id, _STOP_LEASE_S)  # fmt: skip
    try:
        async with asyncio.timeout(_FINAL_REDIS_STEPS_S):
            handed = 0
            for worker_id in queues.worker_ids:
                handed += await source.hand_back(worker_id)
            await store.deregister()
        log.info(
            "shim %s stopped: %d invocations cut at the deadline, %d ids handed back",
            queues.shim_id, cancelled, handed,
        )  # fmt: skip
    except TimeoutError:
        log.error(
            "shim %s: Redis unreachable at shutdown; its in-flight ids return when its "
            "lease expires (or at once when it restarts with the same --shim-id)",
            queues.shim_id,
        )
    finally:
        last = await telemetry.close()
        source.close()
        if own_client:
            redis_client.close()
    return last


def build_invoker(settings: ShimSettings) -> Invoker:
    """The invoker for ``settings.function.backend`` (the lambda one imported lazily)."""
    if settings.function.backend == "lambda":
        from rhailambda.shim.lambda_backend import LambdaInvoker

        invoker: Invoker = LambdaInvoker.from_settings(settings)
        return invoker
    from rhailambda.shim.local_backend import LocalInvoker

    return LocalInvoker.from_settings(settings)


def run(settings: ShimSettings) -> int:
    """Run the shim in this process until SIGTERM / SIGINT; returns the exit code."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if settings.log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=settings.log_level, handlers=[handler])

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        invoker = build_invoker(settings)
        try:
            await serve(settings, invoker, stop=stop)
        finally:
            await invoker.aclose()
        # asyncio.run would wait without a bound for the tasks left behind (an
        # invocation abandoned at shutdown because it ignores its cancel). Their ids
        # are back in the queue already: bound the wait, then leave without them.
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        stuck = await cancel_and_wait(left, _EXIT_WAIT_S)
        if stuck:
            log.error(
                "shim exiting with %d task(s) that ignored cancellation (%s)",
                len(stuck), ", ".join(sorted(t.get_name() for t in stuck)[:10]),
            )  # fmt: skip
            logging.shutdown()
            os._exit(0)

    started = time.monotonic()
    asyncio.run(main())
    log.info("shim exited after %.1f s", time.monotonic() - started)
    return 0
