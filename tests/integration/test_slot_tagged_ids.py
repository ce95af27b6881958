"""Task ids the client makes up on a cluster carry their worker as a hash tag, so a
batch of one worker's tasks is one slot: one claim call and one finish call for all
of them, where plain ids (the Rust dispatcher's UUIDs) take a call per task and step."""

from __future__ import annotations

import pytest
import redis
from redis_cluster import ClusterUnderTest

from rhailambda import protocol as p
from rhailambda.client import Client
from rhailambda.event import TaskRef
from rhailambda.resp import RespClient
from rhailambda.settings import ProtocolSettings
from rhailambda.taskstore import REPLIED, Finish, TaskStore

L = p.KeyLayout()


def _script_calls(cluster: ClusterUnderTest) -> int:
    """Script calls run so far (EVAL the first time on a node, EVALSHA after; not an
    EVALSHA refused with NOSCRIPT), summed over the masters."""
    total = 0
    for node in cluster.masters():
        stats = cluster.client(node).info("commandstats")
        for command in ("cmdstat_eval", "cmdstat_evalsha"):
            row = {k: int(v) for k, v in stats.get(command, {}).items() if k.endswith("calls")}
            total += row.get("calls", 0) - row.get("failed_calls", 0) - row.get("rejected_calls", 0)
    return total


def _run_batch(store: TaskStore, task_ids: list[str], cluster: ClusterUnderTest) -> tuple[int, int]:
    """Claim and finish ``task_ids`` as a function would: (claim calls, finish calls)."""
    before = _script_calls(cluster)
    claims = store.claim([TaskRef(t, 1) for t in task_ids])
    claimed = _script_calls(cluster)
    finishes = []
    for claim in claims:
        assert claim.state == "claimed" and claim.fields is not None
        finishes.append(Finish(claim.ref, claim.fields, "completed", output=claim.ref.task_id))
    assert store.finish(finishes) == [REPLIED] * len(task_ids)
    return claimed - before, _script_calls(cluster) - claimed


@pytest.mark.cluster_only
def test_one_workers_batch_is_one_slot_with_the_ids_the_client_makes_up(
    redis_cluster: ClusterUnderTest, redis_url: str, resp_client: RespClient
) -> None:
    with Client(redis_url, wake_function="") as client:
        tagged = client.submit_many([("40 + 2", "w1", "c", "c")] * 20)
        plain = [f"plain-{i}" for i in range(5)]
        client.submit_many([("40 + 2", "w1", "c", "c", t) for t in plain])
        assert all(t.startswith("{w1}") for t in tagged)
        store = TaskStore(resp_client, ProtocolSettings())
        # 20 tasks: one claim call, one finish call (the whole finish, as on standalone)
        assert _run_batch(store, tagged, redis_cluster) == (1, 1)
        # plain ids: a slot each: a claim per task, and stage, push, clean per task
        assert _run_batch(store, plain, redis_cluster) == (5, 15)
        replies = client.wait_many(tagged + plain, timeout_s=10)
    assert {t: (r.status, r.output) for t, r in replies.items()} == {
        t: ("completed", t) for t in tagged + plain
    }
    for t in tagged + plain:  # exactly one reply each, and the hash cleaned up
        assert resp_client.execute("LLEN", L.reply(t)) == 0
        assert resp_client.execute("EXISTS", L.task(t)) == 0
        assert resp_client.execute("EXISTS", L.done(t)) == 1


@pytest.mark.cluster_only
def test_a_mixed_batch_finishes_each_task_its_way_with_one_reply_each(
    redis_cluster: ClusterUnderTest, redis_url: str, resp_client: RespClient
) -> None:
    with Client(redis_url, wake_function="") as client:
        ids = [
            *client.submit_many([("1", "w2", "c", "c")] * 3),
            *client.submit_many([("1", "w2", "c", "c", f"u{i}") for i in range(3)]),
        ]
        store = TaskStore(resp_client, ProtocolSettings())
        claims = store.claim([TaskRef(t, 1) for t in ids])
        fields = [c.fields for c in claims]
        assert all(f is not None for f in fields)
        order = [3, 0, 4, 1, 5, 2]  # interleaved: the answers come back in the batch's order
        finishes = []
        for i in order:
            status = "error" if i % 2 else "completed"
            finishes.append(Finish(claims[i].ref, fields[i], status, output="ok", error="bad"))  # type: ignore[arg-type]
        assert store.finish(finishes) == [REPLIED] * 6
        assert store.finish(finishes) == [0] * 6  # again (a re-sent finish): nothing new
        replies = client.wait_many(ids, timeout_s=10)
    assert {t: r.status for t, r in replies.items()} == {
        ids[i]: "error" if i % 2 else "completed" for i in range(6)
    }
    assert all(resp_client.execute("LLEN", L.reply(t)) == 0 for t in ids)


@pytest.mark.standalone_only("plain ids are the default there")
def test_plain_ids_on_a_standalone_server_unless_asked(
    redis_url: str, redis_client: redis.Redis
) -> None:
    with Client(redis_url, wake_function="") as client:
        (plain,) = client.submit_many([("1", "w3", "c", "c")])
    with Client(redis_url, wake_function="", slot_tagged_ids=True) as client:
        (tagged,) = client.submit_many([("1", "w3", "c", "c")])
    assert "{" not in plain and tagged.startswith("{w3}")
    assert redis_client.lrange(L.queue("w3"), 0, -1) == [tagged, plain]


def test_tasks_of_one_hash_tag_keep_markers_of_their_own(
    redis_url: str, resp_client: RespClient
) -> None:
    """Two ids of one tag: the first one's done marker does not make the second look
    finished (a signed second task would be refused as a replay), nor its reply sent."""
    with Client(redis_url, wake_function="") as client:
        first, second = client.submit_many([("1", "w4", "c", "c", t) for t in ("{g}1", "{g}2")])
        store = TaskStore(resp_client, ProtocolSettings())
        (claim,) = store.claim([TaskRef(first, 1)])
        assert claim.fields is not None
        assert store.finish([Finish(claim.ref, claim.fields, "completed", output="1")]) == [1]
        (other,) = store.claim([TaskRef(second, 1)])
        assert other.state == "claimed" and not other.finished_before
        assert other.fields is not None
        assert store.finish([Finish(other.ref, other.fields, "completed", output="2")]) == [1]
        replies = client.wait_many([first, second], timeout_s=10)
    assert {t: r.output for t, r in replies.items()} == {first: "1", second: "2"}
    assert L.done(first) != L.done(second) and L.replied(first) != L.replied(second)
