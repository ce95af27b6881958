"""The circle store's settings, read once per cold start from the environment.

=================================  ==========================================
``RHAILAMBDA_CIRCLE_BACKEND``      ``redis`` (default) or ``dynamodb``
``RHAILAMBDA_CIRCLE_REDIS_URL``    Redis of the circle data (default: ``REDIS_URL``)
``RHAILAMBDA_CIRCLE_TABLE``        DynamoDB table (required for ``dynamodb``)
``AWS_ENDPOINT_URL``               DynamoDB endpoint (LocalStack, moto), optional
``AWS_REGION``                     region (else ``AWS_DEFAULT_REGION``, else boto3's)
``RHAILAMBDA_CIRCLE_MAX_LIST``     most records one ``db::list`` returns (1000)
``RHAILAMBDA_CIRCLE_MAX_SCAN``     most records ``db::find`` searches (10000)
``RHAILAMBDA_CIRCLE_MAX_RECORD_BYTES``  largest record, as JSON (65536)
``RHAILAMBDA_CIRCLE_MAX_RESULT_BYTES``  most JSON bytes one ``db::list`` page or
                                   ``db::find`` result holds (8 MiB)
``RHAILAMBDA_CIRCLE_MAX_SCAN_BYTES``  most JSON bytes ``db::find`` reads (32 MiB)
``RHAILAMBDA_CIRCLE_MAX_WRITES``   most records + members one script changes (1000;
                                   DynamoDB caps a commit at 100 items anyway)
``RHAILAMBDA_REPLY_TTL_S``         how long a task's commit receipt is kept (3600),
                                   as long as its reply
=================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rhailambda.errors import SettingError
from rhailambda.protocol import KeyLayout
from rhailambda.redis_url import parse_url
from rhailambda.settings import DEFAULT_REDIS_URL, Env, ProtocolSettings, redact_url

__all__ = ["Backend", "CircleSettings", "Limits"]

Backend = Literal["redis", "dynamodb"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one script may ask of the store."""

    max_list: int = 1000
    max_scan: int = 10_000
    max_record_bytes: int = 65_536
    max_writes: int = 1000
    #: JSON bytes one ``db::list`` page or ``db::find`` result may hold (under the
    #: engine's 10 MB string limit, which a returned array counts as a whole)
    max_result_bytes: int = 8 * 1024 * 1024
    #: JSON bytes ``db::find`` may read
    max_scan_bytes: int = 32 * 1024 * 1024

    @classmethod
    def from_env(cls, env: Env) -> Limits:
        return cls(
            max_list=env.int("RHAILAMBDA_CIRCLE_MAX_LIST", 1000, minimum=1),
            max_scan=env.int("RHAILAMBDA_CIRCLE_MAX_SCAN", 10_000, minimum=1),
            max_record_bytes=env.int("RHAILAMBDA_CIRCLE_MAX_RECORD_BYTES", 65_536, minimum=64),
            max_writes=env.int("RHAILAMBDA_CIRCLE_MAX_WRITES", 1000, minimum=1),
            max_result_bytes=env.int(
                "RHAILAMBDA_CIRCLE_MAX_RESULT_BYTES", 8 * 1024 * 1024, minimum=65_536
            ),
            max_scan_bytes=env.int(
                "RHAILAMBDA_CIRCLE_MAX_SCAN_BYTES", 32 * 1024 * 1024, minimum=65_536
            ),
        )


@dataclass(frozen=True, slots=True)
class CircleSettings:
    """Which backend holds circle data, how to reach it, and the limits."""

    backend: Backend = "redis"
    redis_url: str = DEFAULT_REDIS_URL
    table: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    layout: KeyLayout = field(default_factory=KeyLayout)
    limits: Limits = field(default_factory=Limits)
    #: how long a commit receipt is kept: the protocol's reply TTL
    receipt_ttl_s: int = 3600

    def __post_init__(self) -> None:
        if self.backend not in ("redis", "dynamodb"):
            raise SettingError(
                "RHAILAMBDA_CIRCLE_BACKEND", f"expected redis or dynamodb, got {self.backend!r}"
            )
        if self.backend == "dynamodb" and not self.table:
            raise SettingError("RHAILAMBDA_CIRCLE_TABLE", "required when the backend is dynamodb")

    def __repr__(self) -> str:
        return (
            f"CircleSettings(backend={self.backend!r}, redis_url={redact_url(self.redis_url)!r}, "
            f"table={self.table!r}, endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
            f"limits={self.limits!r}, receipt_ttl_s={self.receipt_ttl_s})"
        )

    @classmethod
    def from_env(cls, env: Env) -> CircleSettings:
        backend = env.str("RHAILAMBDA_CIRCLE_BACKEND", "redis").strip().lower() or "redis"
        if backend not in ("redis", "dynamodb"):
            raise SettingError(
                "RHAILAMBDA_CIRCLE_BACKEND", f"expected redis or dynamodb, got {backend!r}"
            )
        circle_url = env.optional_str("RHAILAMBDA_CIRCLE_REDIS_URL")
        redis_url = circle_url or env.str("REDIS_URL", DEFAULT_REDIS_URL)
        if backend == "redis":  # a bad URL fails here, by its own name, redacted
            parse_url(
                redis_url, setting="RHAILAMBDA_CIRCLE_REDIS_URL" if circle_url else "REDIS_URL"
            )
        protocol = ProtocolSettings.from_env(env)
        return cls(
            backend="dynamodb" if backend == "dynamodb" else "redis",
            redis_url=redis_url,
            table=env.optional_str("RHAILAMBDA_CIRCLE_TABLE"),
            endpoint_url=env.optional_str("AWS_ENDPOINT_URL"),
            region=env.optional_str("AWS_REGION") or env.optional_str("AWS_DEFAULT_REGION"),
            layout=protocol.layout,
            limits=Limits.from_env(env),
            receipt_ttl_s=protocol.reply_ttl_s,
        )
