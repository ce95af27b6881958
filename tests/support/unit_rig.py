"""What the shim's unit tests share (tests/unit: no network).

``SETTINGS``: the drain rig's settings (one queue ``W``, fast timings) that the drain
rules run with on the in-memory queue source; :func:`until`: a quick wait inside the
event loop; :func:`parse`: the shim's settings from flags and environment, as the CLI
reads them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from rhailambda.settings import Env, ProtocolSettings, RedisSettings
from rhailambda.shim.settings import (
    FlowSettings,
    FunctionSettings,
    QueueSettings,
    RetrySettings,
    ShimSettings,
    add_arguments,
    from_args,
)
from support.shim_doubles import wait_until

__all__ = ["SETTINGS", "W", "parse", "until"]

W = "w1"
SETTINGS = ShimSettings(
    redis=RedisSettings(),
    protocol=ProtocolSettings(),
    queues=QueueSettings(worker_ids=(W,), shim_id="s1", block_s=0.05, pause_poll_s=0.01),
    flow=FlowSettings(max_concurrency=4, per_queue_concurrency=4, shutdown_timeout_s=1),
    retry=RetrySettings(max_attempts=3, backoff_base_s=0.001, backoff_cap_s=0.005),
    function=FunctionSettings(function_timeout_s=5, timeout_margin_s=0.1),
)


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for in-process state: polled every 2 ms (the drain rules' time budget is small)."""
    await wait_until(predicate, timeout_s=timeout_s, interval_s=0.002, what="the condition")


def parse(argv: list[str], environ: dict[str, str]) -> ShimSettings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(argv), Env(environ))
