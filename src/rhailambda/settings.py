"""Settings: parsed once, at the edge, from the environment (and flags, in the CLI).

Each process builds ONE frozen settings object (``FunctionSettings`` in the Lambda
function, ``ShimSettings`` in the shim; the CLI reads ``RedisSettings`` and
``ProtocolSettings``) from the pieces here. Nothing else in the project reads
``os.environ``. A bad value fails at start with the setting's name in the message
(:class:`SettingError`).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

from rhailambda.errors import SettingError
from rhailambda.protocol import KeyLayout, normalize_worker_id
from rhailambda.redaction import redact_url

if TYPE_CHECKING:
    from rhailambda.redis_url import Address

__all__ = [
    "DEFAULT_REDIS_URL",
    "WAKE_ENV",
    "Env",
    "ProtocolSettings",
    "RedisSettings",
    "SignatureSettings",
    "WakeSettings",
    "redact_url",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: how long a dead-lettered task keeps its hash (RHAILAMBDA_DLQ_RETENTION_S): 14 days
DEFAULT_DLQ_RETENTION_S = 14 * 24 * 3600

_Num = TypeVar("_Num", int, float)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class Env:
    """Typed reads of an environment mapping; every error names the variable."""

    def __init__(self, environ: Mapping[builtins.str, builtins.str]) -> None:
        self._environ = environ

    def str(self, name: builtins.str, default: builtins.str) -> builtins.str:
        return self._environ.get(name, default)

    def optional_str(self, name: builtins.str) -> builtins.str | None:
        value = self._environ.get(name)
        return value if value else None

    def _number(
        self,
        name: builtins.str,
        default: _Num,
        parse: Callable[[builtins.str], _Num],
        what: builtins.str,
    ) -> _Num:
        """``default`` when unset or blank, else the value parsed (``what`` names its kind)."""
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError:
            raise SettingError(name, f"expected {what}, got {raw!r}") from None

    def int(
        self, name: builtins.str, default: builtins.int, *, minimum: builtins.int | None = None
    ) -> builtins.int:
        value = self._number(name, default, int, "an integer")
        if minimum is not None and value < minimum:
            raise SettingError(name, f"must be at least {minimum}, got {value}")
        return value

    def float(
        self, name: builtins.str, default: builtins.float, *, minimum: builtins.float | None = None
    ) -> builtins.float:
        value = self._number(name, default, float, "a number")
        if value != value or value in (float("inf"), float("-inf")):
            raw = self._environ.get(name)
            raise SettingError(name, f"expected a finite number, got {raw!r}")
        if minimum is not None and value < minimum:
            raise SettingError(name, f"must be at least {minimum:g}, got {value:g}")
        return value

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        raw = self._environ.get(name)
        if raw is None:
            return default
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise SettingError(name, f"expected true or false, got {raw!r}")

    def list(self, name: builtins.str) -> tuple[builtins.str, ...]:
        raw = self._environ.get(name, "")
        return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """How to reach Redis. ``url`` may carry a password: log :meth:`redacted` only."""

    url: str = DEFAULT_REDIS_URL
    #: ``auto`` (ask the server at connect), ``yes`` or ``no``: RHAILAMBDA_REDIS_CLUSTER
    cluster: str = "auto"
    #: the variable or flag the URL came from, named by a parse error
    setting: str = field(default="REDIS_URL", compare=False)

    def __post_init__(self) -> None:
        from rhailambda.redis_url import parse_url  # it imports this module

        parse_url(self.url, setting=self.setting)  # a bad URL fails here, redacted
        if self.cluster not in ("auto", "yes", "no"):
            raise SettingError(
                "RHAILAMBDA_REDIS_CLUSTER", f"expected auto, yes or no, got {self.cluster!r}"
            )

    def address(self) -> Address:
        """The parsed URL with the cluster mode (SettingError naming the setting if bad)."""
        import dataclasses

        from rhailambda.redis_url import parse_url

        address = parse_url(self.url, setting=self.setting)
        return dataclasses.replace(address, cluster=self.cluster)

    def redacted(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"RedisSettings(url={self.redacted()!r})"

    @classmethod
    def from_env(cls, env: Env) -> RedisSettings:
        d = cls()
        return cls(
            url=env.str("REDIS_URL", d.url),
            cluster=env.str("RHAILAMBDA_REDIS_CLUSTER", d.cluster).strip().lower() or d.cluster,
        )


SignaturePolicy = Literal["off", "verify", "require"]
_POLICIES: tuple[SignaturePolicy, ...] = ("off", "verify", "require")


@dataclass(frozen=True, slots=True)
class SignatureSettings:
    """Which tasks must carry a valid signature (see :mod:`rhailambda.signing`).

    ``policy``: ``off`` ignores signatures, ``verify`` refuses a bad one but runs
    unsigned tasks, ``require`` refuses unsigned tasks too. ``require_workers`` are
    queues under ``require`` whatever the policy. A signature is valid while its
    ``createdAt`` is within ``max_age_s`` (plus ``clock_skew_s``) of now.
    """

    policy: SignaturePolicy = "verify"
    require_workers: frozenset[str] = frozenset()
    max_age_s: int = 3600
    clock_skew_s: int = 60

    @property
    def replay_window_s(self) -> int:
        """How long after a task finished a copy of it could still pass its signature.

        A task finishes no earlier than ``createdAt - skew`` and its signature is
        valid until ``createdAt + max_age + skew``: ``max_age + 2 * skew`` (0 when no
        signature is ever checked).
        """
        if self.policy == "off" and not self.require_workers:
            return 0
        return self.max_age_s + 2 * self.clock_skew_s

    def policy_for(self, worker_id: str) -> SignaturePolicy:
        if self.require_workers and normalize_worker_id(worker_id) in self.require_workers:
            return "require"
        return self.policy

    @classmethod
    def from_env(cls, env: Env) -> SignatureSettings:
        d = cls()
        raw = env.str("RHAILAMBDA_SIGNATURES", d.policy).strip().lower() or d.policy
        if raw not in _POLICIES:
            message = f"expected off, verify or require, got {raw!r}"
            raise SettingError("RHAILAMBDA_SIGNATURES", message)
        workers = env.list("RHAILAMBDA_SIGNATURES_REQUIRE_WORKERS")
        return cls(
            policy=raw,
            require_workers=frozenset(normalize_worker_id(w) for w in workers),
            max_age_s=env.int("RHAILAMBDA_SIGNATURE_MAX_AGE_S", d.max_age_s, minimum=1),
            clock_skew_s=env.int("RHAILAMBDA_SIGNATURE_CLOCK_SKEW_S", d.clock_skew_s, minimum=0),
        )


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    """The key layout plus the reply and cleanup policy of the protocol."""

    layout: KeyLayout = field(default_factory=KeyLayout)
    reply_ttl_s: int = 3600
    preserve_tasks: bool = False
    #: finished ids are remembered at least this long (SignatureSettings.replay_window_s)
    replay_window_s: int = 0
    #: a dead-lettered task keeps its hash this long (to be shown and redriven)
    dlq_retention_s: int = DEFAULT_DLQ_RETENTION_S

    @property
    def done_ttl_s(self) -> int:
        """How long a finished task's done marker lives: a late redelivery is dropped (the
        reply's TTL) and a replayed signed task refused (the signature's window)."""
        return max(self.reply_ttl_s, self.replay_window_s)

    @classmethod
    def from_env(cls, env: Env, signatures: SignatureSettings | None = None) -> ProtocolSettings:
        """``signatures``: the process's signature settings when it has parsed them
        already (the function), else read here for the replay window (the shim)."""
        d = cls()
        try:
            layout = KeyLayout(
                prefix=env.str("RHAILAMBDA_KEY_PREFIX", d.layout.prefix),
                reply_template=env.str("RHAILAMBDA_REPLY_KEY_TEMPLATE", d.layout.reply_template),
                internal_prefix=env.str("RHAILAMBDA_INTERNAL_PREFIX", d.layout.internal_prefix),
            )
        except ValueError as exc:
            raise SettingError("RHAILAMBDA_REPLY_KEY_TEMPLATE", str(exc)) from exc
        if signatures is None:
            signatures = SignatureSettings.from_env(env)
        return cls(
            layout=layout,
            reply_ttl_s=env.int("RHAILAMBDA_REPLY_TTL_S", d.reply_ttl_s, minimum=1),
            preserve_tasks=env.bool("RHAILAMBDA_PRESERVE_TASKS", d.preserve_tasks),
            replay_window_s=signatures.replay_window_s,
            dlq_retention_s=env.int("RHAILAMBDA_DLQ_RETENTION_S", d.dlq_retention_s, minimum=1),
        )


WAKE_ENV = "RHAILAMBDA_WAKE_FUNCTION"


@dataclass(frozen=True, slots=True)
class WakeSettings:
    """The poller a client wakes when a submit finds no live shim (see :mod:`rhailambda.wake`).

    ``function``: its name or ARN (``RHAILAMBDA_WAKE_FUNCTION``); empty: wake none.
    """

    function: str = ""

    @classmethod
    def from_env(cls, env: Env) -> WakeSettings:
        return cls(function=env.str(WAKE_ENV, cls().function).strip())
