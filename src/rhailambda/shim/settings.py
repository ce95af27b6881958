"""The shim's one frozen settings object, parsed once from flags and the environment.

Every option has a flag and an environment variable; a flag wins over the
variable. A bad value raises :class:`~rhailambda.errors.SettingError` naming the
flag (when it was given) or the variable. Numbers have bounds (shown in ``--help``):
past them a value cannot work (a lease of 1 ms heartbeats 600 times a second, a
block of 1e308 s fails every take), so it is refused at start. Options are grouped into small frozen
dataclasses; :class:`ShimSettings` holds one of each.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from rhailambda.errors import SettingError
from rhailambda.protocol import normalize_worker_id
from rhailambda.settings import Env, ProtocolSettings, RedisSettings
from rhailambda.shim.settings_flags import DEFAULT_HANDLER, OPTIONS

__all__ = [
    "BatchSettings",
    "FairSettings",
    "FlowSettings",
    "FunctionSettings",
    "LocalBackendSettings",
    "MetricsSettings",
    "PollerSettings",
    "QueueSettings",
    "RetrySettings",
    "ShimSettings",
    "add_arguments",
    "from_args",
]

Backend = Literal["local", "lambda"]


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """Which queues this shim drains, and its lease on what it takes."""

    worker_ids: tuple[str, ...]
    shim_id: str
    lease_s: float = 30.0
    block_s: float = 20.0  # BLMOVE block on an empty queue (idle: 2 commands per block per queue)
    pause_poll_s: float = 1.0  # how often a paused queue is looked at again


@dataclass(frozen=True, slots=True)
class BatchSettings:
    batch_size: int = 10
    window_ms: int = 0

    @property
    def window_s(self) -> float:
        return self.window_ms / 1000.0


@dataclass(frozen=True, slots=True)
class FlowSettings:
    """Concurrency caps (in invocations) and the shutdown grace period."""

    max_concurrency: int = 2
    per_queue_concurrency: int = 2
    shutdown_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class FairSettings:
    """How one queue's read-ahead is shared among its circles (shim.fair, shim.intake)."""

    fair_share: bool = True  # circles take turns; off: oldest first across circles
    window: int = 50_000  # ids read ahead per queue (in flight, no attempt counted yet)
    per_circle_concurrency: int | None = None  # tasks of one circle running at once
    per_circle_rate: float | None = None  # tasks of one circle started per second
    tenant_isolation: bool = False  # every batch from one circle (InvocationEvent.tenant_id)


@dataclass(frozen=True, slots=True)
class RetrySettings:
    max_attempts: int = 3
    max_task_age_s: float | None = None  # None: no limit (Lambda's -1)
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0


@dataclass(frozen=True, slots=True)
class FunctionSettings:
    backend: Backend = "local"
    function_name: str = "rhailambda"
    function_timeout_s: float = 30.0
    timeout_margin_s: float = 5.0  # the invoker gives up this long after the budget


@dataclass(frozen=True, slots=True)
class LocalBackendSettings:
    handler: str = DEFAULT_HANDLER
    max_workers: int = 2
    idle_timeout_s: float = 300.0
    memory_limit_mb: int = 1024
    #: each worker serves one circle for its life (``--isolate-circles``)
    isolate_circles: bool = False


ALWAYS_ON = "always-on"
ON_DEMAND = "on-demand"


@dataclass(frozen=True, slots=True)
class PollerSettings:
    """The poller's mode (see :mod:`rhailambda.shim.poller_modes`): ``RHAILAMBDA_POLLER_MODE``
    and, on demand, the idle time after which a run stops (``RHAILAMBDA_POLLER_IDLE_EXIT_S``)."""

    mode: str = ALWAYS_ON
    idle_exit_s: float = 60.0

    @property
    def on_demand(self) -> bool:
        return self.mode == ON_DEMAND

    @classmethod
    def from_env(cls, env: Env) -> PollerSettings:
        d = cls()
        mode = env.str("RHAILAMBDA_POLLER_MODE", d.mode).strip() or d.mode
        if mode not in (ALWAYS_ON, ON_DEMAND):
            raise SettingError("RHAILAMBDA_POLLER_MODE", f"{mode!r} is not always-on or on-demand")
        idle = env.float("RHAILAMBDA_POLLER_IDLE_EXIT_S", d.idle_exit_s)
        if not 0 < idle <= 900:
            raise SettingError("RHAILAMBDA_POLLER_IDLE_EXIT_S", "must be in (0, 900] seconds")
        return cls(mode, idle)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Where the shim's metrics go (README, "Metrics"); both sinks off by default."""

    port: int | None = None  # Prometheus /metrics, /healthz, /readyz
    host: str = "127.0.0.1"
    emf: bool = False  # Embedded Metric Format lines on stdout (CloudWatch)
    interval_s: float = 60.0  # EMF: one set of lines this often
    namespace: str = "rhailambda"
    service: str = "rhailambda-shim"


@dataclass(frozen=True, slots=True)
class ShimSettings:
    redis: RedisSettings
    protocol: ProtocolSettings
    queues: QueueSettings
    batch: BatchSettings = BatchSettings()
    flow: FlowSettings = FlowSettings()
    fair: FairSettings = FairSettings()
    retry: RetrySettings = RetrySettings()
    function: FunctionSettings = FunctionSettings()
    local: LocalBackendSettings = LocalBackendSettings()
    log_level: str = "INFO"
    #: "json" (one object a line) or "text"; default json when stdout is not a terminal.
    log_format: str = "text"
    #: Variables set for the function's environment (local workers), on top of the shim's.
    function_env: Mapping[str, str] = field(default_factory=dict)
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def from_env(cls, env: Env) -> ShimSettings:
        """From the environment alone (the poller: a Lambda has no flags)."""
        return _build(env)


_OPTIONS = OPTIONS
_FLAG_OF = {var: flag for flag, var, _ in _OPTIONS}
# Variables the function reads; the local backend hands them to its workers.
_FUNCTION_VARS = (
    "RHAILAMBDA_KEY_PREFIX",
    "RHAILAMBDA_REPLY_KEY_TEMPLATE",
    "RHAILAMBDA_INTERNAL_PREFIX",
    "RHAILAMBDA_REPLY_TTL_S",
    "RHAILAMBDA_PRESERVE_TASKS",
    "RHAILAMBDA_REDIS_CLUSTER",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every shim option as a flag (values are parsed later, by :func:`from_args`)."""
    for flag, var, help_text in _OPTIONS:
        if var == "RHAILAMBDA_WORKERS":  # --worker a --worker b,c (and --workers, its alias)
            parser.add_argument(
                flag, f"{flag}s", dest=var.lower(), action="append", default=None,
                help=f"{help_text} [{var}]",
            )  # fmt: skip
            continue
        if var == "RHAILAMBDA_ISOLATE_CIRCLES":  # a switch: --isolate-circles means true
            parser.add_argument(flag, dest=var.lower(), action="store_const", const="true",
                                default=None, help=f"{help_text} [{var}]")  # fmt: skip
            continue
        parser.add_argument(flag, dest=var.lower(), default=None, help=f"{help_text} [{var}]")


def _flag_text(value: object) -> str:
    """A flag's value as its environment variable would spell it (lists comma-joined)."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


class _Overlay(Mapping[str, str]):
    """The environment with the given flags laid over it (flags win)."""

    def __init__(self, args: argparse.Namespace, env: Env) -> None:
        self._flags = {
            var: _flag_text(getattr(args, var.lower()))
            for _, var, _ in _OPTIONS
            if getattr(args, var.lower(), None) is not None
        }
        self._env = env

    def flag_given(self, var: str) -> bool:
        return var in self._flags

    def __getitem__(self, key: str) -> str:
        if key in self._flags:
            return self._flags[key]
        value = self._env.optional_str(key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._flags)

    def __len__(self) -> int:
        return len(self._flags)


def _default_shim_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def from_args(args: argparse.Namespace, env: Env) -> ShimSettings:
    """Build the settings; raises SettingError naming the flag or variable at fault."""
    overlay = _Overlay(args, env)
    try:
        return _build(Env(overlay))
    except SettingError as exc:
        if overlay.flag_given(exc.name) and exc.name in _FLAG_OF:
            message = str(exc).split(": ", 1)[-1]
            raise SettingError(_FLAG_OF[exc.name], message) from None
        raise


def _seconds(env: Env, name: str, default: float, low: float, high: float) -> float:
    """A float setting within ``[low, high]`` (a 0 low bound excludes nothing)."""
    value = env.float(name, default)
    if value < low or value > high or (low > 0 and value <= 0):
        raise SettingError(name, f"must be from {low:g} to {high:g}, got {value:g}")
    return value


def _count(env: Env, name: str, default: int, low: int, high: int) -> int:
    value = env.int(name, default)
    if not low <= value <= high:
        raise SettingError(name, f"must be from {low} to {high}, got {value}")
    return value


def _fair(env: Env, default_batch: int) -> FairSettings:
    batch = _count(env, "RHAILAMBDA_BATCH_SIZE", default_batch, 1, 10_000)
    concurrency = rate = None
    if env.optional_str("RHAILAMBDA_PER_CIRCLE_CONCURRENCY"):
        concurrency = _count(env, "RHAILAMBDA_PER_CIRCLE_CONCURRENCY", 0, 1, 1_000_000)
    if env.optional_str("RHAILAMBDA_PER_CIRCLE_RATE"):
        rate = _seconds(env, "RHAILAMBDA_PER_CIRCLE_RATE", 0.0, 0.001, 1_000_000.0)
    return FairSettings(
        fair_share=env.bool("RHAILAMBDA_FAIR_SHARE", True),
        window=_count(env, "RHAILAMBDA_FAIR_WINDOW", max(50_000, batch), batch, 1_000_000),
        per_circle_concurrency=concurrency,
        per_circle_rate=rate,
        tenant_isolation=env.bool("RHAILAMBDA_TENANT_ISOLATION", False),
    )


def _region(env: Env, function_name: str = "") -> None:
    """The lambda backend needs an AWS region: found here, not at the first invoke.

    A function ARN names its own (``arn:aws:lambda:eu-west-1:...``)."""
    if env.optional_str("AWS_REGION") or env.optional_str("AWS_DEFAULT_REGION"):
        return
    parts = function_name.split(":")
    if len(parts) > 3 and parts[0] == "arn" and parts[3]:
        return
    import boto3  # the lambda backend imports it anyway

    if not boto3.session.Session().region_name:
        raise SettingError(
            "AWS_REGION", "the lambda backend needs an AWS region (or AWS_DEFAULT_REGION)"
        )


def _build(env: Env) -> ShimSettings:
    workers = tuple(dict.fromkeys(normalize_worker_id(w) for w in env.list("RHAILAMBDA_WORKERS")))
    if not workers:
        raise SettingError("RHAILAMBDA_WORKERS", "give at least one worker id to drain")
    backend = env.str("RHAILAMBDA_BACKEND", "local").strip().lower()
    if backend not in ("local", "lambda"):
        raise SettingError("RHAILAMBDA_BACKEND", f"expected local or lambda, got {backend!r}")
    function_name = env.str("RHAILAMBDA_FUNCTION_NAME", "rhailambda")
    if backend == "lambda" and not function_name:
        raise SettingError("RHAILAMBDA_FUNCTION_NAME", "required with the lambda backend")
    if backend == "lambda":
        _region(env, function_name)
    local_workers = _count(env, "RHAILAMBDA_LOCAL_WORKERS", os.cpu_count() or 2, 1, 1024)
    isolate_circles = env.bool("RHAILAMBDA_ISOLATE_CIRCLES", False)
    if isolate_circles and backend != "local":
        raise SettingError(
            "RHAILAMBDA_ISOLATE_CIRCLES", "isolates local workers: local backend only"
        )
    default_concurrency = local_workers if backend == "local" else 10
    # Local workers are cheap to feed and batches amortise the pipe and Redis round
    # trips (5.8k tasks/s at 10, 16k at 200); Lambda keeps SQS's 10 so one batch of
    # slow scripts stays within a function's time budget.
    default_batch = 100 if backend == "local" else 10
    max_concurrency = _count(env, "RHAILAMBDA_MAX_CONCURRENCY", default_concurrency, 1, 10_000)
    per_queue = _count(env, "RHAILAMBDA_PER_QUEUE_CONCURRENCY", max_concurrency, 1, 10_000)
    max_age = _seconds(env, "RHAILAMBDA_MAX_TASK_AGE_S", 0.0, 0.0, 365 * 86400.0)
    base_s = _seconds(env, "RHAILAMBDA_BACKOFF_BASE_S", 0.5, 0.001, 3600.0)
    cap_s = _seconds(env, "RHAILAMBDA_BACKOFF_CAP_S", 30.0, 0.001, 86400.0)
    if cap_s < base_s:
        raise SettingError("RHAILAMBDA_BACKOFF_CAP_S", f"must be at least the base {base_s:g}")
    level = env.str("RHAILAMBDA_LOG_LEVEL", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingError("RHAILAMBDA_LOG_LEVEL", f"unknown level {level!r}")
    redis_settings = RedisSettings.from_env(env)
    function_env = {v: env.str(v, "") for v in _FUNCTION_VARS if env.optional_str(v)}
    function_env["REDIS_URL"] = redis_settings.url
    return ShimSettings(
        redis=redis_settings,
        protocol=ProtocolSettings.from_env(env),
        queues=QueueSettings(
            worker_ids=workers,
            shim_id=env.optional_str("RHAILAMBDA_SHIM_ID") or _default_shim_id(),
            lease_s=_seconds(env, "RHAILAMBDA_LEASE_S", 30.0, 1.0, 3600.0),
            block_s=_seconds(env, "RHAILAMBDA_BLOCK_S", 20.0, 0.1, 300.0),
        ),
        batch=BatchSettings(
            batch_size=_count(env, "RHAILAMBDA_BATCH_SIZE", default_batch, 1, 10_000),
            window_ms=_count(env, "RHAILAMBDA_BATCH_WINDOW_MS", 0, 0, 300_000),
        ),
        flow=FlowSettings(
            max_concurrency=max_concurrency,
            per_queue_concurrency=per_queue,
            shutdown_timeout_s=_seconds(env, "RHAILAMBDA_SHUTDOWN_TIMEOUT_S", 30.0, 0.0, 3600.0),
        ),
        fair=_fair(env, default_batch),
        retry=RetrySettings(
            max_attempts=_count(env, "RHAILAMBDA_MAX_ATTEMPTS", 3, 1, 1000),
            max_task_age_s=max_age or None,
            backoff_base_s=base_s,
            backoff_cap_s=cap_s,
        ),
        function=FunctionSettings(
            backend="lambda" if backend == "lambda" else "local",
            function_name=function_name,
            function_timeout_s=_seconds(env, "RHAILAMBDA_FUNCTION_TIMEOUT_S", 30.0, 0.1, 900.0),
        ),
        local=LocalBackendSettings(
            handler=env.str("RHAILAMBDA_HANDLER", DEFAULT_HANDLER),
            max_workers=local_workers,
            idle_timeout_s=_seconds(env, "RHAILAMBDA_IDLE_TIMEOUT_S", 300.0, 0.1, 86400.0),
            isolate_circles=isolate_circles,
        ),
        log_level=level,
        log_format=_log_format(env),
        function_env=function_env,
        metrics=_metrics(env),
    )


def _metrics(env: Env) -> MetricsSettings:
    port = env.optional_str("RHAILAMBDA_METRICS_PORT")
    return MetricsSettings(
        port=None if port is None else _count(env, "RHAILAMBDA_METRICS_PORT", 0, 1, 65535),
        host=env.str("RHAILAMBDA_METRICS_HOST", "127.0.0.1").strip() or "127.0.0.1",
        emf=env.bool("RHAILAMBDA_METRICS_EMF", False),
        interval_s=_seconds(env, "RHAILAMBDA_METRICS_INTERVAL_S", 60.0, 1.0, 3600.0),
        namespace=env.str("POWERTOOLS_METRICS_NAMESPACE", "rhailambda").strip() or "rhailambda",
        service=env.str("POWERTOOLS_SERVICE_NAME", "rhailambda-shim").strip() or "rhailambda-shim",
    )


def _log_format(env: Env) -> str:
    default = "text" if sys.stdout.isatty() else "json"
    fmt = env.str("RHAILAMBDA_LOG_FORMAT", default).lower()
    if fmt not in ("json", "text"):
        raise SettingError("RHAILAMBDA_LOG_FORMAT", f"expected json or text, got {fmt!r}")
    return fmt
