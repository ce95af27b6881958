"""The task ids the client makes up."""

from __future__ import annotations

import uuid

from rhailambda.client import MAX_ID_BYTES, new_task_id
from rhailambda.slots import key_slot


def test_a_tagged_id_hashes_like_its_worker_whatever_the_uuid() -> None:
    ids = [new_task_id("worker1", True) for _ in range(50)]
    assert len(set(ids)) == 50
    assert {key_slot(f"rhailib:{t}") for t in ids} == {key_slot("worker1")}
    assert {key_slot(f"rhailib:reply:{t}") for t in ids} == {key_slot("worker1")}
    assert all(uuid.UUID(t.removeprefix("{worker1}")) for t in ids)


def test_plain_ids_and_a_worker_too_long_to_tag() -> None:
    assert uuid.UUID(new_task_id("worker1", False))
    long_worker = "w" * (MAX_ID_BYTES - 30)
    untagged = new_task_id(long_worker, True)  # a tag would pass MAX_ID_BYTES
    assert uuid.UUID(untagged)
