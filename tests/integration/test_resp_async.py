"""The shim takers' asyncio connection against a real redis-server."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis_server import RedisServer

from rhailambda.errors import RedisConnectionError, RedisResponseError
from rhailambda.resp import parse_url
from rhailambda.resp_async import AsyncConnection, AsyncScript


@pytest.mark.standalone_only("a raw connection to one node, keys of several slots")
def test_commands_scripts_and_errors(redis_url: str, redis_client: redis.Redis) -> None:
    redis_client.set("s", "x")

    async def scenario() -> None:
        conn = await AsyncConnection.open(parse_url(redis_url), "test")
        assert await conn.execute("RPUSH", "q", "a", "b") == 2
        replies = await conn.round_trip([["LLEN", "q"], ["HGET", "s", "f"], ["GET", "nope"]])
        assert replies[0] == 2 and replies[2] is None
        assert isinstance(replies[1], RedisResponseError) and replies[1].code == "WRONGTYPE"
        script = AsyncScript("return {KEYS[1], redis.call('LLEN', KEYS[1])}")
        assert await script(conn, ["q"]) == ["q", 2]  # SCRIPT LOAD + EVAL
        assert script.sha is not None
        await conn.execute("SCRIPT", "FLUSH")
        assert await script(conn, ["q"]) == ["q", 2]  # NOSCRIPT, then loaded again
        with pytest.raises(RedisResponseError, match="boom"):
            await AsyncScript("return redis.error_reply('boom')")(conn)
        assert await conn.execute("BLMOVE", "q", "p", "RIGHT", "LEFT", 0.5) == "b"
        assert await conn.execute("BLMOVE", "empty", "p", "RIGHT", "LEFT", 0.05) is None
        conn.close()

    asyncio.run(scenario())


@pytest.mark.standalone_only("a raw connection to one node, keys of several slots")
def test_a_cancelled_blmove_closes_the_connection_and_moves_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario() -> AsyncConnection:
        conn = await AsyncConnection.open(parse_url(redis_url))
        task = asyncio.create_task(conn.execute("BLMOVE", "q2", "p2", "RIGHT", "LEFT", 30))
        await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.get_running_loop().time() - started < 0.5, "the cancel was prompt"
        return conn

    conn = asyncio.run(scenario())
    assert conn.closed
    redis_client.lpush("q2", "x")  # the blocked BLMOVE is gone with its connection
    assert redis_client.lrange("q2", 0, -1) == ["x"]


def test_no_reply_in_time_and_a_lost_server_are_connection_errors() -> None:
    with RedisServer() as server:

        async def scenario() -> None:
            conn = await AsyncConnection.open(parse_url(server.url))
            with pytest.raises(RedisConnectionError, match="no reply"):
                await conn.execute("BLPOP", "never", 2, timeout_s=0.2)
            assert conn.closed
            conn = await AsyncConnection.open(parse_url(server.url))
            waiting = asyncio.create_task(conn.execute("BLPOP", "never", 10))
            await asyncio.sleep(0.05)
            server.stop()
            with pytest.raises(RedisConnectionError, match="lost"):
                await waiting
            with pytest.raises(RedisConnectionError, match="cannot connect"):
                await AsyncConnection.open(parse_url(server.url))

        asyncio.run(scenario())


def test_auth_and_db() -> None:
    with RedisServer(extra_args=("--requirepass", "s3cret")) as server:

        async def scenario() -> None:
            url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
            conn = await AsyncConnection.open(parse_url(url), "rhailambda-shim")
            await conn.execute("SET", "k", "v")
            assert "name=rhailambda-shim" in await conn.execute("CLIENT", "INFO")
            conn.close()
            with pytest.raises(RedisConnectionError, match="AUTH refused") as info:
                await AsyncConnection.open(parse_url(f"redis://:bad@127.0.0.1:{server.port}/0"))
            assert "bad" not in str(info.value)

        asyncio.run(scenario())
        admin = redis.Redis(port=server.port, password="s3cret", db=3, decode_responses=True)
        assert admin.get("k") == "v"
