"""The test servers themselves: both kinds, standalone and clustered, migration, failover.

These run on every backend (they start their own servers and clusters), once per
server kind. One cluster of each shape per kind is shared by the module: the tests
that change its topology (a migration, a failover) leave it settled and find the
current owners and roles afresh.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
import redis
from redis_cluster import N_SLOTS, ClusterUnderTest, key_slot
from redis_server import CLUSTER_BUS_OFFSET, RedisServer, ServerKind, free_port

KINDS = ["redis", "valkey"]


def raw(port: int, *commands: tuple[str, ...]) -> list[str]:
    """Send commands on one connection; the replies as the server wrote them (RESP2
    scalars: ``-MOVED 1 127.0.0.1:2``, ``+OK``, ``:1``, a bulk string, or None)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        stream = sock.makefile("rb")
        for args in commands:
            frame = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
            sock.sendall(frame.encode())
        replies: list[str] = []
        for _ in commands:
            line = stream.readline().decode().rstrip("\r\n")
            if line.startswith("$"):
                size = int(line[1:])
                line = stream.read(size + 2).decode()[:-2] if size >= 0 else "(nil)"
            replies.append(line)
        return replies


@pytest.fixture(scope="module", params=KINDS)
def one_node(request: pytest.FixtureRequest) -> Iterator[ClusterUnderTest]:
    with ClusterUnderTest(request.param, masters=1) as cluster:
        yield cluster


@pytest.fixture(scope="module", params=KINDS)
def three_masters(request: pytest.FixtureRequest) -> Iterator[ClusterUnderTest]:
    with ClusterUnderTest(request.param, masters=3, replicas_per_master=1) as cluster:
        yield cluster


@pytest.fixture
def cluster3(three_masters: ClusterUnderTest) -> ClusterUnderTest:
    three_masters.flushall()
    return three_masters


def test_free_ports_leave_room_for_the_cluster_bus() -> None:
    ports = {free_port() for _ in range(50)}
    assert len(ports) == 50
    assert all(p >= 20000 and p + CLUSTER_BUS_OFFSET <= 65535 for p in ports)


@pytest.mark.parametrize(("kind", "major"), [("redis", "7"), ("valkey", "9")])
def test_standalone_server_versions(kind: str, major: str) -> None:
    with RedisServer(kind=kind) as server:  # type: ignore[arg-type]
        client = redis.Redis.from_url(server.url, decode_responses=True)
        info = client.info("server")
        client.close()
    version_field = "valkey_version" if kind == "valkey" else "redis_version"
    assert str(info[version_field]).split(".")[0] == major
    if kind == "valkey":
        assert info.get("server_name") == "valkey"


def test_one_node_cluster_owns_every_slot_and_refuses_cross_slot(
    one_node: ClusterUnderTest,
) -> None:
    (node,) = one_node.masters()
    assert one_node.slots_of(node) == [(0, N_SLOTS - 1)]
    assert one_node.info(node)["cluster_state"] == "ok"
    assert key_slot("a") != key_slot("c")
    replies = raw(node.port, ("MSET", "a", "b", "c", "d"), ("MSET", "{t}a", "b", "{t}c", "d"))
    assert replies[0].startswith("-CROSSSLOT ")
    assert replies[1] == "+OK"  # one hash tag: one slot, fine


def test_three_masters_redirect_with_moved(cluster3: ClusterUnderTest) -> None:
    assert len(cluster3.masters()) == 3 and len(cluster3.replicas()) == 3
    key = "rhailib:some-task"
    owner = cluster3.node_for_key(key)
    other = next(m for m in cluster3.masters() if m.port != owner.port)
    assert raw(other.port, ("SET", key, "v")) == [f"-MOVED {key_slot(key)} 127.0.0.1:{owner.port}"]
    with cluster3.cluster_client() as client:  # the cluster client follows MOVED
        client.set(key, "v")
        assert client.get(key) == "v"
    assert cluster3.client(owner).get(key) == "v"


def test_half_done_migration_answers_ask_then_finishes(cluster3: ClusterUnderTest) -> None:
    tag = "{queue}"
    keys = [f"{tag}:k{i}" for i in range(10)]
    slot = key_slot(tag)
    source = cluster3.node_for_slot(slot)
    target = next(m for m in cluster3.masters() if m.port != source.port)
    src = cluster3.client(source)
    for key in keys:
        src.set(key, key)

    migration = cluster3.migrate_slot(slot, target, stop_halfway=True)
    assert migration.moved == 5 and migration.remaining() == 5
    at_source = [raw(source.port, ("GET", k))[0] for k in keys]
    moved = [k for k, reply in zip(keys, at_source, strict=True) if reply.startswith("-")]
    assert len(moved) == 5
    assert {at_source[keys.index(k)] for k in moved} == {f"-ASK {slot} 127.0.0.1:{target.port}"}
    assert sorted(set(keys) - set(moved)) == sorted(r for r in at_source if r in keys)
    # without ASKING the target still redirects to the owner; with it, it serves the key
    assert raw(target.port, ("GET", moved[0]))[0].startswith(f"-MOVED {slot} ")
    assert raw(target.port, ("ASKING",), ("GET", moved[0])) == ["+OK", moved[0]]
    with cluster3.cluster_client() as client:  # redis-py follows ASK
        assert [client.get(k) for k in keys] == keys

    migration.finish()
    assert cluster3.node_for_slot(slot).port == target.port
    assert migration.remaining() == 0
    assert raw(source.port, ("GET", keys[0])) == [f"-MOVED {slot} 127.0.0.1:{target.port}"]
    tgt = cluster3.client(target)
    assert sorted(str(k) for k in tgt.keys(f"{tag}*")) == sorted(keys)


def test_full_migration_moves_every_key(cluster3: ClusterUnderTest) -> None:
    key = "rhailib:migrate-me"
    slot = key_slot(key)
    source = cluster3.node_for_slot(slot)
    target = next(m for m in cluster3.masters() if m.port != source.port)
    cluster3.client(source).hset(key, mapping={"status": "pending"})
    cluster3.migrate_slot(slot, target, chunk=1)
    assert cluster3.client(target).hgetall(key) == {"status": "pending"}
    assert cluster3.problem() is None  # settled: every node agrees on the new owner
    assert {cluster3.owner_seen_by(node, slot).port for node in cluster3.nodes} == {target.port}


@pytest.mark.parametrize("kind", KINDS)
def test_back_to_back_migrations_leave_every_slot_with_its_target(kind: ServerKind) -> None:
    # Each slot to the first master that does not own it: targets bump their config
    # epochs in turn. A migration started before its target has heard of its source's
    # newer epoch (the slot maps agree at once, SETSLOT NODE goes to every master)
    # leaves the target claiming the slot with a lower epoch, and the source's last
    # claim takes it back: each then answers MOVED to the other, for good. wait_ok,
    # after each migration, waits for every node to agree on every node's epoch.
    with ClusterUnderTest(kind, masters=3) as cluster, cluster.cluster_client() as client:
        keys = [f"rhailib:back-to-back-{i}" for i in range(21)]
        for key in keys:
            client.set(key, key)
        for key in keys:
            slot = key_slot(key)
            owner = cluster.node_for_slot(slot)
            target = next(m for m in cluster.masters() if m.port != owner.port)
            cluster.migrate_slot(slot, target)
            assert any(lo <= slot <= hi for lo, hi in cluster.slots_of(target))  # its own claim
            assert {cluster.owner_seen_by(n, slot).port for n in cluster.nodes} == {target.port}
        assert [client.get(key) for key in keys] == keys


def test_failover_flips_roles_and_keeps_acknowledged_writes(cluster3: ClusterUnderTest) -> None:
    key = "rhailib:before-failover"
    master = cluster3.node_for_key(key)
    (replica,) = cluster3.replicas_of(master)
    client = cluster3.client(master)
    client.set(key, "kept")
    assert client.wait(1, 2000) == 1  # replicated before the failover

    promoted = cluster3.failover(master)
    assert promoted.port == replica.port
    assert cluster3.node_for_key(key).port == promoted.port
    assert cluster3.master_of(master).port == promoted.port
    assert {n.port for n in cluster3.masters()} >= {promoted.port}
    assert master.port in {n.port for n in cluster3.replicas()}
    assert cluster3.client(promoted).get(key) == "kept"
    with cluster3.cluster_client() as cc:
        assert cc.get(key) == "kept"
        cc.set(key, "after")
    assert cluster3.client(promoted).get(key) == "after"


def test_private_cluster_follows_the_backend_kind(
    private_cluster: Callable[..., ClusterUnderTest], redis_backend: str
) -> None:
    cluster = private_cluster(masters=1, replicas_per_master=0)
    assert cluster.kind == ("valkey" if redis_backend.startswith("valkey") else "redis")
    with redis.RedisCluster.from_url(cluster.url, decode_responses=True) as client:
        client.set("k", "v")
        assert client.get("k") == "v"


def test_a_killed_master_is_replaced_and_rejoins_as_a_replica(cluster3: ClusterUnderTest) -> None:
    key = "rhailib:before-crash"
    master = cluster3.node_for_key(key)
    (replica,) = cluster3.replicas_of(master)
    cluster3.client(master).set(key, "kept")
    assert cluster3.client(master).wait(1, 2000) == 1
    master.kill()  # no CLUSTER FAILOVER: the replica is elected after cluster-node-timeout
    cluster3.wait_ok()
    assert cluster3.node_for_key(key).port == replica.port
    assert cluster3.client(replica).get(key) == "kept"

    cluster3.start()  # restarts the stopped node: same port and node id (nodes.conf)
    assert cluster3.running
    assert cluster3.master_of(master).port == replica.port


def test_redis_client_matches_the_backend(
    redis_client: redis.Redis | redis.RedisCluster, redis_backend: str
) -> None:
    assert isinstance(redis_client, redis.RedisCluster) == ("cluster" in redis_backend)
    redis_client.set("k", "v")
    assert redis_client.get("k") == "v"


@pytest.mark.standalone_only("checks the marker itself")
def test_standalone_only_runs_on_standalone_backends(redis_backend: str) -> None:
    assert "cluster" not in redis_backend


@pytest.mark.cluster_only
def test_cluster_only_runs_on_cluster_backends(
    redis_backend: str, redis_cluster: ClusterUnderTest, redis_url: str
) -> None:
    assert "cluster" in redis_backend
    assert redis_url == redis_cluster.url
    assert all(m.running for m in redis_cluster.masters())
