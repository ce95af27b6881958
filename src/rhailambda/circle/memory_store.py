"""An in-process circle store: for unit tests and for trying scripts without a server.

Same contract as the Redis and DynamoDB stores (the shared store test suite runs
against all three); one lock makes every commit atomic.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rhailambda.circle.errors import StoreConflict, TaskCommitted
from rhailambda.circle.store import ABSENT, Change, CircleStore, Members, Page, Stored, cap_page
from rhailambda.extension import Receipt

__all__ = ["MemoryCircleStore"]


@dataclass
class _Circle:
    records: dict[str, dict[str, Stored]] = field(default_factory=dict)
    order: dict[str, list[str]] = field(default_factory=dict)  # sorted ids per collection
    stamps: dict[str, str] = field(default_factory=dict)
    members: set[str] = field(default_factory=set)
    members_stamp: str = ABSENT
    receipts: dict[str, tuple[Receipt, float]] = field(default_factory=dict)  # -> expiry


class MemoryCircleStore(CircleStore):
    """:class:`~rhailambda.circle.store.CircleStore` in a dict, guarded by one lock."""

    def __init__(
        self,
        max_items_per_commit: int | None = None,
        *,
        receipt_ttl_s: int = 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_items_per_commit = max_items_per_commit
        self._receipt_ttl_s = receipt_ttl_s
        self._clock = clock
        self._circles: dict[str, _Circle] = {}
        self._lock = threading.Lock()
        self.commits = 0  # successful commits, for tests

    def _circle(self, context: str) -> _Circle:
        return self._circles.setdefault(context, _Circle())

    def read(self, context: str, collection: str, ids: Sequence[str]) -> dict[str, Stored]:
        with self._lock:
            records = self._circle(context).records.get(collection, {})
            return {i: records[i] for i in ids if i in records}

    def scan(
        self, context: str, collection: str, offset: int, limit: int, max_bytes: int | None = None
    ) -> Page:
        with self._lock:
            circle = self._circle(context)
            ids = circle.order.get(collection, [])[offset : offset + max(limit, 0)]
            records = circle.records.get(collection, {})
            stamp = circle.stamps.get(collection, ABSENT)
            return cap_page([records[i] for i in ids], stamp, max_bytes)

    def members(self, context: str) -> Members:
        with self._lock:
            circle = self._circle(context)
            return Members(ids=frozenset(circle.members), stamp=circle.members_stamp)

    def receipts(self, tasks: Sequence[tuple[str, str]]) -> list[Receipt | None]:
        with self._lock:
            return [self._receipt(self._circle(c), t) for c, t in tasks]

    def _receipt(self, circle: _Circle, task_id: str) -> Receipt | None:
        receipt, expiry = circle.receipts.get(task_id, (None, 0.0))
        return receipt if expiry > self._clock() else None

    def _apply(self, context: str, change: Change, receipt: Receipt | None) -> None:
        expected = change.expected
        with self._lock:
            circle = self._circle(context)
            if receipt is not None:
                stored = self._receipt(circle, receipt.task_id)
                if stored is not None and stored.covers(receipt):
                    raise TaskCommitted(stored)
            for collection, stamp in expected.collections.items():
                if circle.stamps.get(collection, ABSENT) != stamp:
                    raise StoreConflict(f"collection {collection}")
            for (collection, id_), version in expected.records.items():
                current = circle.records.get(collection, {}).get(id_)
                if (current.version if current else ABSENT) != version:
                    raise StoreConflict(f"record {collection}/{id_}")
            if expected.members is not None and circle.members_stamp != expected.members:
                raise StoreConflict("the member set")
            token = os.urandom(8).hex()
            for w in change.writes:
                records = circle.records.setdefault(w.collection, {})
                order = circle.order.setdefault(w.collection, [])
                if w.data is None:
                    if records.pop(w.id, None) is not None:
                        order.remove(w.id)
                else:
                    if w.id not in records:
                        bisect.insort(order, w.id)
                    records[w.id] = Stored(id=w.id, data=w.data, version=token)
                circle.stamps[w.collection] = token
            for m in change.member_writes:
                (circle.members.add if m.present else circle.members.discard)(m.member_id)
            if change.member_writes:
                circle.members_stamp = token
            if receipt is not None:
                expiry = self._clock() + self._receipt_ttl_s
                kept = dataclasses.replace(receipt, first_claim=False)  # as a store reads it
                circle.receipts[receipt.task_id] = (kept, expiry)
            self.commits += 1
