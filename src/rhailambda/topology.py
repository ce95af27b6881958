"""Where each command goes: standalone Redis or a cluster's slot owners (sans I/O).

Shared by the synchronous client (:mod:`rhailambda.resp`) and the asyncio one
(:mod:`rhailambda.resp_async`), which do the I/O. The mode is ``auto`` (found at
the first connection: ``CLUSTER SLOTS`` answers on a cluster node, and an error,
``cluster support disabled``, on a standalone server), ``yes`` or ``no``.

Routing rules:

* a command with keys goes to the master of their slot (all keys of one command
  share a slot: callers split work by slot);
* a keyless command (``SCRIPT LOAD``, ``MULTI``, ``EXEC``, ``ASKING``) travels with
  the next keyed command of the same round trip, else with the previous one;
* commands to one node keep their order; commands to different nodes have none,
  so a caller that needs "A before B" across slots waits for A's reply first.

Replies: ``MOVED`` updates the slot and marks the map for a refresh; ``ASK`` sends
``ASKING`` plus the command to the importing node once; ``TRYAGAIN`` (a multi-key
command mid-migration) and ``CLUSTERDOWN`` wait a little and go again. A command
that got any of these did not run, so re-sending it is always safe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from rhailambda.errors import RedisResponseError
from rhailambda.redis_url import Address
from rhailambda.slots import Node, Redirect, SlotMap, command_slot, parse_redirect

__all__ = ["RETRY_CODES", "Topology"]

MAX_REDIRECTS = 16
#: error codes after which the command is sent again (it did not run)
RETRY_CODES = frozenset({"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"})
MODES = ("auto", "yes", "no")


class Topology:
    """A client's view of the deployment: standalone, or a cluster's slot map."""

    def __init__(self, seed: Address) -> None:
        if seed.cluster not in MODES:
            raise ValueError(f"cluster mode must be one of {MODES}, got {seed.cluster!r}")
        self.seed = seed
        self.seed_node = Node(seed.host, seed.port)
        self.cluster: bool | None = {"yes": True, "no": False}.get(seed.cluster)
        self.map: SlotMap | None = None
        self.stale = self.cluster is True

    @property
    def known(self) -> bool:
        return self.cluster is not None and not self.stale

    def address(self, node: Node) -> Address:
        if node == self.seed_node:
            return self.seed
        return dataclasses.replace(self.seed, host=node.host, port=node.port)

    def refresh_nodes(self) -> list[Node]:
        """Whom to ask for the slot map: the seed first, then every node we know."""
        known = self.map.nodes() if self.map is not None else []
        return list(dict.fromkeys([self.seed_node, *known]))

    def learn(self, reply: Any) -> None:
        """Take a ``CLUSTER SLOTS`` reply (or the error a standalone server gives)."""
        if isinstance(reply, RedisResponseError) or not isinstance(reply, list):
            if self.seed.cluster == "yes":
                raise RedisResponseError(f"RHAILAMBDA_REDIS_CLUSTER=yes; CLUSTER SLOTS: {reply}")
            self.cluster = False
            self.stale = False
            return
        if self.seed.unix_path is not None:
            raise RedisResponseError("a Redis Cluster cannot be reached over a unix socket")
        self.cluster = True
        self.map = SlotMap.parse(reply, self.seed.host)
        self.stale = not self.map.complete

    def owner(self, slot: int | None) -> Node:
        if slot is None or self.map is None:
            return self.seed_node
        return self.map.owner(slot) or self.seed_node

    def plan(
        self, commands: Sequence[Sequence[Any]], targets: dict[int, Node] | None = None
    ) -> dict[Node, list[int]]:
        """Command indexes grouped by node, in order; ``targets`` overrides (ASK)."""
        slots = [command_slot(c) for c in commands]
        nodes: list[Node | None] = [
            (targets or {}).get(i) or (self.owner(s) if s is not None else None)
            for i, s in enumerate(slots)
        ]
        following: Node | None = None
        for i in range(len(nodes) - 1, -1, -1):  # keyless: with the next keyed command
            if nodes[i] is None:
                nodes[i] = following
            else:
                following = nodes[i]
        previous: Node | None = None
        for i, node in enumerate(nodes):  # ... else with the previous one
            if node is None:
                nodes[i] = previous
            previous = nodes[i]
        groups: dict[Node, list[int]] = {}
        for i, node in enumerate(nodes):
            groups.setdefault(node or self.seed_node, []).append(i)
        return groups

    def redirected(self, reply: Any, node: Node) -> Redirect | str | None:
        """What to do about ``reply``: a Redirect, "retry" (TRYAGAIN / CLUSTERDOWN), or None."""
        if not isinstance(reply, RedisResponseError) or reply.code not in RETRY_CODES:
            return None
        if reply.code in ("TRYAGAIN", "CLUSTERDOWN"):
            self.stale = self.stale or reply.code == "CLUSTERDOWN"
            return "retry"
        redirect = parse_redirect(str(reply), node.host)
        if redirect is None:
            return None
        if redirect.kind == "MOVED":
            if self.map is not None:
                self.map.moved(redirect.slot, redirect.node)
            self.stale = True  # one slot moved: others may have too (failover, resharding)
        return redirect
