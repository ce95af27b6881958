"""An IAM token as AUTH password, through both clients, against a real redis-server
whose ACL user holds exactly the token ElastiCache would accept at that moment."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest
import redis
from redis_server import RedisServer

from rhailambda.errors import RedisConnectionError
from rhailambda.iam_auth import REFRESH_S, Credentials, IamAuth
from rhailambda.redis_url import Address, parse_url
from rhailambda.resp import RespClient
from rhailambda.resp_async import AsyncRespClient

pytestmark = pytest.mark.standalone_only("one server's ACL")


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


def _accept_only(admin: redis.Redis, token: str) -> None:
    admin.execute_command("ACL", "SETUSER", "app", "on", "resetpass", f">{token}", "~*", "+@all")


def test_iam_tokens_log_in_and_are_renewed_for_new_connections(server: RedisServer) -> None:
    clock = [1_796_230_000.0]
    auth = IamAuth("my-cache", "app", "eu-west-1",
                   credentials=lambda: Credentials("AKID", "secret", "session"),
                   clock=lambda: clock[0])  # fmt: skip
    url = f"redis://app@127.0.0.1:{server.port}?iam_cache=my-cache&iam_region=eu-west-1"
    address: Address = dataclasses.replace(parse_url(url), iam=auth)
    admin = redis.Redis(port=server.port, decode_responses=True)
    first = auth.token()
    _accept_only(admin, first)

    with RespClient(address) as client:
        assert client.execute("SET", "k", "1") == "OK"
        clock[0] += REFRESH_S  # ten minutes on: the next connection needs a new token
        second = auth.token()
        assert second != first
        _accept_only(admin, second)
        assert client.execute("GET", "k") == "1", "an open connection stays logged in"
    with RespClient(address) as client:
        assert client.execute("GET", "k") == "1", "a new connection logs in with the new token"

    async def shim_side() -> str:
        aclient = AsyncRespClient(address)
        try:
            return str(await aclient.execute("GET", "k"))
        finally:
            await aclient.aclose()

    assert asyncio.run(shim_side()) == "1"

    stale = IamAuth("my-cache", "app", "eu-west-1",
                    credentials=lambda: Credentials("AKID", "secret", "session"),
                    clock=lambda: clock[0] - REFRESH_S)  # fmt: skip
    with (
        pytest.raises(RedisConnectionError, match="AUTH refused") as info,
        RespClient(dataclasses.replace(address, iam=stale)) as client,
    ):
        client.execute("PING")
    assert first not in str(info.value) and "X-Amz" not in str(info.value)
    admin.close()
