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

__all__ = ["RETRY_CODES", "Exchange", "Topology", "transaction_redirected", "transaction_slot"]

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
        """Command indexes grouped by node, in order; ``targets`` overrides (ASK).

        When one master serves every slot, everything goes there without hashing a key
        (a redirect, should a slot move, still reaches the right node).
        """
        if not targets and self.map is not None and self.map.single is not None:
            return {self.map.single: list(range(len(commands)))}
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


class Exchange:
    """One routed round trip, sans I/O: what to send to which node, and what came back.

    The sync and asyncio clients run the same loop around it::

        exchange = Exchange(topology, commands)
        while exchange.rounds_left():      # refresh the slot map first when stale
            for node, indexes, send in exchange.sends():
                exchange.absorb(node, indexes, <send's replies from node>)
            # pause a little when exchange.pause
        return exchange.replies

    Commands redirected (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) did not run, and go
    again in the next round; the rest keep their replies.
    """

    def __init__(self, topology: Topology, commands: Sequence[Sequence[Any]]) -> None:
        self._topology = topology
        self._commands = commands
        self.replies: list[Any] = [None] * len(commands)
        self._todo = list(range(len(commands)))
        self._redo: list[int] = []
        self._asking: dict[int, Node] = {}
        self._rounds = 0
        self.pause = False

    def rounds_left(self) -> bool:
        """True while some commands still wait for a (non-redirect) reply."""
        if self._rounds:
            if not self._redo:
                return False
            self._todo, self._redo = sorted(self._redo), []
        self._rounds += 1
        self.pause = False
        return self._rounds <= MAX_REDIRECTS

    def sends(self) -> list[tuple[Node, list[int], list[Sequence[Any]]]]:
        """(node, command indexes, what to write) per node, ASKING before an ASK's command."""
        targets = {j: self._asking[i] for j, i in enumerate(self._todo) if i in self._asking}
        sub = [self._commands[i] for i in self._todo]
        out = []
        for node, positions in self._topology.plan(sub, targets).items():
            send: list[Sequence[Any]] = []
            indexes = []
            for j in positions:
                i = self._todo[j]
                if i in self._asking:
                    send.append(["ASKING"])
                send.append(self._commands[i])
                indexes.append(i)
            out.append((node, indexes, send))
        return out

    def absorb(self, node: Node, indexes: Sequence[int], got: Sequence[Any]) -> None:
        """Take ``node``'s replies to the commands ``indexes`` (sent by :meth:`sends`)."""
        it = iter(got)
        for i in indexes:
            if self._asking.pop(i, None) is not None:
                next(it)  # ASKING's OK
            reply = next(it)
            self.replies[i] = reply
            what = self._topology.redirected(reply, node)
            if what is None:
                continue
            self._redo.append(i)
            if isinstance(what, Redirect) and what.kind == "ASK":
                self._asking[i] = what.node
            elif what == "retry":
                self.pause = True

    def lost(self, indexes: Sequence[int]) -> None:
        """The node's connection broke (idempotent commands only): send them again."""
        self._topology.stale = True
        self._redo += indexes
        self.pause = True


def transaction_slot(commands: Sequence[Sequence[Any]]) -> int | None:
    """The slot of a transaction: its first keyed command's (all must share it)."""
    for command in commands:
        slot = command_slot(command)
        if slot is not None:
            return slot
    return None


def transaction_redirected(topology: Topology, replies: Sequence[Any], node: Node) -> bool:
    """True if a MULTI ... EXEC sent to ``node`` was refused for a slot elsewhere."""
    return any(topology.redirected(r, node) is not None for r in replies[1:-1])
