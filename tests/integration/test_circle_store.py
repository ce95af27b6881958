"""The circle store contract, run against every backend: memory, Redis, DynamoDB (moto).

Scripts reach the store through sessions, so most tests drive a
:class:`CircleSession` the way the function does: open, call the ``db::`` and
``circle::`` functions as Python functions, then commit (or discard).
Set ``AWS_ENDPOINT_URL`` to run the DynamoDB cases against LocalStack instead of
an in-process moto server.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from support.aws_emulator import create_table, dynamodb_client

from rhailambda.circle import (
    CircleSession,
    CircleStore,
    CommitTooLarge,
    InsufficientAuthorization,
    Limits,
    StoreConflict,
    TaskCommitted,
)
from rhailambda.circle.dynamo_store import DynamoCircleStore
from rhailambda.circle.memory_store import MemoryCircleStore
from rhailambda.circle.redis_store import RedisCircleStore
from rhailambda.circle.store import Expectations, RecordWrite
from rhailambda.extension import Receipt, ScriptContext
from rhailambda.protocol import KeyLayout
from rhailambda.resp import RespClient, from_url

TRICKY_CONTEXTS = ["alice", "alice}", "{alice}", "alice:rec:todo", "alice%3A", "alice:", "é {x}#"]


@pytest.fixture(params=["memory", "redis", "dynamodb"])
def store(request: pytest.FixtureRequest) -> Iterator[CircleStore]:
    if request.param == "memory":
        yield MemoryCircleStore()
    elif request.param == "redis":
        with from_url(request.getfixturevalue("redis_url")) as client:
            yield RedisCircleStore(client)
    else:
        dynamo = dynamodb_client(request.getfixturevalue("moto_endpoint"))
        table = f"circle-{uuid.uuid4().hex[:12]}"
        create_table(dynamo, table)
        yield DynamoCircleStore(dynamo, table)


def session(
    store: CircleStore, caller: str, context: str | None = None, task_id: str = "t1"
) -> CircleSession:
    ctx = ScriptContext(caller, context if context is not None else caller, "w1", task_id)
    return CircleSession(store, ctx, Limits())


def committed(store: CircleStore, caller: str, script: Any, context: str | None = None) -> Any:
    """Run ``script(session)`` and commit, as the function does after success."""
    s = session(store, caller, context)
    result = script(s)
    s.commit()
    return result


# --- records -----------------------------------------------------------------
def test_save_get_delete_round_trip_keeps_values(store: CircleStore) -> None:
    record = {"n": 1, "x": 1.5, "ok": True, "s": "héllo ✓", "none": None, "l": [1, {"a": []}]}
    committed(store, "alice", lambda s: s.save("things", "k:{1}", record))
    assert session(store, "alice").get("things", "k:{1}") == record
    assert session(store, "alice").get("things", "other") is None
    assert committed(store, "alice", lambda s: s.delete("things", "k:{1}")) is True
    assert committed(store, "alice", lambda s: s.delete("things", "k:{1}")) is False
    assert session(store, "alice").get("things", "k:{1}") is None


def test_list_is_ordered_by_id_and_pages(store: CircleStore) -> None:
    ids = ["b", "a", "c:1", "A", "é", "c", "0"]

    def fill(s: CircleSession) -> None:
        for i in ids:
            s.save("todo", i, {"id": i})

    committed(store, "alice", fill)
    s = session(store, "alice")
    assert [r["id"] for r in s.list_records("todo")] == sorted(ids)
    assert [r["id"] for r in s.list_records("todo", 2, 3)] == sorted(ids)[2:5]
    assert s.list_records("todo", 10, 5) == []
    assert s.list_records("empty") == []


def test_reads_see_the_scripts_own_staged_writes(store: CircleStore) -> None:
    committed(store, "alice", lambda s: [s.save("todo", i, {"id": i}) for i in "abcde"])
    s = session(store, "alice")
    s.save("todo", "bb", {"id": "bb"})
    s.delete("todo", "a")
    s.save("todo", "c", {"id": "c", "done": True})
    assert s.get("todo", "bb") == {"id": "bb"}
    assert s.get("todo", "a") is None
    assert [r["id"] for r in s.list_records("todo")] == ["b", "bb", "c", "d", "e"]
    assert [r["id"] for r in s.list_records("todo", 1, 2)] == ["bb", "c"]
    assert s.find("todo", "done", True) == [{"id": "c", "done": True}]
    s.discard()
    assert [r["id"] for r in session(store, "alice").list_records("todo")] == list("abcde")


def test_find_matches_by_exact_value_and_type(store: CircleStore) -> None:
    rows = {"1": {"n": 1}, "2": {"n": 1.0}, "3": {"n": True}, "4": {"n": "1"}, "5": {"m": 1}}
    committed(store, "alice", lambda s: [s.save("c", k, v) for k, v in rows.items()])
    s = session(store, "alice")
    assert s.find("c", "n", 1) == [{"n": 1}]
    assert s.find("c", "n", "1") == [{"n": "1"}]
    assert s.find("c", "n", True) == [{"n": True}]
    assert s.find("c", "missing", 1) == []


# --- isolation ---------------------------------------------------------------
def test_circles_never_see_each_others_data(store: CircleStore) -> None:
    for context in TRICKY_CONTEXTS:
        committed(store, context, lambda s, c=context: s.save("todo", "x", {"owner": c}))
        committed(store, context, lambda s, c=context: s.add_member(f"m-{c}"))
    for context in TRICKY_CONTEXTS:
        s = session(store, context)
        assert s.list_records("todo") == [{"owner": context}]
        assert s.get("todo", "x") == {"owner": context}
        assert s.members() == [f"m-{context}"]


@pytest.mark.standalone_only("KEYS * reads one node of a cluster")
def test_redis_keys_stay_under_the_circles_hash_tag(
    redis_client: Any, resp_client: RespClient
) -> None:
    client = redis_client
    store = RedisCircleStore(resp_client)
    for context in TRICKY_CONTEXTS:
        committed(store, context, lambda s: s.save("todo", "a}:{b", {"v": 1}))
    keys = [str(k) for k in client.keys("*")]  # a test may look at everything
    tags = {k[k.index("{") + 1 : k.index("}")] for k in keys}
    assert len(tags) == len(TRICKY_CONTEXTS)
    for key in keys:
        assert key.count("{") == 1 and key.count("}") == 1, key


# --- authorization -----------------------------------------------------------
def test_owner_and_members_read_and_write_strangers_get_nothing(store: CircleStore) -> None:
    committed(store, "alice", lambda s: s.add_member("bob"))
    committed(store, "bob", lambda s: s.save("todo", "1", {"by": "bob"}), context="alice")
    assert session(store, "alice").get("todo", "1") == {"by": "bob"}
    assert session(store, "bob", "alice").members() == ["bob"]

    stranger = session(store, "eve", "alice")
    for call in (
        lambda: stranger.get("todo", "1"),
        lambda: stranger.save("todo", "1", {"by": "eve"}),
        lambda: stranger.delete("todo", "1"),
        lambda: stranger.list_records("todo"),
        lambda: stranger.find("todo", "by", "bob"),
        lambda: stranger.members(),
        lambda: stranger.add_member("eve"),
    ):
        with pytest.raises(InsufficientAuthorization, match="Insufficient authorization"):
            call()
    stranger.commit()
    assert session(store, "alice").get("todo", "1") == {"by": "bob"}

    member = session(store, "bob", "alice")
    with pytest.raises(PermissionError, match="Insufficient authorization"):
        member.add_member("eve")
    with pytest.raises(PermissionError, match="Insufficient authorization"):
        member.remove_member("bob")


def test_removed_member_loses_access(store: CircleStore) -> None:
    committed(store, "alice", lambda s: s.add_member("bob"))
    assert committed(store, "alice", lambda s: s.remove_member("bob")) is True
    assert committed(store, "alice", lambda s: s.remove_member("bob")) is False
    with pytest.raises(InsufficientAuthorization):
        session(store, "bob", "alice").get("todo", "1")


def test_member_removed_while_its_script_runs_cannot_write(store: CircleStore) -> None:
    committed(store, "alice", lambda s: s.add_member("bob"))
    bob = session(store, "bob", "alice")
    bob.save("todo", "1", {"by": "bob"})
    committed(store, "alice", lambda s: s.remove_member("bob"))
    with pytest.raises(StoreConflict):
        bob.commit()
    assert session(store, "alice").get("todo", "1") is None


# --- concurrency -------------------------------------------------------------
def test_concurrent_read_modify_write_conflicts_and_changes_nothing(store: CircleStore) -> None:
    committed(store, "alice", lambda s: s.save("c", "n", {"count": 0}))
    first, second = session(store, "alice"), session(store, "alice")
    for s in (first, second):
        count = s.get("c", "n")["count"]  # type: ignore[index]
        s.save("c", "n", {"count": count + 1})
        s.save("c", f"log-{id(s)}", {"seen": count})
    first.commit()
    with pytest.raises(StoreConflict):
        second.commit()
    assert session(store, "alice").get("c", "n") == {"count": 1}
    assert len(session(store, "alice").list_records("c")) == 2  # n + first's log only


def test_a_list_notices_records_added_meanwhile(store: CircleStore) -> None:
    s = session(store, "alice")
    if not s.list_records("todo"):
        s.save("summary", "todo", {"empty": True})
    committed(store, "alice", lambda t: t.save("todo", "1", {}))
    with pytest.raises(StoreConflict):
        s.commit()


def test_deleted_and_recreated_record_is_not_mistaken_for_unchanged(store: CircleStore) -> None:
    committed(store, "alice", lambda s: s.save("c", "n", {"v": 1}))
    s = session(store, "alice")
    assert s.get("c", "n") == {"v": 1}
    s.save("c", "other", {"from": "stale"})
    committed(store, "alice", lambda t: t.delete("c", "n"))
    committed(store, "alice", lambda t: t.save("c", "n", {"v": 1}))
    with pytest.raises(StoreConflict):
        s.commit()


def test_blind_saves_do_not_conflict(store: CircleStore) -> None:
    first, second = session(store, "alice"), session(store, "alice")
    first.save("c", "n", {"v": 1})
    second.save("c", "n", {"v": 2})
    first.commit()
    second.commit()
    assert session(store, "alice").get("c", "n") == {"v": 2}


def test_parallel_increments_lose_no_update(store: CircleStore) -> None:
    workers, rounds = 8, 5

    def increment() -> None:
        for _ in range(rounds):
            while True:
                s = session(store, "alice")
                current = s.get("c", "n") or {"count": 0}
                s.save("c", "n", {"count": current["count"] + 1})
                try:
                    s.commit()
                    break
                except StoreConflict:
                    continue

    threads = [threading.Thread(target=increment) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert session(store, "alice").get("c", "n") == {"count": workers * rounds}


# --- limits ------------------------------------------------------------------
def test_commit_too_large_for_the_backend_fails_clearly_and_writes_nothing(
    store: CircleStore,
) -> None:
    limit = store.max_items_per_commit
    if limit is None:
        committed(store, "alice", lambda s: [s.save("c", str(i), {}) for i in range(150)])
        assert len(session(store, "alice").list_records("c")) == 150
        return
    s = session(store, "alice")
    with pytest.raises(CommitTooLarge, match=f"at most {limit}"):
        for i in range(limit + 1):
            s.save("c", str(i), {})
    s.discard()
    writes = [RecordWrite("c", str(i), "{}") for i in range(limit + 1)]
    with pytest.raises(CommitTooLarge):
        store.commit("alice", writes, [], Expectations())
    assert session(store, "alice").list_records("c") == []


# --- receipts ------------------------------------------------------------------
def increment(s: CircleSession) -> int:
    count = int((s.get("c", "n") or {"count": 0})["count"]) + 1
    s.save("c", "n", {"count": count})
    return count


def test_a_commit_keeps_the_tasks_receipt_with_its_writes(store: CircleStore) -> None:
    s = session(store, "alice", task_id="t1")
    output = str(increment(s))
    s.commit(Receipt("t1", output, 1, "2026-01-01T00:00:00Z"))
    found = store.receipts([("alice", "t1"), ("alice", "t2"), ("bob", "t1"), ("alice", "t1")])
    receipt = Receipt("t1", "1", 1, "2026-01-01T00:00:00Z")
    assert found == [receipt, None, None, receipt]
    assert store.receipts([]) == []


def test_no_writes_no_receipt(store: CircleStore) -> None:
    s = session(store, "alice", task_id="t1")
    s.get("c", "n")
    s.list_records("c")
    s.commit(Receipt("t1", "read only", 1, "c1"))
    store.commit("alice", [], [], Expectations(), Receipt("t1", "nothing", 1, "c1"))
    failed = session(store, "alice", task_id="t1")
    failed.save("c", "n", {"count": 1})
    failed.discard()  # the script failed
    failed.commit(Receipt("t1", "failed", 1, "c1"))
    assert store.receipts([("alice", "t1")]) == [None]
    assert session(store, "alice").get("c", "n") is None


def test_a_second_run_of_the_task_cannot_commit_again(store: CircleStore) -> None:
    """Two deliveries of one task overlapping: the second commit applies nothing."""
    first, second = session(store, "alice"), session(store, "alice")
    assert increment(first) == increment(second) == 1
    first.commit(Receipt("t1", "1", 1, "c1"))
    with pytest.raises(TaskCommitted) as info:
        second.commit(Receipt("t1", "1", 2, "c1"))
    assert info.value.receipt == Receipt("t1", "1", 1, "c1")
    assert session(store, "alice").get("c", "n") == {"count": 1}
    assert store.receipts([("alice", "t1")]) == [Receipt("t1", "1", 1, "c1")]


def test_a_new_task_under_a_reused_id_is_not_mistaken_for_the_old_one(
    store: CircleStore,
) -> None:
    committed(store, "alice", increment)  # no receipt: a test commit
    old = session(store, "alice")
    increment(old)
    old.commit(Receipt("t1", "2", 1, "created-first"))
    new = session(store, "alice")
    increment(new)
    new.commit(Receipt("t1", "3", 1, "created-again"))  # not refused
    assert session(store, "alice").get("c", "n") == {"count": 3}
    assert store.receipts([("alice", "t1")]) == [Receipt("t1", "3", 1, "created-again")]


def test_receipts_of_tricky_contexts_stay_apart(store: CircleStore) -> None:
    for i, context in enumerate(TRICKY_CONTEXTS):
        s = session(store, context, task_id="t{1}")
        s.save("c", "n", {"i": i})
        s.commit(Receipt("t{1}", str(i), 1, "c1"))
    found = store.receipts([(c, "t{1}") for c in TRICKY_CONTEXTS])
    assert [r.output if r else None for r in found] == [str(i) for i in range(len(found))]


def test_memory_receipts_expire_after_their_ttl() -> None:
    now = [1000.0]
    store = MemoryCircleStore(receipt_ttl_s=60, clock=lambda: now[0])
    s = session(store, "alice")
    increment(s)
    s.commit(Receipt("t1", "1", 1, "c1"))
    now[0] += 59
    assert store.receipts([("alice", "t1")]) == [Receipt("t1", "1", 1, "c1")]
    now[0] += 2
    assert store.receipts([("alice", "t1")]) == [None]
    again = session(store, "alice")
    increment(again)
    again.commit(Receipt("t1", "2", 2, "c1"))  # an expired receipt no longer blocks
    assert store.receipts([("alice", "t1")]) == [Receipt("t1", "2", 2, "c1")]


@pytest.mark.standalone_only("KEYS * reads one node of a cluster")
def test_redis_receipt_expires_with_the_reply_ttl_in_the_circles_slot(
    resp_client: RespClient, redis_client: Any
) -> None:
    store = RedisCircleStore(resp_client, receipt_ttl_s=120)
    s = session(store, "al:ice}", task_id="t1")
    increment(s)
    s.commit(Receipt("t1", "1", 1, "c1"))
    key = KeyLayout().circle_receipt("al%3Aice%7D", "t1")
    assert key == "rhailambda:circle:{al%3Aice%7D}:receipt:t1"
    assert 100 < redis_client.ttl(key) <= 120
    assert {k[k.index("{") :].split("}")[0] for k in redis_client.keys("*")} == {"{al%3Aice%7D"}


def test_dynamodb_receipt_has_a_ttl_attribute_and_expired_ones_are_ignored(
    moto_endpoint: str,
) -> None:
    client: Any = dynamodb_client(moto_endpoint)
    table = f"circle-{uuid.uuid4().hex[:12]}"
    create_table(client, table)
    store = DynamoCircleStore(client, table, receipt_ttl_s=120)
    s = session(store, "alice")
    increment(s)
    s.commit(Receipt("t1", "1", 1, "c1"))
    key = {"pk": {"S": "alice"}, "sk": {"S": "receipt#t1"}}
    item = client.get_item(TableName=table, Key=key)["Item"]
    assert 100 < int(item["expires"]["N"]) - time.time() <= 120
    past = {":past": {"N": str(int(time.time()) - 1)}}
    client.update_item(
        TableName=table, Key=key, UpdateExpression="SET expires = :past",
        ExpressionAttributeValues=past,
    )  # fmt: skip
    assert store.receipts([("alice", "t1")]) == [None]  # TTL deletion lags: ignore it
    again = session(store, "alice")
    increment(again)
    again.commit(Receipt("t1", "2", 2, "c1"))
    assert store.receipts([("alice", "t1")]) == [Receipt("t1", "2", 2, "c1")]


def test_dynamodb_keeps_one_item_for_the_receipt_and_drops_a_huge_output(
    moto_endpoint: str,
) -> None:
    client = dynamodb_client(moto_endpoint)
    table = f"circle-{uuid.uuid4().hex[:12]}"
    create_table(client, table)
    store = DynamoCircleStore(client, table)
    assert store.max_items_per_commit == 99
    s = session(store, "alice")
    for i in range(98):  # 98 writes + the collection's stamp + the receipt = 100
        s.save("c", str(i), {})
    s.commit(Receipt("t1", "x" * 500_000, 1, "c1"))
    assert len(session(store, "alice").list_records("c")) == 98
    assert store.receipts([("alice", "t1")]) == [Receipt("t1", None, 1, "c1")]
