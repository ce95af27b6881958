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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import hiredis

from rhailambda.errors import RedisConnectionError, RedisResponseError
from rhailambda.redis_url import Address
from rhailambda.resp_wire import (
    Arg,
    ScriptRun,
    check_handshake,
    encode,
    handshake,
    raise_error,
    tls_context,
)
from rhailambda.slots import Node, key_slot
from rhailambda.topology import Exchange, Topology

__all__ = ["AsyncChannel", "AsyncConnection", "AsyncRespClient", "AsyncScript"]


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
            _retrieved(waiters)
            raise RedisConnectionError(f"no reply from Redis within {limit_s:g} s") from exc
        except BaseException:
            self.close()  # cancelled: a reply still due would answer the next request
            _retrieved(waiters)
            raise

    async def execute(self, *command: Arg, timeout_s: float | None = None) -> Any:
        (reply,) = await self.round_trip([command], timeout_s=timeout_s)
        return raise_error(reply)


def _retrieved(waiters: Sequence[asyncio.Future[Any]]) -> None:
    """A broken pipeline's later replies: failed ones marked seen, pending ones cancelled
    (nobody awaits them now; asyncio would log their failure as never retrieved)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.cancel()
        elif not waiter.cancelled():
            waiter.exception()


class RoundTripper(Protocol):
    async def round_trip(
        self, commands: Sequence[Sequence[Arg]], *, timeout_s: float | None = None
    ) -> list[Any]: ...


class AsyncScript:
    """A Lua script: EVALSHA once Redis has it; SCRIPT LOAD + EVAL in one write before.

    Runs on anything with ``round_trip``: a connection, a channel or the client.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha: str | None = None

    async def __call__(
        self, target: RoundTripper, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()
    ) -> Any:
        return raise_error((await self.many(target, [(keys, args)]))[0])

    async def many(
        self, target: RoundTripper, calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]]
    ) -> list[Any]:
        """One run per (keys, args), in one round trip per node; error replies as values."""
        run = ScriptRun(self.text, self.sha, calls)
        if run.first:
            run.took_first(await target.round_trip(run.first))
        if run.second:
            run.took_second(await target.round_trip(run.second))
        self.sha = run.sha
        return run.replies


_RETRY_PAUSE_S = 0.05
ConnGetter = Callable[[Node], Awaitable[AsyncConnection]]


async def _routed(
    topology: Topology,
    refresh: Callable[[], Awaitable[None]],
    conn_for: ConnGetter,
    commands: Sequence[Sequence[Arg]],
    timeout_s: float | None,
) -> list[Any]:
    """Send ``commands`` to their nodes, following redirects (see :mod:`rhailambda.topology`).

    Never re-sent after a broken connection (the caller knows whether that is safe).
    """
    await refresh()
    if not topology.cluster:
        conn = await conn_for(topology.seed_node)
        return await conn.round_trip(commands, timeout_s=timeout_s)
    exchange = Exchange(topology, commands)
    while exchange.rounds_left():
        await refresh()
        for node, indexes, send in exchange.sends():
            try:
                conn = await conn_for(node)
                got = await conn.round_trip(send, timeout_s=timeout_s)
            except RedisConnectionError:
                topology.stale = True  # failover or a node gone: ask the others next time
                raise
            exchange.absorb(node, indexes, got)
        if exchange.pause:
            await asyncio.sleep(_RETRY_PAUSE_S)
    return exchange.replies


class AsyncRespClient:
    """The shim's Redis: one shared, pipelined connection per node, cluster routing.

    Concurrent requests share a node's connection (replies come back in order). A
    request that is cancelled or times out closes that connection, so the others on
    it fail with RedisConnectionError (the shim's health loop sends them again where
    that is safe). A blocking command needs a connection of its own: :meth:`channel`.
    """

    def __init__(self, address: Address, client_name: str | None = "rhailambda-shim") -> None:
        self.address = address
        self._client_name = client_name
        self.topology = Topology(address)
        self._shared: dict[Node, AsyncConnection] = {}
        self._opening: dict[Node, asyncio.Lock] = {}
        self._refreshing = asyncio.Lock()
        self._channels: list[AsyncChannel] = []

    async def open(self, node: Node) -> AsyncConnection:
        """A new connection to ``node`` (with this client's address settings)."""
        return await AsyncConnection.open(self.topology.address(node), self._client_name)

    async def _shared_conn(self, node: Node) -> AsyncConnection:
        conn = self._shared.get(node)
        if conn is not None and not conn.closed:
            return conn
        lock = self._opening.setdefault(node, asyncio.Lock())
        async with lock:
            conn = self._shared.get(node)
            if conn is None or conn.closed:
                conn = await self.open(node)
                self._shared[node] = conn
        return conn

    async def refresh(self) -> None:
        """Learn the deployment (standalone or the slot map) when unknown or stale."""
        topology = self.topology
        if topology.known:
            return
        async with self._refreshing:
            if topology.known:
                return
            errors: list[str] = []
            for node in topology.refresh_nodes():
                try:
                    conn = await self._shared_conn(node)
                    (reply,) = await conn.round_trip([["CLUSTER", "SLOTS"]])
                except RedisConnectionError as exc:
                    errors.append(str(exc))
                    continue
                topology.learn(reply)
                return
            raise RedisConnectionError("; ".join(errors) or "no Redis node answered")

    @property
    def cluster(self) -> bool:
        return bool(self.topology.cluster)

    def slot_group(self, key: str) -> int:
        """Keys of one group may share a script: their slot on a cluster, else 0.

        Known after the first round trip (:meth:`refresh`)."""
        return key_slot(key) if self.topology.cluster else 0

    async def nodes(self) -> list[Node]:
        await self.refresh()
        if self.topology.cluster and self.topology.map is not None:
            return self.topology.map.nodes()
        return [self.topology.seed_node]

    async def round_trip(
        self, commands: Sequence[Sequence[Arg]], *, timeout_s: float | None = None
    ) -> list[Any]:
        """One write per node; replies in order, error replies as values."""
        return await _routed(self.topology, self.refresh, self._shared_conn, commands, timeout_s)

    async def execute(self, *command: Arg, timeout_s: float | None = None) -> Any:
        (reply,) = await self.round_trip([command], timeout_s=timeout_s)
        return raise_error(reply)

    def channel(self) -> AsyncChannel:
        """Connections of one sequential user (a taker's BLMOVE), routed like the client's."""
        channel = AsyncChannel(self)
        self._channels.append(channel)
        return channel

    def close(self) -> None:
        for conn in self._shared.values():
            conn.close()
        self._shared.clear()
        for channel in self._channels:
            channel.close()

    async def aclose(self) -> None:
        self.close()


class AsyncChannel:
    """Dedicated connections (one per node) for one task at a time: blocking commands."""

    def __init__(self, client: AsyncRespClient) -> None:
        self._client = client
        self._conns: dict[Node, AsyncConnection] = {}

    async def _conn(self, node: Node) -> AsyncConnection:
        conn = self._conns.get(node)
        if conn is None or conn.closed:
            conn = await self._client.open(node)
            self._conns[node] = conn
        return conn

    async def round_trip(
        self, commands: Sequence[Sequence[Arg]], *, timeout_s: float | None = None
    ) -> list[Any]:
        client = self._client
        return await _routed(client.topology, client.refresh, self._conn, commands, timeout_s)

    async def execute(self, *command: Arg, timeout_s: float | None = None) -> Any:
        (reply,) = await self.round_trip([command], timeout_s=timeout_s)
        return raise_error(reply)

    @property
    def closed(self) -> bool:
        return all(c.closed for c in self._conns.values())

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
