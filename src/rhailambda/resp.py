"""The function's Redis client: synchronous, small, fast to import.

Why not redis-py here: ``import redis`` (8.x) always imports asyncio, ssl and
importlib.metadata, 85-160 ms on this kind of machine, more than half of a Lambda
cold start. The function needs only a few commands (two Lua scripts per batch,
a handful for circle data), so it speaks RESP2 itself over a socket and leaves the
protocol parsing to hiredis (the C parser redis-py uses too). The client uses it
too; the shim keeps redis-py but for its takers and acks (:mod:`rhailambda.resp_async`).

What it does:

* URLs as redis-py reads them (:mod:`rhailambda.redis_url`): redis://, rediss://
  (TLS, the certificate verified) and unix://, with AUTH users and a database.
* AUTH, SELECT and CLIENT SETNAME in one round trip per new connection.
* A small pool (thread-safe; reset after ``fork``). A connection idle for
  ``health_check_s`` is checked with a PING before use, so a connection Redis or
  a NAT dropped while a Lambda sandbox was frozen is replaced, not failed on.
* A command that fails on a broken connection is NOT re-sent unless the caller
  says it is idempotent: a lost reply may hide a command that ran.
* :class:`Script`: the first call sends SCRIPT LOAD and EVAL together (one round
  trip, and the SHA comes from Redis: no hashlib, whose OpenSSL load alone is
  6-8 ms of a cold start); later calls send EVALSHA, and EVAL again on NOSCRIPT.
* Replies: bulk strings decoded as UTF-8 (invalid bytes replaced, so one bad
  field gives a task an error reply instead of failing the batch), integers as
  int, nil as None, error replies inside arrays as :class:`RedisResponseError`
  values, a top-level error reply raised.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import hiredis

from rhailambda.errors import RedisConnectionError, RedisResponseError
from rhailambda.redis_url import Address, parse_url

if TYPE_CHECKING:
    import ssl

__all__ = [
    "Address",
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

Arg = str | bytes | int | float

_READ_SIZE = 65536


def handshake(address: Address, client_name: str | None) -> list[list[Arg]]:
    """What a new connection sends first: AUTH, SELECT, CLIENT SETNAME (as needed)."""
    commands: list[list[Arg]] = []
    if address.password is not None:
        user = [address.username] if address.username else []
        commands.append(["AUTH", *user, address.password])
    if address.db:
        commands.append(["SELECT", address.db])
    if client_name:
        commands.append(["CLIENT", "SETNAME", client_name])
    return commands


def check_handshake(address: Address, commands: list[list[Arg]], replies: list[Any]) -> None:
    """Raise RedisConnectionError if AUTH or SELECT was refused (never with the password).

    A refused CLIENT SETNAME is let go: the name is a courtesy, and an ACL without
    CLIENT must not stop the function.
    """
    for command, reply in zip(commands, replies, strict=True):
        if isinstance(reply, RedisResponseError) and command[0] != "CLIENT":
            what = "AUTH" if command[0] == "AUTH" else f"SELECT {address.db}"
            raise RedisConnectionError(f"{what} refused by {address!r}: {reply}")


def encode(commands: Sequence[Sequence[Arg]]) -> bytes:
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, bool):
                raise TypeError("a bool is not a Redis argument: send 0 or 1")
            elif isinstance(arg, int | float):
                data = repr(arg).encode()
            else:
                raise TypeError(f"a {type(arg).__name__} is not a Redis argument")
            out.append(b"$%d\r\n" % len(data))
            out.append(data)
            out.append(b"\r\n")
    return b"".join(out)


class _Connection:
    """One socket plus its reply parser; used by one thread at a time."""

    def __init__(self, address: Address, client_name: str | None) -> None:
        self.address = address
        self.closed = False
        self._reader = hiredis.Reader(
            replyError=RedisResponseError, encoding="utf-8", errors="replace"
        )
        self._sock = self._connect()
        self.last_used = time.monotonic()
        commands = handshake(address, client_name)
        if commands:
            try:
                check_handshake(address, commands, self.round_trip(commands))
            except RedisConnectionError:
                self.close()
                raise

    def _connect(self) -> socket.socket:
        a = self.address
        try:
            if a.unix_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(a.connect_timeout_s)
                sock.connect(a.unix_path)
            else:
                sock = socket.create_connection((a.host, a.port), timeout=a.connect_timeout_s)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if a.tls:
                sock = _wrap_tls(sock, a)
            sock.settimeout(a.socket_timeout_s)
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis at {a!r}: {exc}") from exc
        return sock

    def round_trip(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send the commands in one write, read one reply per command."""
        try:
            self._sock.sendall(encode(commands))
            replies: list[Any] = []
            reader, sock = self._reader, self._sock
            while len(replies) < len(commands):
                reply = reader.gets()
                if reply is False:
                    data = sock.recv(_READ_SIZE)
                    if not data:
                        raise RedisConnectionError("Redis closed the connection")
                    reader.feed(data)
                    continue
                replies.append(reply)
        except TimeoutError as exc:
            self.close()
            raise RedisConnectionError(
                f"no reply from Redis within {self.address.socket_timeout_s:g} s"
            ) from exc
        except (OSError, hiredis.ProtocolError, RedisConnectionError) as exc:
            self.close()
            if isinstance(exc, RedisConnectionError):
                raise
            raise RedisConnectionError(f"connection to Redis broke: {exc}") from exc
        except BaseException:
            self.close()  # interrupted (Ctrl-C): a reply still due would answer the next call
            raise
        self.last_used = time.monotonic()
        return replies

    def readable(self) -> bool:
        """True if the idle socket has something to read: Redis closed it (EOF) or sent
        stray bytes. Either way it is unfit, and nothing was sent on it yet."""
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([self._sock], [], [], 0)[0])

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.close()


def tls_context(a: Address) -> ssl.SSLContext:
    """The TLS settings of ``a``: verified against the system's CAs (or ``tls_ca_file``)."""
    import ssl  # only TLS deployments pay its import

    context = ssl.create_default_context(cafile=a.tls_ca_file)
    if not a.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not a.tls_check_hostname:
        context.check_hostname = False
    return context


def _wrap_tls(sock: socket.socket, a: Address) -> socket.socket:
    hostname = a.host if a.unix_path is None else None
    return tls_context(a).wrap_socket(sock, server_hostname=hostname)


class RespClient:
    """A thread-safe synchronous Redis client over a small connection pool."""

    def __init__(
        self,
        address: Address,
        *,
        client_name: str | None = "rhailambda-function",
        health_check_s: float = 30.0,
        max_idle: int = 8,
    ) -> None:
        self.address = address
        self._client_name = client_name
        self._health_check_s = health_check_s
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"RespClient({self.address!r})"

    # --- the pool --------------------------------------------------------------
    def _take(self) -> _Connection:
        with self._lock:
            if self._pid != os.getpid():  # forked: the sockets belong to the parent
                self._idle.clear()
                self._pid = os.getpid()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            return _Connection(self.address, self._client_name)
        if conn.readable():  # closed by Redis while idle (its timeout, CLIENT KILL, ...)
            conn.close()
            return _Connection(self.address, self._client_name)
        if time.monotonic() - conn.last_used > self._health_check_s:
            try:
                conn.round_trip([["PING"]])
            except RedisConnectionError:
                return _Connection(self.address, self._client_name)
        return conn

    def _give_back(self, conn: _Connection) -> None:
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

    def __enter__(self) -> RespClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- commands --------------------------------------------------------------
    def round_trip(
        self, commands: Sequence[Sequence[Arg]], *, idempotent: bool = False
    ) -> list[Any]:
        """One write, one reply per command; error replies come back as values.

        On a broken connection the commands are re-sent once on a new connection
        only when ``idempotent``: otherwise a lost reply could hide a command that ran.
        """
        conn = self._take()
        try:
            return conn.round_trip(commands)
        except RedisConnectionError:
            if not idempotent:
                raise
            conn = _Connection(self.address, self._client_name)
            return conn.round_trip(commands)
        finally:
            self._give_back(conn)

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
        transaction Redis refused as a whole (EXECABORT) is raised.
        """
        if not transaction:
            return self.round_trip(commands, idempotent=idempotent)
        replies = self.round_trip([["MULTI"], *commands, ["EXEC"]], idempotent=idempotent)
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
        tail = [len(keys), *keys, *args]
        run = self._client.round_trip
        if self.sha is not None:
            (reply,) = run([["EVALSHA", self.sha, *tail]], idempotent=self.idempotent)
            if not (isinstance(reply, RedisResponseError) and reply.code == "NOSCRIPT"):
                return raise_error(reply)
        # EVAL runs the text (and caches it); SCRIPT LOAD in the same write names its SHA.
        loaded, reply = run(
            [["SCRIPT", "LOAD", self.text], ["EVAL", self.text, *tail]],
            idempotent=self.idempotent,
        )
        if isinstance(loaded, str):  # an ACL may refuse SCRIPT: EVAL every time then
            self.sha = loaded
        return raise_error(reply)


def raise_error(reply: Any) -> Any:
    """``reply``, or raised when it is an error reply."""
    if isinstance(reply, RedisResponseError):
        raise reply
    return reply


def from_url(url: str, **options: Any) -> RespClient:
    """A :class:`RespClient` for ``url`` (no I/O until the first command)."""
    return RespClient(parse_url(url), **options)
