"""The circle store on DynamoDB: one table, one partition per circle.

Key schema: partition key ``pk`` (S) = the encoded context id
(:func:`~rhailambda.circle.names.encode_context`), sort key ``sk`` (S)::

    rec#<collection>#<id>   a record: ver (S, version token), body (S, JSON)
    col#<collection>        the collection's stamp: stamp (S)
    member#<id>             a member
    meta                    the member set's stamp: stamp (S)
    receipt#<task id>       a task's receipt: output (S), attempt (N), fingerprint (S),
                            expires (N, epoch seconds: the table's TTL attribute)

Collection names cannot contain ``#``, so ``begins_with(sk, "rec#<collection>#")``
selects exactly one collection, in id order (DynamoDB orders sort keys by UTF-8
bytes, which is code point order). All reads are strongly consistent. A scan reads
the stamp *before* the records: a write that lands in between changes the stamp,
so the commit of a script that saw a mixed page fails and the script runs again.

A commit is one ``TransactWriteItems`` call: Put/Delete records with a condition
on their version, ConditionChecks for records and collections only read, an Update
of every written collection's stamp, and a Put of the task's receipt (conditional:
no unexpired receipt of the same task yet). DynamoDB takes at most 100 items per
call: :attr:`max_items_per_commit` is 99, one kept for the receipt (bigger commits
raise :class:`CommitTooLarge` before anything is sent). A receipt past ``expires``
counts as absent (TTL deletion lags).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from rhailambda.circle.errors import StoreConflict, StoreError, TaskCommitted
from rhailambda.circle.names import encode_context
from rhailambda.circle.store import ABSENT, Change, CircleStore, Members, Page, Stored, cap_page
from rhailambda.extension import Receipt

__all__ = ["MAX_TRANSACTION_ITEMS", "DynamoCircleStore", "DynamoClient"]

MAX_TRANSACTION_ITEMS: Final = 100
_BATCH_GET: Final = 100
_UNPROCESSED_RETRIES: Final = 8
_CONFLICT_CODES: Final = frozenset({"ConditionalCheckFailed", "TransactionConflict"})
#: an item holds at most 400 KB: a bigger output is not kept (the receipt says so)
_MAX_RECEIPT_OUTPUT_BYTES: Final = 350_000


class DynamoClient(Protocol):
    """The four calls of a boto3 ``dynamodb`` client the store uses."""

    def get_item(self, **kwargs: Any) -> Mapping[str, Any]: ...

    def query(self, **kwargs: Any) -> Mapping[str, Any]: ...

    def batch_get_item(self, **kwargs: Any) -> Mapping[str, Any]: ...

    def transact_write_items(self, **kwargs: Any) -> Mapping[str, Any]: ...


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _rec_sk(collection: str, id_: str) -> str:
    return f"rec#{collection}#{id_}"


def _receipt_sk(task_id: str) -> str:
    return f"receipt#{task_id}"


def _receipt_of(item: Mapping[str, Any], now: int) -> Receipt | None:
    if int(item["expires"]["N"]) <= now:
        return None
    task_id = item["sk"]["S"][len("receipt#") :]
    output = item["output"]["S"] if "output" in item else None
    fingerprint = item.get("fingerprint", {}).get("S", "")  # none: an older release's
    return Receipt(task_id, output, int(item["attempt"]["N"]), fingerprint)


class DynamoCircleStore(CircleStore):
    """:class:`~rhailambda.circle.store.CircleStore` on one DynamoDB table."""

    max_items_per_commit: int | None = MAX_TRANSACTION_ITEMS - 1  # one for the receipt

    def __init__(self, client: DynamoClient, table: str, *, receipt_ttl_s: int = 3600) -> None:
        self._client = client
        self._table = table
        self._receipt_ttl_s = receipt_ttl_s

    def _key(self, context: str, sk: str) -> dict[str, dict[str, str]]:
        return {"pk": _s(encode_context(context)), "sk": _s(sk)}

    def _stamp(self, context: str, sk: str) -> str:
        item = self._call(
            "get_item",
            TableName=self._table,
            Key=self._key(context, sk),
            ConsistentRead=True,
            ProjectionExpression="stamp",
        ).get("Item")
        return str(item["stamp"]["S"]) if item and "stamp" in item else ABSENT

    def _query(self, context: str, prefix: str, wanted: int | None) -> list[dict[str, Any]]:
        """Items whose sort key starts with ``prefix``, in order, at most ``wanted``."""
        items: list[dict[str, Any]] = []
        args: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)",
            "ExpressionAttributeValues": {
                ":pk": _s(encode_context(context)),
                ":prefix": _s(prefix),
            },
            "ConsistentRead": True,
        }
        while wanted is None or len(items) < wanted:
            if wanted is not None:
                args["Limit"] = min(wanted - len(items), 1000)
            reply = self._call("query", **args)
            items.extend(reply.get("Items", []))
            last = reply.get("LastEvaluatedKey")
            if not last:
                break
            args["ExclusiveStartKey"] = last
        return items

    # --- reads ---------------------------------------------------------------
    def _batch_get(self, keys: Sequence[dict[str, dict[str, str]]]) -> list[dict[str, Any]]:
        """The items among ``keys`` (distinct), strongly consistent, in any order."""
        items: list[dict[str, Any]] = []
        for first in range(0, len(keys), _BATCH_GET):
            request: dict[str, Any] = {
                self._table: {
                    "Keys": list(keys[first : first + _BATCH_GET]),
                    "ConsistentRead": True,
                },
            }
            for attempt in range(_UNPROCESSED_RETRIES):
                reply = self._call("batch_get_item", RequestItems=request)
                items.extend(reply.get("Responses", {}).get(self._table, []))
                request = dict(reply.get("UnprocessedKeys") or {})
                if not request:
                    break
                time.sleep(min(0.05 * 2**attempt, 1.0))  # backoff the service asks for
            else:
                raise StoreError("circle store (dynamodb) read: keys stayed unprocessed")
        return items

    def read(self, context: str, collection: str, ids: Sequence[str]) -> dict[str, Stored]:
        keys = [self._key(context, _rec_sk(collection, i)) for i in dict.fromkeys(ids)]
        prefix = len(f"rec#{collection}#")
        found: dict[str, Stored] = {}
        for item in self._batch_get(keys):
            id_ = item["sk"]["S"][prefix:]
            found[id_] = Stored(id=id_, data=item["body"]["S"], version=item["ver"]["S"])
        return found

    def receipts(self, tasks: Sequence[tuple[str, str]]) -> list[Receipt | None]:
        wanted = list(dict.fromkeys((encode_context(c), t) for c, t in tasks))
        keys = [{"pk": _s(pk), "sk": _s(_receipt_sk(t))} for pk, t in wanted]
        now = int(time.time())
        found = {(i["pk"]["S"], i["sk"]["S"]): _receipt_of(i, now) for i in self._batch_get(keys)}
        return [found.get((encode_context(c), _receipt_sk(t))) for c, t in tasks]

    def scan(
        self, context: str, collection: str, offset: int, limit: int, max_bytes: int | None = None
    ) -> Page:
        stamp = self._stamp(context, f"col#{collection}")
        if limit <= 0:
            return Page(records=(), stamp=stamp)
        prefix = f"rec#{collection}#"
        items = self._query(context, prefix, offset + limit)[offset:]
        records = [
            Stored(id=i["sk"]["S"][len(prefix) :], data=i["body"]["S"], version=i["ver"]["S"])
            for i in items
        ]
        return cap_page(records, stamp, max_bytes)

    def members(self, context: str) -> Members:
        stamp = self._stamp(context, "meta")
        items = self._query(context, "member#", None)
        return Members(ids=frozenset(i["sk"]["S"][len("member#") :] for i in items), stamp=stamp)

    # --- commit --------------------------------------------------------------
    def _apply(self, context: str, change: Change, receipt: Receipt | None) -> None:
        writes, member_writes, expected = change.writes, change.member_writes, change.expected
        token = os.urandom(8).hex()
        ops: list[dict[str, Any]] = []
        what: list[str] = []
        written = {(w.collection, w.id) for w in writes}
        if receipt is not None:  # first: its failure wins over any conflict
            ops.append(self._receipt_put(context, receipt))
            what.append("receipt")

        for w in writes:
            op: dict[str, Any] = {"TableName": self._table}
            op.update(self._record_condition(expected.records.get((w.collection, w.id))))
            key = self._key(context, _rec_sk(w.collection, w.id))
            if w.data is None:
                ops.append({"Delete": {**op, "Key": key}})
            else:
                item = {**key, "ver": _s(token), "body": _s(w.data)}
                ops.append({"Put": {**op, "Item": item}})
            what.append(f"record {w.collection}/{w.id}")
        for (collection, id_), version in expected.records.items():
            if (collection, id_) not in written:
                ops.append(
                    {
                        "ConditionCheck": {
                            "TableName": self._table,
                            "Key": self._key(context, _rec_sk(collection, id_)),
                            **self._record_condition(version),
                        }
                    }
                )
                what.append(f"record {collection}/{id_}")
        touched = dict.fromkeys(w.collection for w in writes)
        for collection in {**touched, **dict.fromkeys(expected.collections)}:
            ops.append(
                self._stamp_op(
                    context,
                    f"col#{collection}",
                    token if collection in touched else None,
                    expected.collections.get(collection),
                )
            )
            what.append(f"collection {collection}")
        for m in member_writes:
            key = self._key(context, f"member#{m.member_id}")
            ops.append(
                {"Put": {"TableName": self._table, "Item": key}}
                if m.present
                else {"Delete": {"TableName": self._table, "Key": key}}
            )
            what.append(f"member {m.member_id}")
        if member_writes or expected.members is not None:
            ops.append(
                self._stamp_op(context, "meta", token if member_writes else None, expected.members)
            )
            what.append("the member set")

        try:
            self._client.transact_write_items(TransactItems=ops)
        except ClientError as exc:
            reasons = exc.response.get("CancellationReasons") or []
            if receipt is not None and reasons and reasons[0].get("Code") in _CONFLICT_CODES:
                stored = self._stored_receipt(context, receipt.task_id)
                if stored is not None and stored.covers(receipt):
                    raise TaskCommitted(stored) from exc
            for index, reason in enumerate(reasons):
                if reason.get("Code") in _CONFLICT_CODES:
                    raise StoreConflict(what[index] if index < len(what) else "data") from exc
            raise StoreError(f"circle store (dynamodb) commit failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"circle store (dynamodb) commit failed: {exc}") from exc

    def _receipt_put(self, context: str, receipt: Receipt) -> dict[str, Any]:
        """Store ``receipt`` unless an unexpired receipt of the same task is there."""
        now = int(time.time())
        item = {
            **self._key(context, _receipt_sk(receipt.task_id)),
            "attempt": {"N": str(receipt.attempt)},
            "fingerprint": _s(receipt.fingerprint),
            "expires": {"N": str(now + self._receipt_ttl_s)},
        }
        output = receipt.output
        if output is not None and len(output.encode("utf-8")) <= _MAX_RECEIPT_OUTPUT_BYTES:
            item["output"] = _s(output)
        return {
            "Put": {
                "TableName": self._table,
                "Item": item,
                # Replace it unless it is this task's (Receipt.covers, negated).
                "ConditionExpression": (
                    "attribute_not_exists(sk) OR attribute_not_exists(#fp) OR #fp <> :fp "
                    f"OR #expires <= :now OR #attempt {'<=' if receipt.first_claim else '='} :n"
                ),
                "ExpressionAttributeNames": {
                    "#fp": "fingerprint",
                    "#expires": "expires",
                    "#attempt": "attempt",
                },
                "ExpressionAttributeValues": {
                    ":fp": _s(receipt.fingerprint),
                    ":now": {"N": str(now)},
                    ":n": {"N": str(receipt.attempt)},
                },
            }
        }

    def _stored_receipt(self, context: str, task_id: str) -> Receipt | None:
        item = self._call(
            "get_item",
            TableName=self._table,
            Key=self._key(context, _receipt_sk(task_id)),
            ConsistentRead=True,
        ).get("Item")
        return None if item is None else _receipt_of(item, int(time.time()))

    @staticmethod
    def _record_condition(version: str | None) -> dict[str, Any]:
        if version is None:
            return {}  # a blind save: create or replace, whatever is there
        if version == ABSENT:
            return {"ConditionExpression": "attribute_not_exists(sk)"}
        return {
            "ConditionExpression": "ver = :ver",
            "ExpressionAttributeValues": {":ver": _s(version)},
        }

    def _stamp_op(
        self, context: str, sk: str, new: str | None, expected: str | None
    ) -> dict[str, Any]:
        """Set a stamp (``new``) and/or check it (``expected``) in one transaction item."""
        op: dict[str, Any] = {"TableName": self._table, "Key": self._key(context, sk)}
        values: dict[str, Any] = {}
        if expected is not None:
            if expected == ABSENT:
                op["ConditionExpression"] = "attribute_not_exists(stamp)"
            else:
                op["ConditionExpression"] = "stamp = :old"
                values[":old"] = _s(expected)
        if new is None:
            return {"ConditionCheck": {**op, "ExpressionAttributeValues": values} if values else op}
        op["UpdateExpression"] = "SET stamp = :new"
        values[":new"] = _s(new)
        return {"Update": {**op, "ExpressionAttributeValues": values}}

    # --- plumbing ------------------------------------------------------------
    def _call(self, method: str, **kwargs: Any) -> Mapping[str, Any]:
        try:
            result: Mapping[str, Any] = getattr(self._client, method)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"circle store (dynamodb) {method} failed: {exc}") from exc
        return result
