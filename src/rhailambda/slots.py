"""Redis Cluster slots, sans I/O: key slots, co-locating tags, slot maps, redirects.

A key's slot is ``CRC16(h) mod 16384`` where ``h`` is the key's hash tag (the part
between the first ``{`` and the first ``}`` after it, when that part is not empty)
or else the whole key. :func:`tag_for` gives a ``{...}`` tag that puts another key
in the same slot as a given key, whatever characters that key holds: the protocol
keys (``rhailib:<worker>``, ``rhailib:<task>``, ``rhailib:reply:<task>``) are written
by unmodified clients, so our own keys follow them, never the other way round.

:func:`command_keys` knows where the keys sit in the commands this project sends
(routing needs nothing more); :class:`SlotMap` is a ``CLUSTER SLOTS`` reply as a
lookup table; :func:`parse_redirect` reads ``MOVED`` and ``ASK`` errors.
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_ARGS",
    "SLOTS",
    "Node",
    "Redirect",
    "SlotMap",
    "by_group",
    "command_keys",
    "hashed_part",
    "key_home",
    "key_slot",
    "parse_redirect",
    "tag_for",
]

SLOTS = 16384


def _crc16(data: bytes) -> int:
    """Redis Cluster's CRC16 (CCITT, XMODEM: polynomial 0x1021, initial value 0), which
    is what ``binascii.crc_hqx`` computes in C (the table loop in Python cost 6 us a key)."""
    return binascii.crc_hqx(data, 0)


def _as_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def hashed_part(key: str | bytes) -> bytes:
    """The bytes of ``key`` that Redis hashes: its non-empty ``{tag}``, else all of it."""
    data = _as_bytes(key)
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            return data[start + 1 : end]
    return data


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key`` (what ``CLUSTER KEYSLOT`` answers)."""
    return _crc16(hashed_part(key)) % SLOTS


@functools.lru_cache(maxsize=256)
def _slot_tag(slot: int) -> str:
    """A short name in ``slot`` (searched once per slot, only for keys that need one)."""
    n = 0
    while True:
        name = f"s{n}"
        if key_slot(name) == slot:
            return name
        n += 1


def tag_for(key: str) -> str:
    """A ``{...}`` tag that hashes like ``key``: ``f"ours:{tag_for(k)}:x"`` lives in k's slot.

    Normally the tag holds the part of ``key`` that Redis hashes, so the co-located
    key also reads well (``rhailambda:inflight:{rhailib:w1}:shim``). A key whose
    hashed part holds a ``}`` (an odd id, such as ``a}b``) cannot be quoted inside a
    tag: it gets a short tag of the same slot instead.
    """
    if "{" not in key and "}" not in key:  # the usual key: all of it is hashed (fast)
        return "{" + key + "}"
    part = hashed_part(key)
    if b"}" not in part:
        return "{" + part.decode("utf-8", "surrogateescape") + "}"
    return "{" + _slot_tag(key_slot(key)) + "}"


def key_home(key: str) -> str:
    """What a key of ours that belongs to ``key`` embeds: :func:`tag_for` (``key``'s slot),
    then ``key`` itself unless the tag already holds all of it, so that no two keys share
    a home (``{rhailib:w1}``; for ``rhailib:{w1}6f1c``, ``{w1}rhailib:{w1}6f1c``)."""
    tag = tag_for(key)
    return tag if len(tag) == len(key) + 2 and tag[1:-1] == key else tag + key


# Where the keys of a command are: (first key index, last (negative: from the end), step).
_ALL = (1, -1, 1)
_FIRST = (1, 1, 1)
_KEY_SPECS: dict[str, tuple[int, int, int]] = {
    "BLPOP": (1, -2, 1),
    "BRPOP": (1, -2, 1),
    "BLMOVE": (1, 2, 1),
    "LMOVE": (1, 2, 1),
    "RPOPLPUSH": (1, 2, 1),
    "DEL": _ALL,
    "UNLINK": _ALL,
    "EXISTS": _ALL,
    "MGET": _ALL,
    "TOUCH": _ALL,
    "WATCH": _ALL,
    "MSET": (1, -1, 2),
}
_KEYLESS = frozenset(
    {"PING", "SCRIPT", "CLUSTER", "INFO", "MULTI", "EXEC", "DISCARD", "ASKING", "AUTH",
     "SELECT", "CLIENT", "HELLO", "CONFIG", "DBSIZE", "FLUSHALL", "FLUSHDB", "READONLY",
     "TIME", "ECHO", "WAIT", "DEBUG", "MEMORY", "SLOWLOG", "FUNCTION", "ROLE"}
)  # fmt: skip


def command_keys(command: Sequence[Any]) -> list[Any]:
    """The keys of ``command`` (empty for keyless commands such as PING or SCRIPT LOAD)."""
    name = str(command[0]).upper() if command else ""
    if name in _KEYLESS or len(command) < 2:
        return []
    if name in ("EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"):
        count = int(command[2])
        return list(command[3 : 3 + count])
    first, last, step = _KEY_SPECS.get(name, _FIRST)
    end = len(command) + last + 1 if last < 0 else last + 1
    return list(command[first:end:step])


def command_slot(command: Sequence[Any]) -> int | None:
    """The one slot of ``command``'s keys, None when it has none.

    Keys of several slots raise ValueError: such a command is refused by a cluster
    (CROSSSLOT), so callers split their work by slot before sending it.
    """
    keys = command_keys(command)
    if not keys:
        return None
    slot = key_slot(keys[0])
    for key in keys[1:]:
        if key_slot(key) != slot:
            raise ValueError(f"{command[0]} spans several cluster slots")
    return slot


#: ElastiCache Serverless refuses a command of more than 3,999 arguments (the command
#: name and a script's SHA and key count included)
MAX_ARGS = 3999


def by_group(
    indexes: Iterable[int],
    keys: Sequence[str],
    group: Callable[[str], int],
    *,
    per_item: int,
    fixed: int = 0,
) -> list[list[int]]:
    """``indexes`` split by the group of ``keys[i]`` (a client's ``slot_group``), in order.

    One script call per group: on a cluster a group is a slot, on a standalone server
    everything is one group. A group whose call would pass :data:`MAX_ARGS` (``fixed``
    arguments plus ``per_item`` keys and arguments per index, after EVALSHA, its SHA and
    the key count) is split into calls that do not."""
    most = max(1, (MAX_ARGS - 3 - fixed) // per_item)
    groups: dict[int, list[int]] = {}
    for i in indexes:
        groups.setdefault(group(keys[i]), []).append(i)
    return [g[k : k + most] for g in groups.values() for k in range(0, len(g), most)]


@dataclass(frozen=True, slots=True)
class Node:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Redirect:
    """A ``MOVED`` (the slot lives elsewhere now) or ``ASK`` (ask there once) reply."""

    kind: str  # "MOVED" or "ASK"
    slot: int
    node: Node


def parse_redirect(message: str, default_host: str) -> Redirect | None:
    """``MOVED 3999 127.0.0.1:6381`` (or ASK) as a :class:`Redirect`; None otherwise.

    An empty host (``MOVED 3999 :6381``: the node does not know its address) means
    the host we asked.
    """
    parts = message.split()
    if len(parts) < 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    try:
        return Redirect(parts[0], int(parts[1]), Node(host or default_host, int(port)))
    except ValueError:
        return None


class SlotMap:
    """Which master serves each slot (from ``CLUSTER SLOTS``)."""

    def __init__(self, owners: list[Node | None]) -> None:
        self._owners = owners
        first = owners[0]
        #: the one master serving every slot (ElastiCache Serverless's shape), if so
        self.single: Node | None = first if all(n == first for n in owners) else None

    @classmethod
    def parse(cls, reply: Sequence[Any], default_host: str) -> SlotMap:
        """A ``CLUSTER SLOTS`` reply: [[first, last, [host, port, id, ...], replicas...], ...]."""
        owners: list[Node | None] = [None] * SLOTS
        for entry in reply:
            first, last, master = int(entry[0]), int(entry[1]), entry[2]
            host = str(master[0]) if master[0] not in (None, "", "?") else default_host
            node = Node(host, int(master[1]))
            for slot in range(first, last + 1):
                owners[slot] = node
        return cls(owners)

    def owner(self, slot: int) -> Node | None:
        return self._owners[slot]

    def moved(self, slot: int, node: Node) -> None:
        self._owners[slot] = node
        if node != self.single:
            self.single = None

    def nodes(self) -> list[Node]:
        return list(dict.fromkeys(n for n in self._owners if n is not None))

    @property
    def complete(self) -> bool:
        return all(n is not None for n in self._owners)
