"""Building the function's long-lived objects from its settings (once per cold start)."""

from __future__ import annotations

import importlib

from rhailambda.errors import SettingError
from rhailambda.extension import Extension
from rhailambda.functions.runner import BatchRunner, DebugHook, PrintHook
from rhailambda.functions.settings import FunctionSettings
from rhailambda.resp import from_url
from rhailambda.settings import Env
from rhailambda.taskstore import TaskStore

__all__ = ["build_runner", "load_extensions", "redis_url"]


def redis_url(settings: FunctionSettings) -> str:
    """The Redis URL: from the Secrets Manager secret when one is named, else REDIS_URL."""
    if settings.redis_secret_arn is None:
        return settings.redis.url
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_secret(settings.redis_secret_arn, max_age=300)
    if not isinstance(value, str) or not value.strip():
        raise SettingError("REDIS_SECRET_ARN", "the secret holds no Redis URL")
    return value.strip()


def load_extensions(settings: FunctionSettings, env: Env) -> list[Extension]:
    """An extension per factory of ``settings.extension_specs`` (the circle's first).

    A factory is called with the environment reader (``factory(env) -> Extension``)
    so an extension parses its own settings once, like the function does.
    """
    extensions: list[Extension] = []
    for spec in settings.extension_specs:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise SettingError("RHAILAMBDA_EXTENSIONS", f"expected module:factory, got {spec!r}")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise SettingError("RHAILAMBDA_EXTENSIONS", f"cannot load {spec!r}: {exc}") from exc
        extensions.append(factory(env))
    return extensions


def build_runner(
    settings: FunctionSettings,
    env: Env,
    *,
    on_print: PrintHook | None = None,
    on_debug: DebugHook | None = None,
) -> BatchRunner:
    client = from_url(redis_url(settings), cluster=settings.redis.cluster)
    store = TaskStore(client, settings.protocol)
    return BatchRunner(
        settings,
        store,
        load_extensions(settings, env),
        on_print=on_print,
        on_debug=on_debug,
    )
