"""The one narrow interface between circle sessions and storage.

A :class:`CircleStore` holds, per circle (context id):

- records: JSON maps in named collections, each with an opaque *version* token;
- a *stamp* per collection, changed by every commit that writes to it (so a
  script that listed or searched a collection notices any later change to it);
- the member set, with its own stamp;
- receipts: per task id, the :class:`~rhailambda.extension.Receipt` of
  the run whose writes were committed, kept for ``receipt_ttl_s`` seconds.

Reads are plain. :meth:`CircleStore.commit` applies staged writes atomically, and
only if every expectation still holds (optimistic concurrency); otherwise it
raises :class:`~rhailambda.circle.errors.StoreConflict` and changes nothing.
Every commit writes a fresh random version token, so a record deleted and
created again never looks unchanged to a reader (no ABA). A commit given a receipt
stores it in the same atomic step, and first checks that no receipt of the same
task (:meth:`Receipt.covers`: same fingerprint, another attempt) is there: if one is, it raises
:class:`~rhailambda.extension.AlreadyCommitted` and changes nothing.

Three backends implement it: :mod:`rhailambda.circle.redis_store`,
:mod:`rhailambda.circle.dynamo_store` and :mod:`rhailambda.circle.memory_store`. Each
subclasses :class:`CircleStore`, which keeps the rules every commit shares (an empty
commit does nothing, one over :attr:`~CircleStore.max_items_per_commit` fails before
touching anything) and hands the rest to the backend's ``_apply``. Context ids reach
a store already validated; it encodes them itself.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from rhailambda.circle.errors import CommitTooLarge, InvalidArgument
from rhailambda.extension import Receipt

__all__ = [
    "ABSENT",
    "Change",
    "CircleStore",
    "Expectations",
    "MemberWrite",
    "Members",
    "Page",
    "RecordWrite",
    "Stored",
    "cap_page",
    "commit_items",
    "decode_record",
    "encode_record",
]

#: The version of a record that does not exist, and the stamp of a collection
#: (or member set) that was never written.
ABSENT: Final = ""


@dataclass(frozen=True, slots=True)
class Stored:
    """A record as stored: its id, its JSON text and its version token."""

    id: str
    data: str
    version: str


@dataclass(frozen=True, slots=True)
class Page:
    """Records of one collection in id order, and the collection's stamp when read."""

    records: tuple[Stored, ...]
    stamp: str
    #: the records passed the scan's ``max_bytes``: the page stops early
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Members:
    """A circle's members (the owner is implicit, never listed) and the set's stamp."""

    ids: frozenset[str]
    stamp: str


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """Create or replace (``data`` is JSON text) or delete (``data`` is None) one record."""

    collection: str
    id: str
    data: str | None


@dataclass(frozen=True, slots=True)
class MemberWrite:
    """Add (``present``) or remove one member."""

    member_id: str
    present: bool


@dataclass(frozen=True, slots=True)
class Expectations:
    """What must still hold at commit time.

    ``records``: (collection, id) -> version read (:data:`ABSENT`: did not exist);
    ``collections``: collection -> stamp seen by a list or find;
    ``members``: the member set's stamp, when authorization relied on membership.
    """

    records: Mapping[tuple[str, str], str] = field(default_factory=dict)
    collections: Mapping[str, str] = field(default_factory=dict)
    members: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """What one commit hands its backend: the writes and what must still hold."""

    writes: Sequence[RecordWrite]
    member_writes: Sequence[MemberWrite]
    expected: Expectations


class CircleStore(ABC):
    """Storage of circle data. Implementations are thread-safe and built once."""

    #: Most items one commit may touch (writes plus checks, the receipt not counted:
    #: a store with a limit keeps one item for it), or None for no limit.
    max_items_per_commit: int | None = None

    @abstractmethod
    def read(self, context: str, collection: str, ids: Sequence[str]) -> dict[str, Stored]:
        """The stored records among ``ids`` (absent ids are left out)."""

    @abstractmethod
    def scan(
        self, context: str, collection: str, offset: int, limit: int, max_bytes: int | None = None
    ) -> Page:
        """Up to ``limit`` records from position ``offset`` in id order, and the stamp.

        Once the records read hold more than ``max_bytes`` of JSON, the page stops
        there, ``truncated``.
        """

    @abstractmethod
    def members(self, context: str) -> Members:
        """The circle's member ids and the member set's stamp."""

    @abstractmethod
    def receipts(self, tasks: Sequence[tuple[str, str]]) -> list[Receipt | None]:
        """The unexpired receipt of each ``(context, task_id)``, or None; one call."""

    def commit(
        self,
        context: str,
        writes: Sequence[RecordWrite],
        member_writes: Sequence[MemberWrite],
        expected: Expectations,
        receipt: Receipt | None = None,
    ) -> None:
        """Apply all writes (and ``receipt``) atomically if ``expected`` holds.

        Raises StoreConflict when it does not, AlreadyCommitted when a receipt of
        the same task is stored already, and CommitTooLarge (before touching
        anything) when the commit needs more than :attr:`max_items_per_commit` items.
        Nothing to write: nothing happens, no receipt is stored.
        """
        if not writes and not member_writes:
            return  # nothing to apply: a read-only script needs no validation
        limit = self.max_items_per_commit
        if limit is not None:
            needed = commit_items(writes, member_writes, expected)
            if needed > limit:
                raise CommitTooLarge(needed, limit, "items (writes, reads and lists)")
        self._apply(context, Change(writes, member_writes, expected), receipt)

    @abstractmethod
    def _apply(self, context: str, change: Change, receipt: Receipt | None) -> None:
        """:meth:`commit` of a change with something to write, within the item limit."""


def commit_items(
    writes: Sequence[RecordWrite], member_writes: Sequence[MemberWrite], expected: Expectations
) -> int:
    """How many items a commit touches: each write, each record only read, each
    collection written or listed, and the member set's stamp when it is set or checked."""
    written = {(w.collection, w.id) for w in writes}
    collections = {w.collection for w in writes} | set(expected.collections)
    return (
        len(writes)
        + sum(1 for key in expected.records if key not in written)
        + len(collections)
        + len(member_writes)
        + (1 if member_writes or expected.members is not None else 0)
    )


def cap_page(records: Sequence[Stored], stamp: str, max_bytes: int | None) -> Page:
    """A page of ``records``, stopped after the record that passes ``max_bytes``."""
    if max_bytes is not None:
        size = 0
        for i, record in enumerate(records):
            size += len(record.data)
            if size > max_bytes:
                return Page(records=tuple(records[: i + 1]), stamp=stamp, truncated=True)
    return Page(records=tuple(records), stamp=stamp)


def encode_record(record: object, max_bytes: int) -> str:
    """The JSON text stored for a record a script passed (a map of plain values)."""
    if not isinstance(record, dict):
        raise InvalidArgument(f"a record must be a map, got {type(record).__name__}")
    _check_value(record, depth=0)
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        raise InvalidArgument("a record may not hold NaN or infinite numbers") from None
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidArgument(f"record too large: {size} bytes as JSON, at most {max_bytes}")
    return text


def decode_record(text: str) -> dict[str, Any]:
    """A fresh map for the script (it may change it without touching staged state)."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("stored record is not a JSON object")
    return value


_MAX_DEPTH: Final = 32


def _check_value(value: object, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidArgument(f"record nested deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument(f"record keys must be strings, got {key!r}")
            _check_value(item, depth + 1)
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_value(item, depth + 1)
        return
    raise InvalidArgument(
        f"a record may hold maps, arrays, strings, numbers, booleans and (); "
        f"not {type(value).__name__}"
    )
