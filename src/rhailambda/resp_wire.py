"""RESP2 on the wire for :mod:`rhailambda.resp` and :mod:`rhailambda.resp_async`.

Encoding commands, the connection handshake (AUTH, SELECT, CLIENT SETNAME in one
round trip), TLS contexts and one blocking socket connection with its hiredis
reader. Nothing here knows about pools or clusters.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import hiredis

from rhailambda.errors import RedisConnectionError, RedisResponseError, SettingError
from rhailambda.redis_url import Address

if TYPE_CHECKING:
    import ssl

__all__ = ["Arg", "Connection", "ScriptRun", "check_handshake", "encode", "handshake",
           "raise_error", "script_sha", "tls_context"]  # fmt: skip

Arg = str | bytes | int | float

_READ_SIZE = 65536


def handshake(address: Address, client_name: str | None) -> list[list[Arg]]:
    """What a new connection sends first: AUTH, SELECT, CLIENT SETNAME (as needed)."""
    commands: list[list[Arg]] = []
    password = address.iam.token() if address.iam is not None else address.password
    if password is not None:
        user = [address.username] if address.username else []
        commands.append(["AUTH", *user, password])
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
            if command[0] == "SELECT" and "cluster" in str(reply).lower():
                raise SettingError(
                    "REDIS_URL",
                    f"database {address.db} selected, but {address!r} is a Redis Cluster, "
                    "which has only database 0: drop the /N from the URL",
                )
            what = "AUTH" if command[0] == "AUTH" else f"SELECT {address.db}"
            raise RedisConnectionError(f"{what} refused by {address!r}: {reply}")


def encode(commands: Sequence[Sequence[Arg]]) -> bytes:
    """RESP arrays of bulk strings, packed by hiredis (in C: 2-3x our own loop)."""
    pack = hiredis.pack_command
    try:
        return b"".join([pack(tuple(command)) for command in commands])  # type: ignore[arg-type]
    except TypeError:
        for command in commands:
            for arg in command:
                if isinstance(arg, bool) or not isinstance(arg, str | bytes | int | float):
                    what = "a bool" if isinstance(arg, bool) else f"a {type(arg).__name__}"
                    raise TypeError(f"{what} is not a Redis argument") from None
        raise


class Connection:
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
        sock: socket.socket | None = None
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
            if sock is not None:  # a refused unix socket, a failed TLS setup: not left open
                sock.close()
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


def raise_error(reply: Any) -> Any:
    """``reply``, or raised when it is an error reply."""
    if isinstance(reply, RedisResponseError):
        raise reply
    return reply


def script_sha(text: str) -> str:
    """Redis's name for a script: the SHA1 of its text (CPython's own ``_sha1``, not
    OpenSSL's, whose load through hashlib is 6-8 ms of a cold start)."""
    try:
        import _sha1  # type: ignore[import-not-found]
    except ImportError:  # an interpreter without it
        import hashlib

        return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
    return str(_sha1.sha1(text.encode()).hexdigest())


class ScriptRun:
    """One batch of calls of a Lua script, sans I/O (for the sync and asyncio clients).

    With the SHA known, :attr:`first` holds an EVALSHA per call; the calls that came
    back NOSCRIPT go in :attr:`second` as SCRIPT LOAD + EVAL pairs: EVAL runs the text
    (and caches it), SCRIPT LOAD in the same write confirms its SHA, and each SCRIPT
    LOAD travels with the EVAL after it, to the same cluster node.

    With no SHA yet (a new process), the first call goes as SCRIPT LOAD + EVAL and the
    others as EVALSHA of the SHA computed here, in the same write: on one node (and on
    every node that had the script) that is the only round trip, and the script's text
    travels once, not once per call (a cluster batch is one call per slot).
    """

    def __init__(
        self, text: str, sha: str | None, calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]]
    ) -> None:
        self._text = text
        self._tails = [[len(keys), *keys, *args] for keys, args in calls]
        self.replies: list[Any] = [None] * len(self._tails)
        self._todo: list[int] = []
        self.first: list[list[Arg]] = []
        self._loading = sha is None and bool(self._tails)
        if self._loading:
            rest = script_sha(text) if len(self._tails) > 1 else ""
            self.first = [["SCRIPT", "LOAD", text], ["EVAL", text, *self._tails[0]]]
            self.first += [["EVALSHA", rest, *t] for t in self._tails[1:]]
        elif sha is not None:
            self.first = [["EVALSHA", sha, *t] for t in self._tails]
        self.sha = sha

    def took_first(self, got: Sequence[Any]) -> None:
        if self._loading:
            loaded, *got = got
            if isinstance(loaded, str):  # an ACL may refuse SCRIPT: EVAL every time then
                self.sha = loaded
        for i, reply in enumerate(got):
            self.replies[i] = reply
            if isinstance(reply, RedisResponseError) and reply.code == "NOSCRIPT":
                self._todo.append(i)

    @property
    def second(self) -> list[list[Arg]]:
        commands: list[list[Arg]] = []
        for i in self._todo:
            commands += [["SCRIPT", "LOAD", self._text], ["EVAL", self._text, *self._tails[i]]]
        return commands

    def took_second(self, got: Sequence[Any]) -> None:
        for k, i in enumerate(self._todo):
            loaded, self.replies[i] = got[2 * k], got[2 * k + 1]
            if isinstance(loaded, str):
                self.sha = loaded
