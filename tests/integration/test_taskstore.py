"""Claim and finish against a real redis-server: the exactly-one-reply rules."""

import asyncio
import json
from typing import Any

import pytest
import redis

from rhailambda import protocol as p
from rhailambda.event import TaskRef
from rhailambda.resp import RespClient, parse_url
from rhailambda.resp_async import AsyncRespClient
from rhailambda.settings import ProtocolSettings
from rhailambda.shim.finishing import fail_tasks_async
from rhailambda.shim.source import Taken
from rhailambda.taskstore import FINISH_STEPS, Finish, TaskStore

LAYOUT = p.KeyLayout()


def _task(r: redis.Redis, task_id: str, **extra: str) -> None:
    fields: dict[Any, Any] = {
        "taskId": task_id,
        "script": "40 + 2",
        "callerId": "a",
        "contextId": "a",
        "status": "pending",
        "createdAt": "c",
        "updatedAt": "c",
        **extra,
    }
    r.hset(LAYOUT.task(task_id), mapping=fields)


def _finish(claim_ref: TaskRef, fields: p.TaskFields) -> Finish:
    return Finish(claim_ref, fields, "completed", output="42")


def test_pending_task_is_claimed_once(redis_client: redis.Redis, resp_client: RespClient) -> None:
    store = TaskStore(resp_client, ProtocolSettings())
    _task(redis_client, "t1")
    first = store.claim([TaskRef("t1", 1)])[0]
    assert first.state == "claimed" and first.fields is not None
    assert first.fields.script == "40 + 2"
    assert redis_client.hget(LAYOUT.task("t1"), "status") == "processing"
    again = store.claim([TaskRef("t1", 1)])[0]
    assert again.state == "skip" and again.current_status == "processing"


def test_newer_delivery_takes_over_and_stale_one_cannot_reply(
    redis_client: redis.Redis, resp_client: RespClient
) -> None:
    store = TaskStore(resp_client, ProtocolSettings())
    _task(redis_client, "t1")
    old = store.claim([TaskRef("t1", 1)])[0]
    new = store.claim([TaskRef("t1", 2)])[0]
    assert new.state == "claimed"
    assert old.fields is not None and new.fields is not None
    assert store.finish([_finish(old.ref, old.fields)]) == [0]
    assert store.finish([_finish(new.ref, new.fields)]) == [1]
    assert store.finish([_finish(new.ref, new.fields)]) == [0]
    replies = redis_client.lrange(LAYOUT.reply("t1"), 0, -1)
    assert len(replies) == 1
    assert json.loads(replies[0])["output"] == "42"
    assert 0 < redis_client.ttl(LAYOUT.reply("t1")) <= 3600
    assert not redis_client.exists(LAYOUT.task("t1"))


def test_finished_task_is_never_claimed_again(
    redis_client: redis.Redis, resp_client: RespClient
) -> None:
    store = TaskStore(resp_client, ProtocolSettings(preserve_tasks=True))
    _task(redis_client, "t1")
    claim = store.claim([TaskRef("t1", 1)])[0]
    assert claim.fields is not None
    store.finish([_finish(claim.ref, claim.fields)])
    task = redis_client.hgetall(LAYOUT.task("t1"))
    assert task["status"] == "completed" and task["output"] == "42"
    assert store.claim([TaskRef("t1", 5)])[0].state == "skip"


def test_missing_hash_is_reported(redis_client: redis.Redis, resp_client: RespClient) -> None:
    store = TaskStore(resp_client, ProtocolSettings())
    assert store.claim([TaskRef("ghost", 1)])[0].state == "missing"
    assert not redis_client.exists(LAYOUT.task("ghost"))


def test_fail_tasks_replies_once_and_spares_final_tasks(
    redis_client: redis.Redis, redis_url: str
) -> None:
    protocol = ProtocolSettings()
    _task(redis_client, "t1")
    _task(redis_client, "t2", status="completed")

    async def fail(ids: list[str], error: str) -> list[str]:
        client = AsyncRespClient(parse_url(redis_url))
        try:
            return await fail_tasks_async(client, protocol, ids, error)
        finally:
            client.close()

    assert asyncio.run(fail(["t1", "t2", "ghost"], "dead-lettered")) == ["t1", "ghost"]
    assert redis_client.ttl(LAYOUT.done("t1")) > 3600 - 5
    assert asyncio.run(fail(["t1", "ghost"], "again")) == []
    reply = json.loads(str(redis_client.lpop(LAYOUT.reply("t1")) or "{}"))
    assert (reply["status"], reply["error"]) == ("error", "dead-lettered")
    assert redis_client.llen(LAYOUT.reply("t2")) == 0


class _Crash(Exception):
    """The function dies here (nothing after this point reaches Redis)."""


@pytest.mark.parametrize("step", FINISH_STEPS)
def test_a_function_dying_between_any_two_steps_still_replies_once(
    step: str, redis_client: redis.Redis, resp_client: RespClient
) -> None:
    """Claim, stage, push, clean: stopped after ``step``, then delivered again."""

    def die(at: str) -> None:
        if at == step:
            raise _Crash(at)

    protocol = ProtocolSettings()
    _task(redis_client, "t1")
    dying = TaskStore(resp_client, protocol, fault=die, steps=True)
    claim = dying.claim([TaskRef("t1", 1)])[0] if step != "claimed" else None
    if claim is None:
        with pytest.raises(_Crash):
            dying.claim([TaskRef("t1", 1)])
    else:
        assert claim.fields is not None
        with pytest.raises(_Crash):
            dying.finish([_finish(claim.ref, claim.fields)])
    # the redelivery, by a healthy function
    store = TaskStore(resp_client, protocol, steps=True)
    again = store.claim([TaskRef("t1", 2)])[0]
    if again.state == "claimed":
        assert again.fields is not None
        done = store.finish([_finish(again.ref, again.fields)])
    else:
        assert again.state == "finishing", again
        fields = p.TaskFields.from_hash("t1", {})
        done = store.finish([Finish(again.ref, fields, "completed", mode="finishing")])
    assert done[0] in (0, 1)
    late = store.claim([TaskRef("t1", 3)])[0]
    assert late.state == "skip", "a finished task is never delivered again"
    replies = redis_client.lrange(LAYOUT.reply("t1"), 0, -1)
    assert len(replies) == 1, f"exactly one reply after a crash at {step}: {replies}"
    assert json.loads(replies[0])["output"] == "42"
    assert not redis_client.exists(LAYOUT.task("t1"))


@pytest.mark.parametrize("steps", [False, True], ids=["whole", "three-steps"])
def test_a_reply_key_of_the_wrong_type_is_reported_not_raised(
    redis_client: redis.Redis, resp_client: RespClient, steps: bool
) -> None:
    store = TaskStore(resp_client, ProtocolSettings(), steps=steps)
    _task(redis_client, "t1")
    _task(redis_client, "t2")
    redis_client.hset(LAYOUT.reply("t1"), "x", "1")  # someone's hash sits on t1's reply key
    claims = store.claim([TaskRef("t1", 1), TaskRef("t2", 1)])
    finishes = [_finish(c.ref, c.fields) for c in claims if c.fields is not None]
    assert store.finish(finishes) == [-1, 1], "t2 is answered; t1 is reported, not raised"
    assert redis_client.hget(LAYOUT.task("t1"), "status") == "completed", "t1's result is kept"
    assert redis_client.llen(LAYOUT.reply("t2")) == 1
    assert not redis_client.exists(LAYOUT.replied("t1")), "no sent marker for a reply never sent"


def test_the_shims_dead_letters_remember_ids_as_long_as_the_function(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """A dead-lettered signed task must not be replayable sooner than a finished one."""
    protocol = ProtocolSettings(replay_window_s=7200)
    _task(redis_client, "t1")

    async def fail() -> list[str]:
        client = AsyncRespClient(parse_url(redis_url))
        try:
            return await fail_tasks_async(client, protocol, ["t1"], "dead-lettered")
        finally:
            client.close()

    assert asyncio.run(fail()) == ["t1"]
    assert redis_client.ttl(LAYOUT.done("t1")) > 7200 - 5


@pytest.mark.parametrize("preserve", [False, True])
def test_a_task_whose_finish_died_after_staging_is_taken_again_and_answered(
    preserve: bool, redis_client: redis.Redis, redis_url: str, resp_client: RespClient
) -> None:
    """The shim must not drop a final task that holds an unsent reply (a chaos find)."""
    from support.shim_doubles import queue_source

    def die(at: str) -> None:
        if at == "staged":
            raise _Crash(at)

    protocol = ProtocolSettings(preserve_tasks=preserve)
    _task(redis_client, "t1")
    redis_client.lpush(LAYOUT.queue("w1"), "t1")
    dying = TaskStore(resp_client, protocol, fault=die, steps=True)

    async def scenario() -> list[Taken]:
        with queue_source(redis_client, redis_url, protocol=protocol) as source:
            (taken,) = (await source.take("w1", 10, block_s=0)).items
            claim = dying.claim([TaskRef("t1", taken.attempt)])[0]
            assert claim.fields is not None
            with pytest.raises(_Crash):
                dying.finish([_finish(claim.ref, claim.fields)])
            await source.hand_back("w1")  # the shim died too: its ids go back on the queue
        with queue_source(redis_client, redis_url, "s2", protocol=protocol) as other:
            return list((await other.take("w1", 10, block_s=0)).items)

    again = asyncio.run(scenario())
    assert [t.task_id for t in again] == ["t1"], "delivered, not dropped as final"
    runner_store = TaskStore(resp_client, protocol, steps=True)
    (finishing,) = runner_store.claim([TaskRef("t1", again[0].attempt)])
    assert finishing.state == "finishing"
    fields = p.TaskFields.from_hash("t1", {})
    runner_store.finish([Finish(finishing.ref, fields, "completed", mode="finishing")])
    assert len(redis_client.lrange(LAYOUT.reply("t1"), 0, -1)) == 1
