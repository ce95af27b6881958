"""Building redis-py clients from a URL: one place that knows the timeouts.

redis-py 8 gives every connection a 5 s socket timeout by default; a blocking
command (``BLMOVE``, ``BLPOP``) that waits longer would then raise TimeoutError.
Blocking callers therefore ask for a connection whose socket timeout is larger
than the longest block they will issue.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis

__all__ = ["connect", "connect_async"]

_CONNECT_TIMEOUT_S = 5.0
_COMMAND_TIMEOUT_S = 10.0
_BLOCK_MARGIN_S = 5.0


def _pool_options(max_block_s: float | None, max_connections: int) -> dict[str, Any]:
    timeout_s = _COMMAND_TIMEOUT_S
    if max_block_s is not None:
        timeout_s = max(_COMMAND_TIMEOUT_S, max_block_s + _BLOCK_MARGIN_S)
    return {
        "decode_responses": True,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": _CONNECT_TIMEOUT_S,
        "health_check_interval": 30,
        "max_connections": max_connections,
    }


def connect(
    url: str, *, max_block_s: float | None = None, max_connections: int = 64
) -> redis.Redis:
    """A synchronous client (strings decoded) for ``url`` (redis://, rediss://, unix://)."""
    options = _pool_options(max_block_s, max_connections)
    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, **options))


def connect_async(
    url: str, *, max_block_s: float | None = None, max_connections: int = 64
) -> aioredis.Redis:
    """An asyncio client (strings decoded) for ``url``."""
    options = _pool_options(max_block_s, max_connections)
    return aioredis.Redis(connection_pool=aioredis.ConnectionPool.from_url(url, **options))
