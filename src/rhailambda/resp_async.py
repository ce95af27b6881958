"""One asyncio Redis connection on :mod:`rhailambda.resp`'s wire format: the shim's take path.

The shim's takers spend their time in ``BLMOVE`` and the take script. redis-py's
asyncio client costs about 3 ms of cold code between a reply arriving and the
caller seeing it after an idle pause (and, on Python 3.11, can lose a cancel
inside a blocking call). A taker is one sequential loop, so it owns one
connection: an :class:`asyncio.Protocol` that feeds hiredis and hands replies to
the waiting requests in order.

A request that is cancelled or times out closes the connection (its reply would
otherwise answer the next request); the next call opens a new one. Errors:
:class:`~rhailambda.errors.RedisConnectionError` (a ``ConnectionError``: the
shim's health loop waits it out) and error replies as
:class:`~rhailambda.errors.RedisResponseError` values.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

import hiredis

from rhailambda.errors import RedisConnectionError, RedisResponseError
from rhailambda.resp import (
    Address,
    Arg,
    check_handshake,
    encode,
    handshake,
    raise_error,
    tls_context,
)

__all__ = ["AsyncConnection", "AsyncScript"]


class AsyncConnection(asyncio.Protocol):
    """A single Redis connection for one task at a time (or pipelined requests)."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self._reader = hiredis.Reader(
            replyError=RedisResponseError, encoding="utf-8", errors="replace"
        )
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self.closed = False

    @classmethod
    async def open(cls, address: Address, client_name: str | None = None) -> AsyncConnection:
        loop = asyncio.get_running_loop()
        ssl = tls_context(address) if address.tls else None
        try:
            async with asyncio.timeout(address.connect_timeout_s):
                if address.unix_path is not None:
                    _, conn = await loop.create_unix_connection(
                        lambda: cls(address), address.unix_path, ssl=ssl
                    )
                else:
                    _, conn = await loop.create_connection(
                        lambda: cls(address),
                        address.host,
                        address.port,
                        ssl=ssl,
                        server_hostname=address.host if ssl else None,
                    )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis at {address!r}: {exc}") from exc
        await conn._handshake(client_name)
        return conn

    async def _handshake(self, client_name: str | None) -> None:
        commands = handshake(self.address, client_name)
        if commands:
            try:
                check_handshake(self.address, commands, await self.round_trip(commands))
            except RedisConnectionError:
                self.close()
                raise

    # --- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if self._waiters:
                    waiter = self._waiters.popleft()
                    if not waiter.done():
                        waiter.set_result(reply)
        except hiredis.ProtocolError as exc:
            self._fail(RedisConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by Redis'}"))

    def _fail(self, error: Exception) -> None:
        self.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    # --- requests --------------------------------------------------------------
    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    async def round_trip(
        self, commands: Sequence[Sequence[Arg]], *, timeout_s: float | None = None
    ) -> list[Any]:
        """Send the commands in one write; their replies, error replies as values."""
        if self.closed or self._transport is None:
            raise RedisConnectionError("the connection to Redis is closed")
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in commands]
        self._waiters.extend(waiters)
        self._transport.write(encode(commands))
        limit_s = timeout_s or self.address.socket_timeout_s
        try:
            async with asyncio.timeout(limit_s):
                return [await w for w in waiters]
        except TimeoutError as exc:
            self._fail(RedisConnectionError("no reply from Redis in time"))
            raise RedisConnectionError(f"no reply from Redis within {limit_s:g} s") from exc
        except BaseException:
            self.close()  # cancelled: a reply still due would answer the next request
            raise

    async def execute(self, *command: Arg, timeout_s: float | None = None) -> Any:
        (reply,) = await self.round_trip([command], timeout_s=timeout_s)
        return raise_error(reply)


class AsyncScript:
    """A Lua script: EVALSHA once Redis has it; SCRIPT LOAD + EVAL in one write before."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha: str | None = None

    async def __call__(
        self, conn: AsyncConnection, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        tail = [len(keys), *keys, *args]
        if self.sha is not None:
            (reply,) = await conn.round_trip([["EVALSHA", self.sha, *tail]])
            if not (isinstance(reply, RedisResponseError) and reply.code == "NOSCRIPT"):
                return raise_error(reply)
        loaded, reply = await conn.round_trip(
            [["SCRIPT", "LOAD", self.text], ["EVAL", self.text, *tail]]
        )
        if isinstance(loaded, str):
            self.sha = loaded
        return raise_error(reply)
