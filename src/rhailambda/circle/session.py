"""One task's view of its circle: the ``db::`` and ``circle::`` functions of a script.

A :class:`CircleSession` is opened per task. It checks who may do what, stages
writes (a script that fails leaves nothing behind), answers reads from its staged
writes first (read-your-writes), and remembers the version of everything it read
from the store. :meth:`CircleSession.commit` hands the staged writes and those
expectations to the store in one atomic call; if anything the script read has
changed meanwhile the store raises ``StoreConflict`` (a ``CommitConflict``) and
the function runs the script again on fresh data.

Authorization (as in rhailib): the owner (``CALLER_ID == CONTEXT_ID``) and the
circle's members may read and write records and read the member list; only the
owner may change the member list. When a member's rights came from the member
set, the commit also checks that set is unchanged, so a member removed while a
script ran cannot slip a write in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from rhailambda.circle.errors import (
    CommitTooLarge,
    InsufficientAuthorization,
    InvalidArgument,
    ScriptTimeout,
)
from rhailambda.circle.names import check_collection, check_context, check_id
from rhailambda.circle.settings import Limits
from rhailambda.circle.store import (
    ABSENT,
    CircleStore,
    Expectations,
    Members,
    MemberWrite,
    Page,
    RecordWrite,
    Stored,
    commit_items,
    decode_record,
    encode_record,
)
from rhailambda.extension import Receipt, ScriptContext

__all__ = ["CircleSession"]

Key = tuple[str, str]
_UNSET = object()


class CircleSession:
    """The :class:`~rhailambda.extension.Session` of the circle extension."""

    def __init__(self, store: CircleStore, ctx: ScriptContext, limits: Limits) -> None:
        self._store = store
        self._ctx = ctx
        self._limits = limits
        self._context: str | None = None  # validated CONTEXT_ID, on first use
        self._is_member: bool | None = None
        self._staged: dict[Key, str | None] = {}  # JSON text, None: delete
        self._read: dict[Key, Stored | None] = {}  # what the store returned
        self._stamps: dict[str, str] = {}  # collections listed or searched
        self._members: Members | None = None  # set when the member set was read
        self._member_staged: dict[str, bool] = {}

    def modules(self) -> Mapping[str, Mapping[str, Callable[..., Any]]]:
        return {
            "db": {
                "save": self.save,
                "get": self.get,
                "delete": self.delete,
                "list": self.list_records,
                "find": self.find,
            },
            "circle": {
                "members": self.members,
                "add_member": self.add_member,
                "remove_member": self.remove_member,
            },
        }

    # --- db:: ----------------------------------------------------------------
    def save(self, collection: object, id: object, record: object) -> None:
        """``db::save(collection, id, record)``: create or replace a record."""
        key = (check_collection(collection), check_id(id))
        data = encode_record(record, self._limits.max_record_bytes)
        self._authorize("write")
        self._stage(key, data)

    def get(self, collection: object, id: object) -> dict[str, Any] | None:
        """``db::get(collection, id)``: the record, or ``()`` when there is none."""
        key = (check_collection(collection), check_id(id))
        self._authorize("read")
        data = self._current(key)
        return None if data is None else decode_record(data)

    def delete(self, collection: object, id: object) -> bool:
        """``db::delete(collection, id)``: true if the record existed."""
        key = (check_collection(collection), check_id(id))
        self._authorize("write")
        if self._current(key) is None:
            return False
        self._stage(key, None)
        return True

    def list_records(
        self, collection: object, offset: object = 0, limit: object = None
    ) -> list[dict[str, Any]]:
        """``db::list(collection[, offset, limit])``: records in id order."""
        coll = check_collection(collection)
        first = _count(offset, "offset", None)
        size = _count(
            self._limits.max_list if limit is None else limit, "limit", self._limits.max_list
        )
        self._authorize("read")
        budget = self._limits.max_result_bytes
        rows = self._page(coll, first, size, budget)
        if rows is None:
            raise InvalidArgument(
                f"list: the page of {coll!r} holds more than {budget} bytes of records; "
                "ask for fewer with db::list(collection, offset, limit)"
            )
        return [decode_record(data) for _, data in rows]

    def find(self, collection: object, field: object, value: object) -> list[dict[str, Any]]:
        """``db::find(collection, field, value)``: records whose ``field`` equals ``value``."""
        coll = check_collection(collection)
        if not isinstance(field, str) or field == "":
            raise InvalidArgument(f"find: field must be a non-empty string, got {field!r}")
        wanted = _canonical(value)
        self._authorize("read")
        scan, scan_bytes = self._limits.max_scan, self._limits.max_scan_bytes
        rows = self._page(coll, 0, scan + 1, scan_bytes)
        if rows is None or len(rows) > scan:
            raise InvalidArgument(
                f"find: collection {coll!r} has more than {scan} records or {scan_bytes} "
                "bytes of them; page through it with db::list instead"
            )
        found, size = [], 0
        for _, data in rows:
            record = decode_record(data)
            if field in record and _canonical(record[field]) == wanted:
                found.append(record)
                size += len(data)
        if size > self._limits.max_result_bytes:
            raise InvalidArgument(
                f"find: the records found in {coll!r} hold more than "
                f"{self._limits.max_result_bytes} bytes; page through them with db::list"
            )
        return found

    # --- circle:: ------------------------------------------------------------
    def members(self) -> list[str]:
        """``circle::members()``: the member ids in order (the owner is implicit)."""
        self._authorize("read the member list")
        return sorted(self._member_view())

    def add_member(self, id: object) -> bool:
        """``circle::add_member(id)``: true if ``id`` was not a member yet (owner only)."""
        member = check_id(id, "member id")
        self._authorize("change the member list", owner_only=True)
        if member in self._member_view():
            return False
        self._stage_member(member, True)
        return True

    def remove_member(self, id: object) -> bool:
        """``circle::remove_member(id)``: true if ``id`` was a member (owner only)."""
        member = check_id(id, "member id")
        self._authorize("change the member list", owner_only=True)
        if member not in self._member_view():
            return False
        self._stage_member(member, False)
        return True

    # --- Session -------------------------------------------------------------
    def commit(self, receipt: Receipt | None = None) -> None:
        """Apply the staged writes atomically, ``receipt`` with them; nothing staged: no I/O.

        Raises StoreConflict if the data changed, TaskCommitted if another run of the
        same task committed first (then nothing is applied).
        """
        if self._context is None or (not self._staged and not self._member_staged):
            return
        try:
            self._store.commit(self._context, *self._plan(), receipt=receipt)
        finally:
            self.discard()

    def discard(self) -> None:
        """Forget every staged write (the script failed)."""
        self._staged.clear()
        self._member_staged.clear()

    # --- internals -----------------------------------------------------------
    def _authorize(self, action: str, *, owner_only: bool = False) -> str:
        if self._context is None:
            self._context = check_context(self._ctx.context_id)
        context, caller = self._context, self._ctx.caller_id
        if caller == context:
            return context
        if not owner_only:
            if self._is_member is None:
                self._is_member = caller in self._load_members().ids
            if self._is_member:
                return context
        raise InsufficientAuthorization(caller, context, action)

    def _load_members(self) -> Members:
        if self._members is None:
            assert self._context is not None
            self._in_time("circle::")
            self._members = self._store.members(self._context)
        return self._members

    def _scan(self, coll: str, offset: int, limit: int, max_bytes: int) -> Page:
        assert self._context is not None
        self._in_time("db::")
        page = self._store.scan(self._context, coll, offset, limit, max_bytes)
        self._in_time("db::")
        return page

    def _in_time(self, where: str) -> None:
        """Time in ``db::`` calls counts against the script's timeout (the engine sees
        only its own steps): past the deadline, the call fails."""
        deadline = self._ctx.deadline
        if deadline is not None and time.monotonic() > deadline:
            raise ScriptTimeout(f"script timed out (its time ran out in a {where} call)")

    def _member_view(self) -> set[str]:
        view = set(self._load_members().ids)
        for member, present in self._member_staged.items():
            (view.add if present else view.discard)(member)
        return view

    def _stage(self, key: Key, data: str | None) -> None:
        previous = self._staged.get(key, _UNSET)
        self._staged[key] = data
        self._within_budget(lambda: self._restore(key, previous))

    def _restore(self, key: Key, previous: object) -> None:
        if previous is _UNSET:
            del self._staged[key]
        else:
            self._staged[key] = previous  # type: ignore[assignment]

    def _stage_member(self, member: str, present: bool) -> None:
        previous = self._member_staged.get(member)
        self._member_staged[member] = present
        if previous is None:
            self._within_budget(lambda: self._member_staged.pop(member))

    def _within_budget(self, undo: Callable[[], object] | None) -> None:
        """Fail the script at the call that makes its changes too big to commit.

        Reads count on backends with an item limit (each is checked at commit), but
        only once the script has written something: read-only scripts commit nothing.
        """
        writes = len(self._staged) + len(self._member_staged)
        if writes > self._limits.max_writes and undo is not None:
            undo()
            raise CommitTooLarge(writes, self._limits.max_writes, "records and members changed")
        max_items = self._store.max_items_per_commit
        if max_items is not None and writes:
            items = commit_items(*self._plan())
            if items > max_items:
                if undo is not None:
                    undo()
                raise CommitTooLarge(items, max_items, "items (writes, reads and lists)")

    def _plan(self) -> tuple[list[RecordWrite], list[MemberWrite], Expectations]:
        writes = [RecordWrite(c, i, data) for (c, i), data in self._staged.items()]
        member_writes = [MemberWrite(m, present) for m, present in self._member_staged.items()]
        expected = Expectations(
            records={key: (s.version if s else ABSENT) for key, s in self._read.items()},
            collections=dict(self._stamps),
            members=self._members.stamp if self._members is not None else None,
        )
        return writes, member_writes, expected

    def _current(self, key: Key) -> str | None:
        """The record's JSON as this script sees it (staged first, then the store)."""
        if key in self._staged:
            return self._staged[key]
        if key not in self._read:
            assert self._context is not None
            self._in_time("db::")
            found = self._store.read(self._context, key[0], [key[1]])
            self._read[key] = found.get(key[1])
            self._within_budget(None)
        stored = self._read[key]
        return None if stored is None else stored.data

    def _page(
        self, coll: str, offset: int, limit: int, max_bytes: int
    ) -> list[tuple[str, str]] | None:
        """Rows ``(id, json)`` at positions ``[offset, offset + limit)`` of the merged view,
        or None when the records read pass ``max_bytes``."""
        assert self._context is not None
        staged = {i: data for (c, i), data in self._staged.items() if c == coll}
        if not staged:
            page = self._scan(coll, offset, limit, max_bytes)
            self._stamps.setdefault(coll, page.stamp)
            self._within_budget(None)
            return None if page.truncated else [(r.id, r.data) for r in page.records]
        # Staged deletes can pull later stored records into the window: read enough.
        deletes = sum(1 for data in staged.values() if data is None)
        page = self._scan(coll, 0, offset + limit + deletes, max_bytes)
        self._stamps.setdefault(coll, page.stamp)
        if page.truncated:
            return None
        merged: dict[str, str | None] = {r.id: r.data for r in page.records}
        merged.update(staged)
        rows = sorted((i, data) for i, data in merged.items() if data is not None)
        return rows[offset : offset + limit]


def _count(value: object, name: str, maximum: int | None) -> int:
    if type(value) is not int or value < 0 or (maximum is not None and value > maximum):
        bound = f"0..{maximum}" if maximum is not None else "a non-negative integer"
        raise InvalidArgument(f"{name} must be {bound}, got {value!r}")
    return value


def _canonical(value: object) -> str:
    """A spelling under which equal script values (and only those) compare equal."""
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        raise InvalidArgument(f"find: cannot compare with a {type(value).__name__}") from None
