"""The circle store on Redis (the embedded default).

Keys of circle ``C`` (``E`` = :func:`~rhailambda.circle.names.encode_context` of C),
all built by :meth:`KeyLayout.circle`, all sharing the hash tag ``{E}`` so one
commit touches one Redis Cluster slot::

    rhailambda:circle:{E}:rec:<collection>   hash   id -> "<version>|<json>"
    rhailambda:circle:{E}:idx:<collection>   zset   id (score 0: ordered by id)
    rhailambda:circle:{E}:stamps             hash   "col:<collection>" / "members" -> token
    rhailambda:circle:{E}:members            set    member ids
    rhailambda:circle:{E}:receipt:<task id>  string the task's receipt (JSON), with EX

Reads of one page are one Lua call (stamp, ids and records seen together);
a commit is one Lua call that checks every expectation, then writes (the
receipt too); the receipts of a batch are one pipeline of GETs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from rhailambda.circle.errors import StoreConflict, StoreError, TaskCommitted
from rhailambda.circle.names import encode_context
from rhailambda.circle.store import ABSENT, Change, CircleStore, Members, Page, Stored
from rhailambda.errors import RedisError, RedisResponseError
from rhailambda.extension import Receipt
from rhailambda.protocol import KeyLayout
from rhailambda.resp import RespClient

__all__ = ["RedisCircleStore"]

_CHUNK = 1000
#: bytes of records one scan call reads at most (plus one record): about 1 ms of Redis
_SLICE_BYTES = 1024 * 1024
_SCAN_TRIES = 3


def _lua(name: str) -> str:
    # next to this module (importlib.resources costs ~4 ms of a cold start)
    return (Path(__file__).parent / name).read_text(encoding="utf-8")


def _split(id_: str, value: str) -> Stored:
    version, _, data = value.partition("|")
    return Stored(id=id_, data=data, version=version)


def _encode_receipt(receipt: Receipt) -> str:
    body = {
        "output": receipt.output,
        "attempt": receipt.attempt,
        "fingerprint": receipt.fingerprint,
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _decode_receipt(task_id: str, text: str) -> Receipt:
    body = json.loads(text)
    output = body.get("output")
    fingerprint = str(body.get("fingerprint", ""))  # none: an older release's, never matches
    return Receipt(
        task_id, None if output is None else str(output), int(body["attempt"]), fingerprint
    )


class RedisCircleStore(CircleStore):
    """:class:`~rhailambda.circle.store.CircleStore` on one Redis (the function's client).

    Reads are re-sent once on a broken connection; a commit is not (its reply may
    be lost after it applied): the task fails and runs again.
    """

    def __init__(
        self, client: RespClient, layout: KeyLayout | None = None, *, receipt_ttl_s: int = 3600
    ) -> None:
        self._client = client
        self._layout = layout or KeyLayout()
        self._receipt_ttl_s = receipt_ttl_s
        self._commit = client.script(_lua("commit.lua"))
        self._scan = client.script(_lua("scan.lua"), idempotent=True)

    # --- keys ----------------------------------------------------------------
    def _key(self, context: str, *parts: str) -> str:
        return self._layout.circle(encode_context(context), *parts)

    def _records_key(self, context: str, collection: str) -> str:
        return self._key(context, "rec", collection)

    def _index_key(self, context: str, collection: str) -> str:
        return self._key(context, "idx", collection)

    # --- reads ---------------------------------------------------------------
    def read(self, context: str, collection: str, ids: Sequence[str]) -> dict[str, Stored]:
        key = self._records_key(context, collection)
        found: dict[str, Stored] = {}
        unique = list(dict.fromkeys(ids))
        try:
            for first in range(0, len(unique), _CHUNK):
                chunk = unique[first : first + _CHUNK]
                values = cast(
                    list[str | None], self._client.execute("HMGET", key, *chunk, idempotent=True)
                )
                for id_, value in zip(chunk, values, strict=True):
                    if value is not None:
                        found[id_] = _split(id_, value)
        except RedisError as exc:
            raise StoreError(f"circle store (redis) read failed: {exc}") from exc
        return found

    def scan(
        self, context: str, collection: str, offset: int, limit: int, max_bytes: int | None = None
    ) -> Page:
        """Several short Lua calls of at most :data:`_SLICE_BYTES` each (one long call
        would block every other Redis client); a stamp that moves between them means
        a commit came in between: the page is read again."""
        keys = [
            self._key(context, "stamps"),
            self._records_key(context, collection),
            self._index_key(context, collection),
        ]
        for _ in range(_SCAN_TRIES):
            page = self._scan_once(keys, collection, offset, limit, max_bytes)
            if page is not None:
                return page
        raise StoreError(f"circle store (redis): collection {collection!r} kept changing")

    def _scan_once(
        self, keys: list[str], collection: str, offset: int, limit: int, max_bytes: int | None
    ) -> Page | None:
        records: list[Stored] = []
        stamp: str | None = None
        pos, end, size = offset, offset + max(limit, 0), 0
        while pos < end:
            try:
                reply = cast(
                    list[Any],
                    self._scan(keys=keys, args=[f"col:{collection}", pos, end - pos, _SLICE_BYTES]),
                )
            except RedisError as exc:
                raise StoreError(f"circle store (redis) scan failed: {exc}") from exc
            if stamp is None:
                stamp = str(reply[0])
            elif str(reply[0]) != stamp:
                return None
            for id_, value in zip(reply[1], reply[2], strict=True):
                if value:
                    records.append(_split(id_, value))
                    size += len(value)
            if max_bytes is not None and size > max_bytes:
                return Page(records=tuple(records), stamp=stamp, truncated=True)
            pos = int(reply[3])
            if int(reply[4]) == 1:
                break
        if stamp is None:  # nothing asked for: the stamp alone
            stamp = self._stamp(keys[0], collection)
        return Page(records=tuple(records), stamp=stamp)

    def _stamp(self, key: str, collection: str) -> str:
        try:
            value = self._client.execute("HGET", key, f"col:{collection}", idempotent=True)
        except RedisError as exc:
            raise StoreError(f"circle store (redis) scan failed: {exc}") from exc
        return "" if value is None else str(value)

    def members(self, context: str) -> Members:
        commands = [
            ["HGET", self._key(context, "stamps"), "members"],
            ["SMEMBERS", self._key(context, "members")],
        ]
        try:
            replies = self._client.pipeline(commands, transaction=True, idempotent=True)
            for reply in replies:
                if isinstance(reply, RedisResponseError):
                    raise reply
        except RedisError as exc:
            raise StoreError(f"circle store (redis) members read failed: {exc}") from exc
        stamp, ids = replies
        return Members(ids=frozenset(ids), stamp=stamp or ABSENT)

    def receipts(self, tasks: Sequence[tuple[str, str]]) -> list[Receipt | None]:
        if not tasks:
            return []
        keys = [self._layout.circle_receipt(encode_context(c), t) for c, t in tasks]
        try:
            # GETs, not one MGET: the keys live in different circles' cluster slots
            replies = self._client.pipeline([["GET", k] for k in keys], idempotent=True)
            for reply in replies:
                if isinstance(reply, RedisResponseError):
                    raise reply
        except RedisError as exc:
            raise StoreError(f"circle store (redis) receipt read failed: {exc}") from exc
        return [
            None if text is None else _decode_receipt(task_id, text)
            for (_, task_id), text in zip(tasks, replies, strict=True)
        ]

    # --- commit --------------------------------------------------------------
    def _apply(self, context: str, change: Change, receipt: Receipt | None) -> None:
        expected = change.expected
        colls: list[str] = []
        slot: dict[str, int] = {}

        def index(collection: str) -> int:
            if collection not in slot:
                colls.append(collection)
                slot[collection] = len(colls)  # 1-based, as Lua counts
            return slot[collection]

        plan = {
            "token": os.urandom(8).hex(),  # not secrets: it loads OpenSSL
            "stamps": [[index(c), stamp] for c, stamp in expected.collections.items()],
            "records": [[index(c), id_, v] for (c, id_), v in expected.records.items()],
            "check_members": expected.members is not None,
            "members_stamp": expected.members or ABSENT,
            "writes": [[index(w.collection), w.id, w.data or ""] for w in change.writes],
            "member_writes": [[m.member_id, 1 if m.present else 0] for m in change.member_writes],
            "colls": colls,
        }
        keys = [self._key(context, "stamps"), self._key(context, "members")]
        for collection in colls:
            keys += [self._records_key(context, collection), self._index_key(context, collection)]
        if receipt is not None:
            plan["receipt"] = {
                "body": _encode_receipt(receipt),
                "fingerprint": receipt.fingerprint,
                "attempt": receipt.attempt,
                "first": receipt.first_claim,
                "ttl": self._receipt_ttl_s,
            }
            keys.append(self._layout.circle_receipt(encode_context(context), receipt.task_id))
        try:
            reply = cast(
                list[str], self._commit(keys=keys, args=[json.dumps(plan, ensure_ascii=False)])
            )
        except RedisError as exc:
            raise StoreError(f"circle store (redis) commit failed: {exc}") from exc
        if reply[0] == "committed":
            assert receipt is not None
            raise TaskCommitted(_decode_receipt(receipt.task_id, reply[1]))
        if reply[0] != "ok":
            raise StoreConflict(reply[1])
