"""The shim as a scheduled Lambda function (the stack's "poller").

An EventBridge schedule invokes this handler every minute; with reserved
concurrency 1, a trigger that finds a run in progress is throttled and dropped.
Each run is one ordinary shim (:func:`rhailambda.shim.app.serve` with the
Lambda backend) that drains the worker queues for almost its whole timeout,
blocking in Redis while idle, then stops taking, waits for its running
invocations, hands its in-flight ids back to the front of their queues and
returns. The next trigger starts the next run within a minute; a run that dies
(timeout, crash) is covered by its lease, and with a fixed ``RHAILAMBDA_SHIM_ID``
the next run hands its ids back at once.

The hand-back needs ``shutdown_timeout_s`` (set to the script function's timeout)
plus a few seconds for Redis, so the run stops taking at
``remaining time - (shutdown_timeout_s + HAND_BACK_RESERVE_S)``.

Every minute (and at the end) the run publishes the shim's metrics
(:mod:`rhailambda.shim.metrics`: ``DeadLetterDepth``, ``OldestTaskAge``, ...) as
Embedded Metric Format log lines (namespace ``POWERTOOLS_METRICS_NAMESPACE``,
dimension ``service`` = ``POWERTOOLS_SERVICE_NAME``), which CloudWatch turns into
the metrics the stack's alarms watch: ``RHAILAMBDA_METRICS_EMF`` defaults to true
here. No ``PutMetricData`` call, no IAM for it.

Settings are the shim's (``RHAILAMBDA_*``, see ``rhailambda shim --help``);
``REDIS_SECRET_ARN`` names a Secrets Manager secret holding the Redis URL, read
through Powertools parameters (cached five minutes) and used instead of
``REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from rhailambda.errors import SettingError
from rhailambda.resp_async import AsyncRespClient
from rhailambda.settings import Env
from rhailambda.shim import poller_modes
from rhailambda.shim.app import build_invoker, serve
from rhailambda.shim.invoker import Invoker
from rhailambda.shim.poller_modes import (
    Activity,
    PollerMode,
    claim,
    hand_over,
    live_pollers,
    probe,
    release_claim,
    watch_idle,
)
from rhailambda.shim.settings import ShimSettings
from rhailambda.tracing import lambda_tracer, traced

__all__ = [
    "HAND_BACK_RESERVE_S",
    "PollerRun",
    "handler",
    "run_poller",
    "settings_from_env",
]

#: Seconds kept after the shutdown timeout for the hand-back, deregistering and the
#: last metrics (the shim's own Redis steps are capped at 10 s).
HAND_BACK_RESERVE_S = 15.0
#: A run with less drain time than this left does nothing (the next trigger will).
MIN_DRAIN_S = 5.0

logger = Logger(service="rhailambda-shim")
tracer = lambda_tracer(Env(os.environ), "rhailambda-shim")  # RHAILAMBDA_TRACING (template: Tracing)


class LambdaContextLike(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PollerRun:
    """What one run did (the handler's return value, as JSON)."""

    shim_id: str
    drained_s: float
    dead_letter_depth: int | None
    outcome: str = "drained"  # "idle": on demand, nothing to do; "busy": another run drains

    def to_json(self) -> dict[str, Any]:
        return {
            "shimId": self.shim_id,
            "outcome": self.outcome,
            "drainedS": round(self.drained_s, 3),
            "deadLetterDepth": self.dead_letter_depth,
        }


def settings_from_env(environ: Mapping[str, str]) -> ShimSettings:
    """The shim's settings from the function's environment (the secret resolved first)."""
    env = dict(environ)
    secret_arn = env.get("REDIS_SECRET_ARN", "").strip()
    if secret_arn:
        env["REDIS_URL"] = _secret_url(secret_arn)
    env.setdefault("RHAILAMBDA_BACKEND", "lambda")
    env.setdefault("RHAILAMBDA_METRICS_EMF", "true")
    return ShimSettings.from_env(Env(env))


def _secret_url(secret_arn: str) -> str:
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_secret(secret_arn, max_age=300)
    if not isinstance(value, str) or not value.strip():
        raise SettingError("REDIS_SECRET_ARN", "the secret holds no Redis URL")
    return value.strip()


async def run_poller(
    settings: ShimSettings,
    drain_s: float,
    *,
    invoker: Invoker | None = None,
    mode: PollerMode | None = None,
    successor: tuple[str, str] | None = None,
) -> PollerRun:
    """Serve for ``drain_s`` seconds, then shut down gracefully (the hand-back).

    On demand, the run also stops once its queues stayed empty, and it invoked nothing,
    for ``mode.idle_exit_s``;
    with ``successor`` (base shim id, function name) it invokes its successor and
    waits for its lease before it stops taking (the hand-over). On demand a run that
    reaches the end of its budget is still on duty (its idle exit has not fired: it saw
    work within ``mode.idle_exit_s``), so it hands over too; its successor stops once idle.
    """
    stop = asyncio.Event()
    client = AsyncRespClient(settings.redis.address())
    layout, queues = settings.protocol.layout, settings.queues
    on_demand = mode is not None and mode.on_demand
    watchers = [asyncio.create_task(_stop_after(drain_s, stop, client, settings, successor))]
    own_invoker = invoker is None
    inv = activity = Activity(invoker or build_invoker(settings))
    if mode is not None and on_demand:
        watchers.append(asyncio.create_task(watch_idle(
            client, layout, queues.worker_ids, queues.shim_id, mode.idle_exit_s, stop, activity
        )))  # fmt: skip
    started = time.monotonic()
    try:
        last = await serve(settings, inv, stop=stop, client=client)
    finally:
        drained_s = time.monotonic() - started
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        if on_demand and successor is not None and queues.shim_id == successor[0]:
            try:  # the fixed id's claim (see handler): the next trigger may claim it now
                await release_claim(client, layout, queues.shim_id)
            except Exception as exc:  # it expires by itself within seconds
                logger.warning("claim not released", extra={"error": str(exc)})
        if own_invoker:
            await inv.aclose()
        client.close()
    depth = last.dead_letters if last is not None and not last.error else None
    return PollerRun(settings.queues.shim_id, drained_s, depth)


async def _stop_after(
    drain_s: float,
    stop: asyncio.Event,
    client: AsyncRespClient,
    settings: ShimSettings,
    successor: tuple[str, str] | None,
) -> None:
    await asyncio.sleep(drain_s)
    if successor is not None:
        base_id, function_name = successor
        try:
            took = await hand_over(
                client, settings.protocol.layout, base_id, settings.queues.shim_id, function_name
            )
            if not took:
                logger.warning("successor run not live in time; stopping anyway")
        except Exception as exc:
            logger.warning("hand-over failed", extra={"error": str(exc)})
    stop.set()


async def pending_work(settings: ShimSettings) -> int:
    """The on-demand check: work waiting for this poller (one round trip per node)."""
    client = AsyncRespClient(settings.redis.address())
    try:
        queues = settings.queues
        return await probe(client, settings.protocol.layout, queues.worker_ids, queues.shim_id)
    finally:
        client.close()


async def _other_live(settings: ShimSettings, base_id: str) -> list[str]:
    client = AsyncRespClient(settings.redis.address())
    try:
        return await live_pollers(client, settings.protocol.layout, base_id)
    finally:
        client.close()


async def _claim(settings: ShimSettings) -> bool:
    client = AsyncRespClient(settings.redis.address())
    try:
        return await claim(client, settings.protocol.layout, settings.queues.shim_id)
    finally:
        client.close()


def drain_budget_s(settings: ShimSettings, remaining_s: float) -> float:
    """How long a run with ``remaining_s`` left may take new tasks."""
    return remaining_s - settings.flow.shutdown_timeout_s - HAND_BACK_RESERVE_S


@traced(tracer)
@logger.inject_lambda_context(log_event=False)
def handler(event: Mapping[str, Any], context: LambdaContextLike) -> dict[str, Any]:
    # The edge: the poller's settings come from its environment, once per run.
    started = time.monotonic()
    mode = poller_modes.mode_from_env(os.environ)
    base_id = os.environ.get("RHAILAMBDA_SHIM_ID", "").strip()
    env = dict(os.environ)
    handover = poller_modes.is_handover(event)
    if base_id and (not mode.on_demand or handover):  # runs overlap at the hand-over
        env["RHAILAMBDA_SHIM_ID"] = f"{base_id}-{_request_suffix(context)}"
    settings = settings_from_env(env)
    logging.getLogger("rhailambda").setLevel(settings.log_level)
    remaining_s = context.get_remaining_time_in_millis() / 1000.0
    drain_s = drain_budget_s(settings, remaining_s)
    if drain_s < MIN_DRAIN_S:
        logger.warning(
            "timeout too short to drain",
            extra={
                "remaining_s": remaining_s,
                "shutdown_timeout_s": settings.flow.shutdown_timeout_s,
            },
        )
        return PollerRun(settings.queues.shim_id, 0.0, None, "skipped").to_json()
    if mode.on_demand and not handover and not asyncio.run(pending_work(settings)):
        idle = PollerRun(settings.queues.shim_id, 0.0, None, "idle").to_json()
        idle["checkS"] = round(time.monotonic() - started, 4)
        return idle
    if base_id and not handover:
        if mode.on_demand:  # the fixed id, claimed atomically (runs may overlap)
            busy = not asyncio.run(_claim(settings))
        else:
            busy = bool(asyncio.run(_other_live(settings, base_id)))
        if busy:  # a trigger while a run drains: that run hands over by itself
            return PollerRun(settings.queues.shim_id, 0.0, None, "busy").to_json()
    successor = (base_id, os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")) if base_id else None
    logger.info(
        "poller run starts",
        extra={
            "shim_id": settings.queues.shim_id,
            "mode": mode.mode,
            "workers": list(settings.queues.worker_ids),
            "function": settings.function.function_name,
            "drain_s": round(drain_s, 1),
        },
    )
    result = asyncio.run(run_poller(settings, drain_s, mode=mode, successor=successor))
    logger.info("poller run ends", extra=result.to_json())
    return result.to_json()


def _request_suffix(context: LambdaContextLike) -> str:
    request_id = str(getattr(context, "aws_request_id", "") or "")
    return request_id.replace("-", "")[:8] or os.urandom(4).hex()
