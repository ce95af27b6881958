"""The project's synchronous Redis client: small, fast to import, cluster-aware.

Why not redis-py here: ``import redis`` (8.x) always imports asyncio, ssl and
importlib.metadata, 85-160 ms on this kind of machine, more than half of a Lambda
cold start (figures: ``bench/CLIENTS.md``). The function needs a few commands (Lua
scripts per batch, a handful for circle data), so it speaks RESP2 itself over a
socket (:mod:`rhailambda.resp_wire`) and leaves the parsing to hiredis (the C
parser redis-py uses too). The client and the CLI use it too; the shim uses its
asyncio twin (:mod:`rhailambda.resp_async`), with the same routing
(:mod:`rhailambda.topology`).

What it does:

* URLs as redis-py reads them (:mod:`rhailambda.redis_url`): redis://, rediss://
  (TLS, the certificate verified) and unix://, with AUTH users and a database.
* Standalone Redis or a Redis Cluster (ElastiCache Serverless, MemoryDB, Valkey or
  Redis in cluster mode): found at the first connection unless the address says
  (``RHAILAMBDA_REDIS_CLUSTER``). On a cluster, each command goes to its slot's
  master; MOVED, ASK, TRYAGAIN and CLUSTERDOWN are followed (the command did not
  run); the slot map is refreshed after a redirect or a broken node connection.
* A small pool per node (thread-safe; reset after ``fork``). A connection idle for
  ``health_check_s`` is checked with a PING before use, so a connection Redis or
  a NAT dropped while a Lambda sandbox was frozen is replaced, not failed on.
* A command that fails on a broken connection is NOT re-sent unless the caller
  says it is idempotent: a lost reply may hide a command that ran.
* :class:`Script`: the first call sends SCRIPT LOAD and EVAL together (one round
  trip, and the SHA comes from Redis: no hashlib, whose OpenSSL load alone is
  6-8 ms of a cold start); later calls send EVALSHA, and EVAL again on NOSCRIPT
  (a cluster node that has not seen the script yet).
* Replies: bulk strings decoded as UTF-8 (invalid bytes replaced, so one bad
  field gives a task an error reply instead of failing the batch), integers as
  int, nil as None, error replies inside arrays as :class:`RedisResponseError`
  values, a top-level error reply raised.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from rhailambda.errors import RedisConnectionError, RedisResponseError
from rhailambda.redis_url import Address, parse_url
from rhailambda.resp_wire import (
    Arg,
    Connection,
    ScriptRun,
    check_handshake,
    encode,
    handshake,
    raise_error,
    tls_context,
)
from rhailambda.slots import Node, key_slot
from rhailambda.topology import (
    MAX_REDIRECTS,
    Exchange,
    Topology,
    transaction_redirected,
    transaction_slot,
)

__all__ = [
    "Address",
    "Arg",
    "RespClient",
    "Script",
    "check_handshake",
    "encode",
    "from_url",
    "handshake",
    "parse_url",
    "raise_error",
    "tls_context",
]

_Connection = Connection  # the name bench/function_probe.py counts round trips on
_RETRY_PAUSE_S = 0.05


@dataclasses.dataclass(frozen=True, slots=True)
class _PoolOptions:
    """What every node's pool of one client shares (the defaults: :class:`RespClient`)."""

    client_name: str | None
    health_check_s: float
    max_idle: int


class _Pool:
    """Connections to one Redis node: a small thread-safe pool (reset after fork)."""

    def __init__(self, address: Address, options: _PoolOptions) -> None:
        self.address = address
        self._client_name = options.client_name
        self._health_check_s = options.health_check_s
        self._max_idle = options.max_idle
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    # --- the pool --------------------------------------------------------------
    def _take(self) -> Connection:
        with self._lock:
            if self._pid != os.getpid():  # forked: the sockets belong to the parent
                self._idle.clear()
                self._pid = os.getpid()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            return Connection(self.address, self._client_name)
        if conn.readable():  # closed by Redis while idle (its timeout, CLIENT KILL, ...)
            conn.close()
            return Connection(self.address, self._client_name)
        if time.monotonic() - conn.last_used > self._health_check_s:
            try:
                conn.round_trip([["PING"]])
            except RedisConnectionError:
                return Connection(self.address, self._client_name)
        return conn

    def _give_back(self, conn: Connection) -> None:
        if conn.closed:
            return
        with self._lock:
            if len(self._idle) < self._max_idle and self._pid == os.getpid():
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections (the client stays usable)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # --- commands --------------------------------------------------------------
    def round_trip(
        self, commands: Sequence[Sequence[Arg]], *, idempotent: bool = False
    ) -> list[Any]:
        """One write, one reply per command (see :meth:`RespClient.round_trip`)."""
        conn = self._take()
        try:
            return conn.round_trip(commands)
        except RedisConnectionError:
            if not idempotent:
                raise
            conn = Connection(self.address, self._client_name)
            return conn.round_trip(commands)
        finally:
            self._give_back(conn)


class RespClient:
    """A thread-safe synchronous Redis client: one pool per node, cluster routing."""

    def __init__(
        self,
        address: Address,
        *,
        client_name: str | None = "rhailambda-function",
        health_check_s: float = 30.0,
        max_idle: int = 8,
    ) -> None:
        self.address = address
        self._options = _PoolOptions(client_name, health_check_s, max_idle)
        self._topology = Topology(address)
        self._pools: dict[Node, _Pool] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RespClient({self.address!r})"

    # --- nodes -----------------------------------------------------------------
    def _pool(self, node: Node) -> _Pool:
        pool = self._pools.get(node)
        if pool is None:
            with self._lock:
                pool = self._pools.get(node)
                if pool is None:
                    pool = _Pool(self._topology.address(node), self._options)
                    self._pools[node] = pool
        return pool

    @property
    def cluster(self) -> bool:
        """True on a Redis Cluster (asks the server the first time)."""
        self._ensure_topology()
        return bool(self._topology.cluster)

    def slot_group(self, key: str) -> int:
        """Keys of one group may share a script: their slot on a cluster, else 0."""
        return key_slot(key) if self.cluster else 0

    def _ensure_topology(self) -> None:
        topology = self._topology
        if topology.known:
            return
        errors: list[str] = []
        for node in topology.refresh_nodes():
            try:
                (reply,) = self._pool(node).round_trip([["CLUSTER", "SLOTS"]], idempotent=True)
            except RedisConnectionError as exc:
                errors.append(str(exc))
                continue
            topology.learn(reply)
            return
        raise RedisConnectionError("; ".join(errors) or "no Redis node answered")

    def nodes(self) -> list[Node]:
        """Every master (one, on a standalone server)."""
        self._ensure_topology()
        topology = self._topology
        if topology.cluster and topology.map is not None:
            return topology.map.nodes()
        return [topology.seed_node]

    def on_node(
        self, node: Node, commands: Sequence[Sequence[Arg]], *, idempotent: bool = False
    ) -> list[Any]:
        """Send ``commands`` to one node as they are (keyless commands: INFO, DBSIZE...)."""
        return self._pool(node).round_trip(commands, idempotent=idempotent)

    def close(self) -> None:
        """Close the idle connections (the client stays usable)."""
        for pool in list(self._pools.values()):
            pool.close()

    def __enter__(self) -> RespClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- commands --------------------------------------------------------------
    def round_trip(
        self, commands: Sequence[Sequence[Arg]], *, idempotent: bool = False
    ) -> list[Any]:
        """One write per node, one reply per command; error replies come back as values.

        On a broken connection the commands are re-sent once on a new connection
        only when ``idempotent``: otherwise a lost reply could hide a command that ran.
        """
        self._ensure_topology()
        if not self._topology.cluster:
            return self._pool(self._topology.seed_node).round_trip(commands, idempotent=idempotent)
        return self._cluster_round_trip(commands, idempotent)

    def _cluster_round_trip(self, commands: Sequence[Sequence[Arg]], idempotent: bool) -> list[Any]:
        exchange = Exchange(self._topology, commands)
        while exchange.rounds_left():
            self._ensure_topology()
            for node, indexes, send in exchange.sends():
                try:
                    got = self._pool(node).round_trip(send, idempotent=idempotent)
                except RedisConnectionError:
                    self._topology.stale = True  # a failover or a node gone: ask the others
                    if not idempotent:
                        raise
                    exchange.lost(indexes)
                    continue
                exchange.absorb(node, indexes, got)
            if exchange.pause:
                time.sleep(_RETRY_PAUSE_S)
        return exchange.replies  # after many redirects, the last errors are the replies

    def execute(self, *command: Arg, idempotent: bool = False) -> Any:
        """One command; an error reply is raised as :class:`RedisResponseError`."""
        (reply,) = self.round_trip([command], idempotent=idempotent)
        return raise_error(reply)

    def pipeline(
        self,
        commands: Sequence[Sequence[Arg]],
        *,
        transaction: bool = False,
        idempotent: bool = False,
    ) -> list[Any]:
        """Replies of ``commands`` sent together; in MULTI/EXEC when ``transaction``.

        Error replies of single commands are returned as values, not raised; a
        transaction Redis refused as a whole (EXECABORT) is raised. On a cluster a
        transaction's keys must share a slot; it is sent again whole after a redirect.
        """
        if not transaction:
            return self.round_trip(commands, idempotent=idempotent)
        wrapped: list[Sequence[Arg]] = [["MULTI"], *commands, ["EXEC"]]
        for _ in range(MAX_REDIRECTS):  # whole, to one node: never command by command
            self._ensure_topology()
            node = self._topology.owner(transaction_slot(commands))
            replies = self._pool(node).round_trip(wrapped, idempotent=idempotent)
            if not transaction_redirected(self._topology, replies, node):
                break
            time.sleep(_RETRY_PAUSE_S)  # mid-migration: wait for the slot to settle
        result = replies[-1]
        if isinstance(result, RedisResponseError):
            raise result
        if result is None:
            raise RedisResponseError("EXECABORT the transaction was discarded")
        return list(result)

    def script(self, text: str, *, idempotent: bool = False) -> Script:
        return Script(self, text, idempotent=idempotent)


class Script:
    """A Lua script run by SHA once Redis has it (after a SCRIPT FLUSH too)."""

    def __init__(self, client: RespClient, text: str, *, idempotent: bool = False) -> None:
        self._client = client
        self.text = text
        self.sha: str | None = None  # Redis's SHA1 of the text, once loaded
        self.idempotent = idempotent

    def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        return raise_error(self.many([(keys, args)])[0])

    def many(self, calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]]) -> list[Any]:
        """Run the script once per (keys, args), all in one round trip (one per node).

        Replies come back as values, error replies included (not raised).
        """
        run = ScriptRun(self.text, self.sha, calls)
        if run.first:
            run.took_first(self._client.round_trip(run.first, idempotent=self.idempotent))
        if run.second:
            run.took_second(self._client.round_trip(run.second, idempotent=self.idempotent))
        self.sha = run.sha
        return run.replies


def from_url(url: str, *, cluster: str = "auto", **options: Any) -> RespClient:
    """A :class:`RespClient` for ``url`` (no I/O until the first command).

    ``cluster``: ``auto`` (ask the server), ``yes`` or ``no`` (RHAILAMBDA_REDIS_CLUSTER).
    """
    address = dataclasses.replace(parse_url(url), cluster=cluster)
    return RespClient(address, **options)
