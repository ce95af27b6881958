"""The shim's subcommands: ``shim`` (run it), ``status``, ``pause`` and ``resume``.

:func:`configure` adds them to the top-level ``rhailambda`` parser; each handler
takes the parsed args and returns the exit code (``python -m rhailambda`` runs the
same top-level command).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from rhailambda.errors import RedisError, RhailambdaError, SettingError
from rhailambda.protocol import normalize_worker_id
from rhailambda.resp import RespClient
from rhailambda.settings import Env, ProtocolSettings, RedisSettings
from rhailambda.shim import settings as shim_settings

__all__ = ["configure"]


def configure(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``shim``, ``status``, ``pause``, ``resume`` to the ``rhailambda`` command."""
    shim = subparsers.add_parser(
        "shim",
        help="drain worker queues into function invocations",
        description="Drain rhailib worker queues into invocations of the function "
        "(local worker processes or AWS Lambda). Every flag can also be set by the "
        "environment variable shown in brackets.",
    )
    shim_settings.add_arguments(shim)
    shim.set_defaults(func=_run_shim)

    status = subparsers.add_parser("status", help="queue depths, in-flight ids, shims")
    _add_redis(status)
    status.add_argument("--worker", action="append", default=[], help="a queue to show (repeat)")
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.set_defaults(func=_status)

    for name, verb in (("pause", "stop taking from"), ("resume", "take again from")):
        sub = subparsers.add_parser(name, help=f"{verb} a worker queue (all shims)")
        _add_redis(sub)
        sub.add_argument("--worker", action="append", required=True, help="worker id (repeat)")
        sub.set_defaults(func=_pause if name == "pause" else _resume)


def _add_redis(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=None, help="Redis URL [REDIS_URL]")


def _redis_and_protocol(args: argparse.Namespace) -> tuple[RedisSettings, ProtocolSettings]:
    env = Env(os.environ)
    redis_settings = (
        RedisSettings(
            url=args.redis_url,
            cluster=env.str("RHAILAMBDA_REDIS_CLUSTER", "auto").strip().lower() or "auto",
            setting="--redis-url",
        )
        if args.redis_url
        else RedisSettings.from_env(env)
    )
    return redis_settings, ProtocolSettings.from_env(env)


class _Unreachable(RhailambdaError):
    def __init__(self, settings: RedisSettings, exc: Exception) -> None:
        super().__init__(f"cannot reach Redis at {settings.redacted()}: {exc}")


def _run_shim(args: argparse.Namespace) -> int:
    from rhailambda.shim.app import run

    settings = shim_settings.from_args(args, Env(os.environ))
    if settings.function.backend == "local":
        from rhailambda.shim.local_backend import check_handler

        problem = check_handler(settings)
        if problem is not None:
            kind, _, rest = problem.partition(": ")
            name, sep, message = rest.partition(": ")
            if kind == "SettingError" and sep:  # a function setting: name that one
                raise SettingError(name, f"{message} (local worker start-up)")
            flag = "--handler" if args.rhailambda_handler else "RHAILAMBDA_HANDLER"
            raise SettingError(flag, f"the local worker cannot start: {problem}")
    return run(settings)


def _status(args: argparse.Namespace) -> int:
    from rhailambda.shim.status import gather_status, render_status

    redis_settings, protocol = _redis_and_protocol(args)
    client = RespClient(redis_settings.address(), client_name="rhailambda-cli")
    try:
        workers = [normalize_worker_id(w) for w in args.worker]
        status = gather_status(client, protocol.layout, workers)
    except RedisError as exc:
        raise _Unreachable(redis_settings, exc) from None
    finally:
        client.close()
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        render_status(status)
    broken = [q for q in status.queues if q.error]
    for q in broken:  # the report above is whole; these queues could not be read
        print(f"rhailambda status: queue {q.worker_id}: {q.error}", file=sys.stderr)
    return 1 if broken else 0


def _set_paused(args: argparse.Namespace, paused: bool) -> int:
    redis_settings, protocol = _redis_and_protocol(args)
    workers = [normalize_worker_id(w) for w in args.worker]
    client = RespClient(redis_settings.address(), client_name="rhailambda-cli")
    try:
        keys = [protocol.layout.paused(w) for w in workers]
        commands = [["SET", k, "1"] if paused else ["DEL", k] for k in keys]
        for reply in client.round_trip(commands, idempotent=True):
            if isinstance(reply, Exception):
                raise reply
    except RedisError as exc:
        raise _Unreachable(redis_settings, exc) from None
    finally:
        client.close()
    print(f"{'paused' if paused else 'resumed'}: {', '.join(workers)}")
    return 0


def _pause(args: argparse.Namespace) -> int:
    return _set_paused(args, True)


def _resume(args: argparse.Namespace) -> int:
    return _set_paused(args, False)
