"""The function's settings: read once per cold start from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rhailambda.settings import Env, ProtocolSettings, RedisSettings, SignatureSettings

__all__ = ["CIRCLE_EXTENSION", "EngineLimits", "FunctionSettings"]

#: the default first entry of the extensions list: the circle store's db:: and circle::
CIRCLE_EXTENSION = "rhailambda.circle:extension_from_env"


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """Resource limits of every engine the function builds (rhai_py.Engine keywords).

    ``timeout_s`` caps one script's wall time; the invocation's remaining time caps
    it further.
    """

    max_operations: int = 50_000_000
    max_call_levels: int = 64
    max_expr_depth: int = 128
    max_string_size: int = 10 * 1024 * 1024
    max_array_size: int = 10_000
    max_map_size: int = 10_000
    timeout_s: float = 10.0

    def engine_kwargs(self) -> dict[str, Any]:
        return {
            "max_operations": self.max_operations,
            "max_call_levels": self.max_call_levels,
            "max_expr_depth": self.max_expr_depth,
            "max_function_expr_depth": self.max_expr_depth,
            "max_string_size": self.max_string_size,
            "max_array_size": self.max_array_size,
            "max_map_size": self.max_map_size,
            "timeout_s": self.timeout_s,
        }

    @classmethod
    def from_env(cls, env: Env) -> EngineLimits:
        d = cls()
        return cls(
            max_operations=env.int("RHAILAMBDA_MAX_OPERATIONS", d.max_operations, minimum=1),
            max_call_levels=env.int("RHAILAMBDA_MAX_CALL_LEVELS", d.max_call_levels, minimum=1),
            max_expr_depth=env.int("RHAILAMBDA_MAX_EXPR_DEPTH", d.max_expr_depth, minimum=1),
            max_string_size=env.int("RHAILAMBDA_MAX_STRING_SIZE", d.max_string_size, minimum=1),
            max_array_size=env.int("RHAILAMBDA_MAX_ARRAY_SIZE", d.max_array_size, minimum=1),
            max_map_size=env.int("RHAILAMBDA_MAX_MAP_SIZE", d.max_map_size, minimum=1),
            timeout_s=env.float("RHAILAMBDA_SCRIPT_TIMEOUT_S", d.timeout_s, minimum=0.001),
        )


@dataclass(frozen=True, slots=True)
class FunctionSettings:
    """Everything the script function needs, parsed once per cold start."""

    redis: RedisSettings = field(default_factory=RedisSettings)
    redis_secret_arn: str | None = None
    protocol: ProtocolSettings = field(default_factory=ProtocolSettings)
    limits: EngineLimits = field(default_factory=EngineLimits)
    extensions: tuple[str, ...] = ()
    circle_enabled: bool = True
    #: time kept back from the invocation's budget to write the results
    reserve_s: float = 0.5
    #: how often a script is re-run when its staged writes lost a race
    max_conflict_retries: int = 20
    compile_cache_size: int = 512
    #: scripts longer than this get an error reply instead of running
    max_script_bytes: int = 1024 * 1024
    #: an output longer than this, as JSON in the reply, gets an error reply instead
    max_output_bytes: int = 1024 * 1024
    #: which tasks must prove their callerId (RHAILAMBDA_SIGNATURES, ...)
    signatures: SignatureSettings = field(default_factory=SignatureSettings)

    @property
    def extension_specs(self) -> tuple[str, ...]:
        """Every extension factory to load, the circle extension first unless disabled."""
        return ((CIRCLE_EXTENSION,) if self.circle_enabled else ()) + self.extensions

    @classmethod
    def from_env(cls, env: Env) -> FunctionSettings:
        d = cls()
        signatures = SignatureSettings.from_env(env)  # once: the protocol needs its window
        return cls(
            redis=RedisSettings.from_env(env),
            redis_secret_arn=env.optional_str("REDIS_SECRET_ARN"),
            protocol=ProtocolSettings.from_env(env, signatures),
            limits=EngineLimits.from_env(env),
            extensions=env.list("RHAILAMBDA_EXTENSIONS"),
            circle_enabled=env.bool("RHAILAMBDA_CIRCLE_ENABLED", d.circle_enabled),
            reserve_s=env.float("RHAILAMBDA_RESERVE_S", d.reserve_s, minimum=0.0),
            max_conflict_retries=env.int(
                "RHAILAMBDA_MAX_CONFLICT_RETRIES", d.max_conflict_retries, minimum=0
            ),
            compile_cache_size=env.int(
                "RHAILAMBDA_COMPILE_CACHE_SIZE", d.compile_cache_size, minimum=0
            ),
            max_script_bytes=env.int("RHAILAMBDA_MAX_SCRIPT_BYTES", d.max_script_bytes, minimum=1),
            max_output_bytes=env.int("RHAILAMBDA_MAX_OUTPUT_BYTES", d.max_output_bytes, minimum=64),
            signatures=signatures,
        )
