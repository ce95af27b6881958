"""The Redis connection of an ops command: settings from ``--redis-url`` or the environment."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager

from rhailambda.errors import RedisConnectionError, RhailambdaError
from rhailambda.resp import RespClient
from rhailambda.settings import Env, ProtocolSettings, RedisSettings

__all__ = ["Unreachable", "add_redis", "connect"]


class Unreachable(RhailambdaError):
    """Redis did not answer (the URL printed without its password)."""

    def __init__(self, settings: RedisSettings, exc: Exception) -> None:
        super().__init__(f"cannot reach Redis at {settings.redacted()}: {exc}")


def add_redis(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=None, help="Redis URL [REDIS_URL]")


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[tuple[RespClient, ProtocolSettings]]:
    """A client and the protocol settings; a connection failure becomes :class:`Unreachable`."""
    env = Env(os.environ)
    redis = RedisSettings.from_env(env)
    if args.redis_url:
        redis = RedisSettings(url=args.redis_url, cluster=redis.cluster, setting="--redis-url")
    protocol = ProtocolSettings.from_env(env)
    client = RespClient(redis.address(), client_name="rhailambda-cli")
    try:
        yield client, protocol
    except RedisConnectionError as exc:
        raise Unreachable(redis, exc) from None
    finally:
        client.close()
