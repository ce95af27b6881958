"""Shared fixtures: a real redis-server for the whole session, flushed between tests.

- ``redis_server``: the session's :class:`RedisServer` (do not stop it; for outage
  tests start your own with ``private_redis_server``).
- ``redis_url``: its URL, after ``FLUSHALL`` (function scope).
- ``redis_client``: a synchronous redis-py client with decoded strings.
- ``private_redis_server``: a server of the test's own, closed afterwards; restart
  or kill it freely.
- ``moto_endpoint``: an AWS API endpoint: ``AWS_ENDPOINT_URL`` when set (LocalStack),
  else moto in process on 127.0.0.1, for the whole session.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent))

from redis_server import RedisServer

from rhailambda.circle.testing import start_moto
from rhailambda.resp import RespClient, from_url


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if not redis_server.running:  # a test stopped the shared server: bring it back
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def resp_client(redis_url: str) -> Iterator[RespClient]:
    """The function's own client (rhailambda.resp) on the session server."""
    with from_url(redis_url) as client:
        yield client


@pytest.fixture
def private_redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        yield endpoint
        return
    with start_moto() as url:
        yield url
