"""A real Redis Cluster (Redis 7 or Valkey 9) for tests, on loopback ports.

:class:`ClusterUnderTest` starts ``masters`` cluster-mode nodes (plus
``replicas_per_master`` replicas of each) of one kind, joins them, and waits until
every node says ``cluster_state:ok``, knows every other node and agrees on the slot
map and the roles. Joining is done with cluster commands, no ``redis-cli`` needed:

1. ``CLUSTER SET-CONFIG-EPOCH`` i+1 on node i (distinct epochs: no collision round);
2. ``CLUSTER ADDSLOTSRANGE``: one node takes 0-16383, several masters split it evenly;
3. ``CLUSTER MEET`` from the first node to every other one, until all know all;
4. ``CLUSTER REPLICATE`` on each replica, then wait for its replication link.

Then the topology helpers the cluster tests need: :meth:`~ClusterUnderTest.migrate_slot`
(the live resharding dance, or half of it, to see ASK), :meth:`~ClusterUnderTest.failover`
(``CLUSTER FAILOVER`` on a replica), :meth:`~ClusterUnderTest.flushall`. Every wait polls
with a deadline. :meth:`~ClusterUnderTest.close` stops and reaps every node.

The object quacks like :class:`redis_server.RedisServer` where the session fixture
needs it (``url``, ``running``, ``start()``, ``close()``): ``url`` is the seed, the
first master.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import redis
import redis.crc
from redis_server import RedisServer, ServerKind

__all__ = ["N_SLOTS", "ClusterUnderTest", "SlotMigration", "key_slot"]

N_SLOTS = 16384
_POLL_S = 0.05  # polling the servers' own state, not synchronising tests
_MIGRATE_TIMEOUT_MS = 5000


def key_slot(key: str | bytes) -> int:
    """The cluster slot of a key (CRC16 of the hash tag or the key, mod 16384)."""
    return int(redis.crc.key_slot(key.encode() if isinstance(key, str) else key))


def _split_slots(n: int) -> list[tuple[int, int]]:
    """``n`` contiguous ranges covering 0..16383, as even as redis-cli makes them."""
    bounds = [round(i * N_SLOTS / n) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(n)]


@dataclass(frozen=True)
class _NodeLine:
    """One line of ``CLUSTER NODES``."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    config_epoch: int
    slots: tuple[tuple[int, int], ...]  # owned ranges (not the [migrating] annotations)
    migrating: dict[int, str] = field(default_factory=dict)  # slot -> target id
    importing: dict[int, str] = field(default_factory=dict)  # slot -> source id

    @property
    def role(self) -> str:
        return "master" if "master" in self.flags else "replica"

    @property
    def healthy(self) -> bool:
        return not self.flags & {"fail", "fail?", "handshake", "noaddr"}


def _parse_nodes(text: str) -> list[_NodeLine]:
    lines = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) < 8:
            continue
        addr = parts[1].split("@", 1)[0]
        port = int(addr.rsplit(":", 1)[1]) if ":" in addr else 0
        slots: list[tuple[int, int]] = []
        migrating: dict[int, str] = {}
        importing: dict[int, str] = {}
        for token in parts[8:]:
            if token.startswith("["):
                slot, arrow, peer = token.strip("[]").partition("-")
                target = migrating if arrow and peer.startswith(">") else importing
                target[int(slot)] = peer[2:]
            elif "-" in token:
                lo, hi = token.split("-", 1)
                slots.append((int(lo), int(hi)))
            else:
                slots.append((int(token), int(token)))
        lines.append(
            _NodeLine(
                node_id=parts[0],
                port=port,
                flags=frozenset(parts[2].split(",")),
                master_id=None if parts[3] == "-" else parts[3],
                config_epoch=int(parts[6]),
                slots=tuple(sorted(slots)),
                migrating=migrating,
                importing=importing,
            )
        )
    return lines


def _myself(lines: Iterable[_NodeLine]) -> _NodeLine:
    for line in lines:
        if "myself" in line.flags:
            return line
    raise RuntimeError("CLUSTER NODES without a myself line")


class ClusterUnderTest:
    """``masters`` masters with ``replicas_per_master`` replicas each, of one server kind."""

    def __init__(
        self,
        kind: ServerKind = "redis",
        masters: int = 3,
        replicas_per_master: int = 0,
        *,
        cluster_node_timeout_ms: int = 2000,
        extra_args: tuple[str, ...] = (),
        timeout_s: float = 30.0,
    ) -> None:
        if masters < 1 or replicas_per_master < 0:
            raise ValueError("need at least one master and no negative replica count")
        self.kind: ServerKind = kind
        self.n_masters = masters
        self.replicas_per_master = replicas_per_master
        self.timeout_s = timeout_s
        self.nodes: list[RedisServer] = [
            RedisServer(
                kind=kind,
                cluster=True,
                cluster_node_timeout_ms=cluster_node_timeout_ms,
                extra_args=extra_args,
            )
            for _ in range(masters * (1 + replicas_per_master))
        ]
        self._ids: dict[int, str] = {}  # port -> node id (stable: nodes.conf survives restarts)
        self._clients: dict[tuple[int, bool], redis.Redis] = {}
        self._joined = False
        self.start_seconds: float | None = None  # how long the first start() took

    # -- addresses -----------------------------------------------------------------

    @property
    def seed(self) -> RedisServer:
        """A running master (the first one, unless a failover or crash changed that)."""
        for node in self.nodes:
            if node.running and self._role(node) == "master":
                return node
        raise RuntimeError("no running master")

    @property
    def url(self) -> str:
        """A redis:// URL of one master: a cluster client discovers the rest from it."""
        return self.seed.url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def running(self) -> bool:
        return self._joined and all(node.running for node in self.nodes)

    def __repr__(self) -> str:
        ports = ",".join(str(node.port) for node in self.nodes)
        return f"<ClusterUnderTest {self.kind} {self.n_masters}x{self.replicas_per_master} {ports}>"

    # -- per-node access -----------------------------------------------------------

    def client(self, node: RedisServer, *, decode: bool = True) -> redis.Redis:
        """A plain (non-cluster) client of one node, cached; it reconnects after restarts."""
        key = (node.port, decode)
        found = self._clients.get(key)
        if found is None:
            found = redis.Redis(
                host="127.0.0.1",
                port=node.port,
                decode_responses=decode,
                socket_timeout=10,
                socket_connect_timeout=2,
            )
            self._clients[key] = found
        return found

    def cluster_client(self, **kwargs: Any) -> redis.RedisCluster:
        """A redis-py cluster client seeded with every node (the caller closes it)."""
        from redis.cluster import ClusterNode

        kwargs.setdefault("decode_responses", True)
        kwargs.setdefault("socket_timeout", 10)
        startup = [ClusterNode("127.0.0.1", node.port) for node in self.nodes if node.running]
        return redis.RedisCluster(startup_nodes=startup, **kwargs)

    def _cmd(self, node: RedisServer, *args: Any) -> Any:
        return self.client(node).execute_command(*args)

    def node_id(self, node: RedisServer) -> str:
        found = self._ids.get(node.port)
        if found is None:
            found = str(self._cmd(node, "CLUSTER", "MYID"))
            self._ids[node.port] = found
        return found

    def node_by_id(self, node_id: str) -> RedisServer:
        for node in self.nodes:
            if self.node_id(node) == node_id:
                return node
        raise KeyError(node_id)

    def _nodes_view(self, node: RedisServer) -> list[_NodeLine]:
        return _parse_nodes(str(self._cmd(node, "CLUSTER", "NODES")))

    def _role(self, node: RedisServer) -> str:
        role = self._cmd(node, "ROLE")[0]
        return "master" if role == "master" else "replica"

    def masters(self) -> list[RedisServer]:
        """The running nodes that are masters now (roles change on failover)."""
        return [n for n in self.nodes if n.running and self._role(n) == "master"]

    def replicas(self) -> list[RedisServer]:
        """The running nodes that are replicas now."""
        return [n for n in self.nodes if n.running and self._role(n) == "replica"]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        master_id = self.node_id(master)
        view = self._nodes_view(self.seed if master.running else self.masters()[0])
        ports = {line.port for line in view if line.master_id == master_id}
        return [n for n in self.nodes if n.port in ports and n.running]

    def master_of(self, replica: RedisServer) -> RedisServer:
        mine = _myself(self._nodes_view(replica))
        if mine.master_id is None:
            raise ValueError(f"{replica} is a master")
        return self.node_by_id(mine.master_id)

    def info(self, node: RedisServer) -> dict[str, str]:
        """``CLUSTER INFO`` of one node as a dict."""
        text = str(self._cmd(node, "CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    # -- slots -----------------------------------------------------------------------

    @staticmethod
    def key_slot(key: str | bytes) -> int:
        return key_slot(key)

    def slots_of(self, node: RedisServer) -> list[tuple[int, int]]:
        """The slot ranges a master claims itself (its own ``myself`` line)."""
        return list(_myself(self._nodes_view(node)).slots)

    def node_for_slot(self, slot: int) -> RedisServer:
        """The master that owns ``slot`` (by its own claim: authoritative mid-migration)."""
        for node in self.masters():
            if any(lo <= slot <= hi for lo, hi in self.slots_of(node)):
                return node
        raise LookupError(f"no running master owns slot {slot}")

    def owner_seen_by(self, node: RedisServer, slot: int) -> RedisServer:
        """The master that ``node`` believes owns ``slot`` (its gossip view)."""
        for line in self._nodes_view(node):
            if any(lo <= slot <= hi for lo, hi in line.slots):
                return self.node_by_id(line.node_id)
        raise LookupError(f"{node} knows no owner of slot {slot}")

    def node_for_key(self, key: str | bytes) -> RedisServer:
        return self.node_for_slot(key_slot(key))

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> ClusterUnderTest:
        """Start and join (first call), or restart stopped nodes; then wait for ok."""
        begun = time.monotonic()
        try:
            for node in self.nodes:
                node.start()
            if not self._joined:
                self._join()
                self._joined = True
            self.wait_ok()
        except BaseException:
            if not self._joined:
                self.close()
            raise
        if self.start_seconds is None:
            self.start_seconds = time.monotonic() - begun
        return self

    def _join(self) -> None:
        masters = self.nodes[: self.n_masters]
        for epoch, node in enumerate(self.nodes, start=1):
            self._cmd(node, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for node, (lo, hi) in zip(masters, _split_slots(self.n_masters), strict=True):
            self._cmd(node, "CLUSTER", "ADDSLOTSRANGE", lo, hi)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self._cmd(first, "CLUSTER", "MEET", "127.0.0.1", node.port)
        all_ids = {self.node_id(node) for node in self.nodes}

        def everyone_known() -> str | None:
            for node in self.nodes:
                known = {line.node_id for line in self._nodes_view(node) if line.healthy}
                if not all_ids <= known:
                    return f"{node} knows {len(known & all_ids)}/{len(all_ids)} nodes"
            return None

        self._wait(everyone_known, "nodes meet")
        replicas = self.nodes[self.n_masters :]
        for i, replica in enumerate(replicas):
            master = masters[i % self.n_masters]
            self._cmd(replica, "CLUSTER", "REPLICATE", self.node_id(master))

    def _wait(self, probe: Any, what: str, timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            try:
                problem = probe()
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"{n}: {n.log_tail(600)}" for n in self.nodes)
                raise RuntimeError(f"{self!r}: {what} timed out: {problem}\n{logs}")
            time.sleep(_POLL_S)

    def problem(self) -> str | None:
        """Why the cluster is not settled yet, or None when it is.

        Settled: every running node says ``cluster_state:ok``, sees every other running
        node healthy and every slot owned by a running master, and all agree on the slot
        map, on each running node's role and master and on each one's config epoch; every
        replica's link to a running master is up. (So after a master is killed, settled
        means its replica has taken over.)

        The epochs matter for the next migration: its target claims the slot with its
        own epoch, bumped only if that is not already the highest the target knows of.
        The slot maps agree as soon as SETSLOT NODE reached every master, before gossip
        has carried a bumped epoch; a target that has not heard of its source's newer
        epoch keeps a lower one, and the source's last claim of the slot (a ping sent
        before its own SETSLOT, or another node's UPDATE) takes the slot back from it:
        then the target sends MOVED to the source and the others send MOVED to the
        target, for good.
        """
        running = [n for n in self.nodes if n.running]
        running_ids = {self.node_id(n) for n in running}
        signatures: dict[Any, RedisServer] = {}
        for node in running:
            state = self.info(node).get("cluster_state")
            if state != "ok":
                return f"{node}: cluster_state:{state}"
            view = self._nodes_view(node)
            healthy = {line.node_id: line for line in view if line.healthy}
            missing = running_ids - healthy.keys()
            if missing:
                return f"{node} does not see {sorted(missing)} healthy"
            slot_map = tuple(sorted((r, line.node_id) for line in view for r in line.slots))
            orphaned = [r for r, owner in slot_map if owner not in running_ids]
            if orphaned:  # its owner is down and not yet replaced (a failover is due)
                return f"{node}: slots {orphaned[0][0]}-{orphaned[0][1]} owned by a stopped node"
            roles = tuple(
                sorted(
                    (
                        i,
                        healthy[i].role,
                        healthy[i].master_id if healthy[i].role != "master" else None,
                    )
                    for i in running_ids
                )
            )
            epochs = tuple(sorted((i, healthy[i].config_epoch) for i in running_ids))
            signatures.setdefault((slot_map, roles, epochs), node)
            mine = _myself(view)
            if mine.role == "replica" and mine.master_id in running_ids:
                link = self.client(node).info("replication").get("master_link_status")
                if link != "up":
                    return f"{node}: replication link {link}"
        if len(signatures) > 1:
            return f"nodes disagree on slots/roles/epochs: {len(signatures)} views"
        return None

    def wait_ok(self, timeout_s: float | None = None) -> None:
        """Poll until :meth:`problem` is None, or raise with the last problem and logs."""
        self._wait(self.problem, "cluster ok", timeout_s)

    def flushall(self) -> None:
        """FLUSHALL on every running master (replicas follow by replication)."""
        for node in self.masters():
            self.client(node).flushall()

    def stop(self) -> None:
        """Stop every node (SIGTERM, all at once, then reap each)."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for node in self.nodes:
            proc = node._proc
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for node in self.nodes:
            node.stop()

    def close(self) -> None:
        self.stop()
        for node in self.nodes:
            node.close()

    def __enter__(self) -> ClusterUnderTest:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- topology changes ----------------------------------------------------------------

    def start_migration(self, slot: int, to_node: RedisServer) -> SlotMigration:
        """SETSLOT IMPORTING on the target, MIGRATING on the source; no key moved yet.

        From here on the source answers ASK for keys of the slot it no longer has.
        """
        source = self.node_for_slot(slot)
        if source.port == to_node.port:
            raise ValueError(f"slot {slot} is already on {to_node}")
        self._cmd(to_node, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        self._cmd(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(to_node))
        return SlotMigration(self, slot, source, to_node)

    def migrate_slot(
        self,
        slot: int,
        to_node: RedisServer,
        *,
        stop_halfway: bool = False,
        chunk: int = 100,
    ) -> SlotMigration:
        """Move ``slot`` (and its keys) to the master ``to_node``, live.

        ``stop_halfway``: move half of the slot's keys and return, the slot left
        MIGRATING on the source and IMPORTING on the target (moved keys draw ASK);
        call :meth:`SlotMigration.finish` to complete it.
        """
        migration = self.start_migration(slot, to_node)
        if stop_halfway:
            count = int(self._cmd(migration.source, "CLUSTER", "COUNTKEYSINSLOT", slot))
            migration.move_keys(limit=count // 2, chunk=chunk)
        else:
            migration.finish(chunk=chunk)
        return migration

    def migrate_slots(self, slots: Iterable[int], to_node: RedisServer) -> None:
        """Move several slots to ``to_node``, one after the other."""
        for slot in slots:
            if self.node_for_slot(slot).port != to_node.port:
                self.migrate_slot(slot, to_node)

    def failover(self, master: RedisServer, *, mode: str | None = None) -> RedisServer:
        """``CLUSTER FAILOVER [FORCE|TAKEOVER]`` on a replica of ``master``; returns it.

        Waits until the replica is a master, the old master (if running) its replica,
        and the cluster settled. ``mode=None`` is the coordinated failover (no write
        lost); use ``FORCE`` when the master is down.
        """
        candidates = self.replicas_of(master)
        if not candidates:
            raise ValueError(f"{master} has no running replica")
        replica = candidates[0]
        args: list[Any] = ["CLUSTER", "FAILOVER"]
        if mode:
            args.append(mode)
        self._cmd(replica, *args)
        replica_id = self.node_id(replica)

        def switched() -> str | None:
            if self._role(replica) != "master":
                return f"{replica} still a replica"
            if master.running:
                mine = _myself(self._nodes_view(master))
                if mine.role != "replica" or mine.master_id != replica_id:
                    return f"{master} not yet a replica of {replica}"
            return self.problem()

        self._wait(switched, "failover")
        return replica


@dataclass
class SlotMigration:
    """A slot moving from ``source`` to ``target`` (:meth:`ClusterUnderTest.migrate_slot`)."""

    cluster: ClusterUnderTest
    slot: int
    source: RedisServer
    target: RedisServer
    moved: int = 0
    done: bool = False

    def remaining(self) -> int:
        """Keys of the slot still on the source."""
        return int(self.cluster._cmd(self.source, "CLUSTER", "COUNTKEYSINSLOT", self.slot))

    def move_keys(self, limit: int | None = None, *, chunk: int = 100) -> int:
        """MIGRATE up to ``limit`` keys (all when None) in chunks; returns how many moved."""
        raw = self.cluster.client(self.source, decode=False)
        moved = 0
        while limit is None or moved < limit:
            want = chunk if limit is None else min(chunk, limit - moved)
            keys: Sequence[bytes] = raw.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, want)
            if not keys:
                break
            raw.execute_command(
                "MIGRATE", "127.0.0.1", self.target.port, "", 0, _MIGRATE_TIMEOUT_MS,
                "KEYS", *keys,
            )  # fmt: skip
            moved += len(keys)
        self.moved += moved
        return moved

    def finish(self, *, chunk: int = 100) -> None:
        """Move the remaining keys, then SETSLOT NODE: target first, source, other masters."""
        if self.done:
            return
        cluster = self.cluster
        while self.remaining():
            self.move_keys(chunk=chunk)
        target_id = cluster.node_id(self.target)
        order = [self.target, self.source]
        order += [m for m in cluster.masters() if m.port not in {n.port for n in order}]
        for node in order:
            cluster._cmd(node, "CLUSTER", "SETSLOT", self.slot, "NODE", target_id)
        self.done = True
        cluster.wait_ok()
