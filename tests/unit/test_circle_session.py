"""A task's session on an in-memory store: arguments, limits, staging, merged views."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rhailambda.circle import (
    CircleSession,
    CommitTooLarge,
    InsufficientAuthorization,
    InvalidArgument,
    Limits,
)
from rhailambda.circle.memory_store import MemoryCircleStore
from rhailambda.extension import ScriptContext


def open_session(
    store: MemoryCircleStore, caller: str = "alice", context: str = "alice", **limits: Any
) -> CircleSession:
    return CircleSession(store, ScriptContext(caller, context, "w", "t"), Limits(**limits))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.save("todo", "1", [1, 2]), "must be a map"),
        (lambda s: s.save("todo", "1", {"b": b"x"}), "not bytes"),
        (lambda s: s.save("todo", "1", {"x": float("nan")}), "NaN"),
        (lambda s: s.save("todo", "1", {1: "x"}), "keys must be strings"),
        (lambda s: s.save("todo", "1", {"x": "y" * 200}), "record too large"),
        (lambda s: s.save("other:circle", "1", {}), "invalid collection name"),
        (lambda s: s.get("todo", ""), "invalid id"),
        (lambda s: s.list_records("todo", -1, 5), "offset must be"),
        (lambda s: s.list_records("todo", 0, 11), "limit must be 0..10"),
        (lambda s: s.list_records("todo", True, 5), "offset must be"),
        (lambda s: s.find("todo", "", 1), "field must be"),
        (lambda s: s.find("todo", "x", b"raw"), "cannot compare"),
        (lambda s: s.add_member(""), "invalid member id"),
    ],
)
def test_bad_arguments_fail_with_a_message_and_stage_nothing(call: Any, message: str) -> None:
    store = MemoryCircleStore()
    s = open_session(store, max_list=10, max_record_bytes=100)
    with pytest.raises(InvalidArgument, match=message):
        call(s)
    s.commit()
    assert store.commits == 0


def test_an_empty_context_fails_on_first_use_only() -> None:
    store = MemoryCircleStore()
    s = open_session(store, caller="", context="")
    s.commit()  # a script that never touched the circle is fine
    with pytest.raises(InvalidArgument, match="CONTEXT_ID is empty"):
        s.get("todo", "1")


def test_stranger_error_is_a_permission_error_naming_the_problem() -> None:
    s = open_session(MemoryCircleStore(), caller="eve", context="alice")
    with pytest.raises(PermissionError) as info:
        s.save("todo", "1", {})
    assert isinstance(info.value, InsufficientAuthorization)
    assert "Insufficient authorization" in str(info.value)
    assert "'eve'" in str(info.value) and "'alice'" in str(info.value)


def test_too_many_writes_fail_at_the_write_that_overflows() -> None:
    store = MemoryCircleStore()
    s = open_session(store, max_writes=3)
    for i in range(3):
        s.save("c", str(i), {})
    s.save("c", "1", {"again": True})  # rewriting a staged record costs nothing
    with pytest.raises(CommitTooLarge, match="at most 3"):
        s.save("c", "x", {})
    s.commit()
    assert [r for r in open_session(store).list_records("c")] == [{}, {"again": True}, {}]


def test_the_backend_item_limit_counts_reads_too() -> None:
    store = MemoryCircleStore(max_items_per_commit=5)
    s = open_session(store)
    for i in range(4):
        s.get("c", str(i))  # four checked reads
    with pytest.raises(CommitTooLarge, match="at most 5"):
        s.save("d", "x", {})  # + one write + one collection stamp = 6


def test_reads_after_writes_fail_the_script_before_the_commit_would() -> None:
    store = MemoryCircleStore(max_items_per_commit=5)
    s = open_session(store)
    s.save("d", "x", {})  # 2 items: the write and the stamp of "d"
    s.get("c", "1")
    s.get("c", "2")
    s.list_records("e")  # 5
    with pytest.raises(CommitTooLarge, match="at most 5"):
        s.get("c", "3")


def test_staged_maps_are_copies() -> None:
    store = MemoryCircleStore()
    s = open_session(store)
    record = {"tags": ["a"]}
    s.save("c", "1", record)
    record["tags"].append("b")
    got = s.get("c", "1")
    assert got == {"tags": ["a"]}
    got["tags"].append("c")
    assert s.get("c", "1") == {"tags": ["a"]}


def test_commit_then_discard_leaves_the_store_as_committed() -> None:
    store = MemoryCircleStore()
    s = open_session(store)
    s.save("c", "1", {})
    s.commit()
    s.discard()
    assert open_session(store).get("c", "1") == {}
    failed = open_session(store)
    failed.save("c", "2", {})
    failed.delete("c", "1")
    failed.discard()
    failed.commit()
    assert [r for r in open_session(store).list_records("c")] == [{}]


def test_read_only_scripts_commit_nothing() -> None:
    store = MemoryCircleStore()
    s = open_session(store)
    s.list_records("c")
    s.get("c", "1")
    s.commit()
    assert store.commits == 0


def test_members_view_includes_staged_changes() -> None:
    store = MemoryCircleStore()
    s = open_session(store)
    assert s.add_member("carol") is True
    assert s.add_member("bob") is True
    assert s.add_member("bob") is False
    assert s.members() == ["bob", "carol"]
    assert s.remove_member("carol") is True
    assert s.members() == ["bob"]
    s.commit()
    assert open_session(store, caller="bob", context="bob").members() == []
    assert open_session(store, caller="bob", context="alice").members() == ["bob"]


ids = st.text(alphabet="abcde", min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(
    stored=st.sets(ids, max_size=12),
    ops=st.lists(st.tuples(st.booleans(), ids), max_size=10),
    offset=st.integers(0, 14),
    limit=st.integers(0, 14),
)
def test_list_pages_equal_the_merged_view(
    stored: set[str], ops: list[tuple[bool, str]], offset: int, limit: int
) -> None:
    store = MemoryCircleStore()
    setup = open_session(store)
    for i in stored:
        setup.save("c", i, {"id": i})
    setup.commit()
    s = open_session(store)
    model = set(stored)
    for is_save, i in ops:
        if is_save:
            s.save("c", i, {"id": i})
            model.add(i)
        else:
            assert s.delete("c", i) is (i in model)
            model.discard(i)
    got = [r["id"] for r in s.list_records("c", offset, limit)]
    assert got == sorted(model)[offset : offset + limit]
