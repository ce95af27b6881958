"""A real shim drains while the cluster under it changes: slots migrate, masters fail over.

Three masters of the backend's kind (Redis 7 or Valkey 9), a shim process with local
workers running the real engine, and the cluster reshaped mid-drain, driven by
progress (replies counted), not by the clock:

- migration: the queue's slot (its in-flight list and dead letters move with it, one
  hash tag) and the slots of tasks not yet answered (their hashes and reply lists)
  move to other masters; one migration is left half-done for a while, so the shim and
  the function meet ASK redirects, then finished;
- failover: ``CLUSTER FAILOVER`` on the replica of the queue's master, then on that
  of a master holding unanswered tasks.

Either way every task must get exactly one reply, the right one, and none may be
dead-lettered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis_cluster import ClusterUnderTest
from redis_server import RedisServer

from rhailambda.client import Client
from rhailambda.protocol import KeyLayout

pytestmark = [pytest.mark.cluster_only, pytest.mark.slow]

L = KeyLayout()
WORKER = "moves"
DEADLINE_S = 240


def start_shim(url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": url, "RHAILAMBDA_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "-m", "rhailambda", "shim", "--workers", WORKER, "--shim-id", "mover",
         "--local-workers", "2", "--batch-size", "20", "--block-s", "1", "--lease-s", "5",
         "--max-attempts", "20", "--backoff-cap-s", "1", "--function-timeout-s", "10"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def reply_counts(client: redis.RedisCluster, ids: list[str]) -> list[int]:
    pipe = client.pipeline()
    for task_id in ids:
        pipe.llen(L.reply(task_id))
    return [int(n) for n in pipe.execute()]


def other_master(cluster: ClusterUnderTest, key: str) -> RedisServer:
    owner = cluster.node_for_key(key)
    return next(m for m in cluster.masters() if m.port != owner.port)


@pytest.fixture
def shim_and_tasks(
    private_cluster: Callable[..., ClusterUnderTest], request: pytest.FixtureRequest
) -> Iterator[tuple[ClusterUnderTest, list[str], redis.RedisCluster]]:
    n_tasks, replicas = request.param
    cluster = private_cluster(masters=3, replicas_per_master=replicas)
    with Client(cluster.url) as client:
        ids = client.submit_many(
            [(f"let x = {i}; x * 2", WORKER, "ctx", "caller") for i in range(n_tasks)]
        )
    probe = cluster.cluster_client()
    shim = start_shim(cluster.url)
    try:
        yield cluster, ids, probe
    finally:
        shim.send_signal(signal.SIGTERM)
        try:
            _, err = shim.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            shim.kill()
            _, err = shim.communicate()
        print(err.decode(errors="replace")[-6000:])  # shown when the test fails
        probe.close()


def drain_with(
    ids: list[str], probe: redis.RedisCluster, events: list[Callable[[list[str]], None]]
) -> None:
    """Poll the replies; run the next event each time another share of the tasks is done."""
    started = time.monotonic()
    step = len(ids) // (len(events) + 1)
    next_at = step
    while True:
        counts = reply_counts(probe, ids)
        done = len(counts) - counts.count(0)
        if done == len(ids):
            return
        assert time.monotonic() - started < DEADLINE_S, f"{counts.count(0)} tasks unanswered"
        if events and done >= next_at:
            unanswered = [t for t, c in zip(ids, counts, strict=True) if c == 0]
            events.pop(0)(unanswered)
            next_at = done + step
        time.sleep(0.02)  # polling the outcome with a deadline, not synchronising


def assert_exactly_one_right_reply(ids: list[str], probe: redis.RedisCluster) -> None:
    counts = reply_counts(probe, ids)
    assert counts.count(0) == 0, "lost tasks"
    assert [t for t, c in zip(ids, counts, strict=True) if c > 1] == [], "duplicate replies"
    pipe = probe.pipeline()
    for task_id in ids:
        pipe.lindex(L.reply(task_id), 0)
    wrong = [
        (i, r)
        for i, r in enumerate(pipe.execute())
        if '"status":"completed"' not in r or f'"output":"{2 * i}"' not in r
    ]
    assert wrong == [], wrong[:3]
    assert probe.llen(L.dead_letter(WORKER)) == 0


@pytest.mark.skip(
    reason="open in issue 11: after ten back-to-back slot migrations the test cluster's "
    "nodes still disagree on slots when the fixture's wait ends (ClusterUnderTest.wait_ok); "
    "an earlier run stalled at 3,040 of 5,000 replies with nothing logged"
)
@pytest.mark.parametrize("shim_and_tasks", [(5000, 0)], indirect=True)
def test_slots_migrate_while_the_shim_drains_5000_tasks(
    shim_and_tasks: tuple[ClusterUnderTest, list[str], redis.RedisCluster],
) -> None:
    cluster, ids, probe = shim_and_tasks
    queue = L.queue(WORKER)

    def move_queue(_: list[str]) -> None:
        cluster.migrate_slot(cluster.key_slot(queue), other_master(cluster, queue))

    def move_task_slots(unanswered: list[str]) -> None:
        for task_id in unanswered[:20:2]:  # tasks about to be taken: hash and reply slots
            for key in (L.task(task_id), L.reply(task_id)):
                cluster.migrate_slot(cluster.key_slot(key), other_master(cluster, key))

    drain_with(
        ids,
        probe,
        [move_queue, move_task_slots, move_queue, move_task_slots],
    )
    assert_exactly_one_right_reply(ids, probe)


@pytest.mark.parametrize("shim_and_tasks", [(2000, 0)], indirect=True)
def test_a_half_done_migration_is_ridden_out(
    shim_and_tasks: tuple[ClusterUnderTest, list[str], redis.RedisCluster],
) -> None:
    cluster, ids, probe = shim_and_tasks
    queue = L.queue(WORKER)

    def half_migration_for_a_while(unanswered: list[str]) -> None:
        # A slot with some keys moved answers ASK for those and TRYAGAIN for a script
        # whose keys are split: held like that for a while (as an operator's live
        # resharding is), then finished. Both the take (the queue's slot) and the
        # function (a task's slot) must ride it out.
        key = L.task(unanswered[len(unanswered) // 2])
        half_done = [
            cluster.migrate_slot(cluster.key_slot(k), other_master(cluster, k), stop_halfway=True)
            for k in (key, queue)
        ]
        time.sleep(2.0)  # the scenario's duration, not a synchronisation
        for migration in half_done:
            migration.finish()

    drain_with(ids, probe, [half_migration_for_a_while])
    assert_exactly_one_right_reply(ids, probe)


@pytest.mark.parametrize("shim_and_tasks", [(2000, 1)], indirect=True)
def test_masters_fail_over_mid_drain(
    shim_and_tasks: tuple[ClusterUnderTest, list[str], redis.RedisCluster],
) -> None:
    cluster, ids, probe = shim_and_tasks
    queue = L.queue(WORKER)

    def fail_over_the_queue(_: list[str]) -> None:
        cluster.failover(cluster.node_for_key(queue))

    def fail_over_a_task_master(unanswered: list[str]) -> None:
        queue_master = cluster.node_for_key(queue)
        for task_id in unanswered[:50]:
            owner = cluster.node_for_key(L.task(task_id))
            if owner.port != queue_master.port:
                cluster.failover(owner)
                return
        cluster.failover(next(m for m in cluster.masters() if m.port != queue_master.port))

    drain_with(ids, probe, [fail_over_the_queue, fail_over_a_task_master])
    assert_exactly_one_right_reply(ids, probe)
