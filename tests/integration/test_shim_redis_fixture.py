"""The shared redis-server fixture itself: flushed between tests, restartable."""

from __future__ import annotations

import redis
from redis_server import RedisServer


def test_flushed_between_tests_first(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("k", "v")


def test_flushed_between_tests_second(redis_client: redis.Redis) -> None:
    assert redis_client.get("k") is None


def test_restart_keeps_the_port(private_redis_server: RedisServer) -> None:
    port = private_redis_server.port
    client = redis.Redis.from_url(private_redis_server.url, decode_responses=True)
    client.set("k", "v")
    private_redis_server.restart()
    assert private_redis_server.port == port
    assert client.ping()  # redis-py reconnects on the same address
    assert client.get("k") is None  # nothing persisted
    client.close()
