"""A real shim drains while the cluster under it changes: slots migrate, masters fail over.

Three masters of the backend's kind (Redis 7 or Valkey 9), a shim process with local
workers running the real engine, and the cluster reshaped mid-drain, driven by
progress (replies counted), not by the clock:

- migration: the queue's slot (its in-flight list and dead letters move with it, one
  hash tag) and the slots of tasks not yet answered (their hashes and reply lists)
  move to other masters, the tasks submitted in waves so that each move is followed
  by tasks the shim has to take from the queue's new owner (its blocked ``BLMOVE``
  must follow the slot); one migration is left half-done for a while, so the shim and
  the function meet ASK redirects, then finished;
- failover: ``CLUSTER FAILOVER`` on the replica of the queue's master, then on that
  of a master holding unanswered tasks, each followed by a wave of tasks.

The shim drains faster than the cluster changes (about 2,000 tasks/s against 0.2 to
0.7 s per change), so a change that only waited for its share of replies could come
after the last one: the waves make sure that every change runs mid-drain.

Either way every task must get exactly one reply, the right one, and none may be
dead-lettered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis_cluster import ClusterUnderTest
from redis_server import RedisServer

from rhailambda.client import Client, Submission
from rhailambda.protocol import KeyLayout

pytestmark = [pytest.mark.cluster_only, pytest.mark.slow]

L = KeyLayout()
WORKER = "moves"
DEADLINE_S = 90  # a healthy drain takes 2 to 4 s


def start_shim(url: str, log: Path) -> subprocess.Popen[bytes]:
    """The shim, its stderr (and its local workers': a log and a metrics line per batch)
    into ``log``. Not a pipe read at the end: 5,000 tasks write more than a pipe holds
    (64 KiB, about 3,000 tasks), and then every worker blocks in its next write."""
    env = {**os.environ, "REDIS_URL": url, "RHAILAMBDA_LOG_LEVEL": "WARNING"}
    with log.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "rhailambda", "shim", "--workers", WORKER, "--shim-id", "mover",
             "--local-workers", "2", "--batch-size", "20", "--block-s", "1", "--lease-s", "5",
             "--max-attempts", "20", "--backoff-cap-s", "1", "--function-timeout-s", "10"],
            env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip


def reply_counts(client: redis.RedisCluster, ids: list[str]) -> list[int]:
    pipe = client.pipeline()
    for task_id in ids:
        pipe.llen(L.reply(task_id))
    return [int(n) for n in pipe.execute()]


def other_master(cluster: ClusterUnderTest, key: str) -> RedisServer:
    owner = cluster.node_for_key(key)
    return next(m for m in cluster.masters() if m.port != owner.port)


@dataclass
class Drain:
    """The cluster, every task id (submitted or not yet), a probe client."""

    cluster: ClusterUnderTest
    ids: list[str]
    probe: redis.RedisCluster
    submitted: int = 0

    def submit(self, n: int) -> None:
        """Submit the next ``n`` tasks; task i computes 2 * i."""
        wave = range(self.submitted, min(self.submitted + n, len(self.ids)))
        with Client(self.cluster.url) as client:
            client.submit_many(
                [
                    Submission(f"let x = {i}; x * 2", WORKER, "ctx", "caller", self.ids[i])
                    for i in wave
                ]
            )
        self.submitted = wave.stop


@pytest.fixture
def drain(
    private_cluster: Callable[..., ClusterUnderTest],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Iterator[Drain]:
    """``request.param``: (tasks, replicas per master, tasks submitted before the shim starts)."""
    n_tasks, replicas, first = request.param
    cluster = private_cluster(masters=3, replicas_per_master=replicas)
    scene = Drain(cluster, [str(uuid.uuid4()) for _ in range(n_tasks)], cluster.cluster_client())
    scene.submit(first)
    log = tmp_path / "shim.log"
    shim = start_shim(cluster.url, log)
    try:
        yield scene
    finally:
        shim.send_signal(signal.SIGTERM)
        try:
            shim.wait(timeout=30)
        except subprocess.TimeoutExpired:
            shim.kill()
            shim.wait()
        print(log.read_text(errors="replace")[-6000:])  # shown when the test fails
        scene.probe.close()


def drain_with(
    ids: list[str],
    probe: redis.RedisCluster,
    events: list[Callable[[list[str]], None]],
    first_at: int | None = None,
) -> None:
    """Poll the replies; run the next event each time another share of the tasks is done
    (the first at ``first_at`` replies). Every event must have run when the last reply
    comes: an event that submits more tasks cannot be skipped, the others could be."""
    started = time.monotonic()
    step = len(ids) // (len(events) + 1)
    next_at = step if first_at is None else first_at
    while True:
        counts = reply_counts(probe, ids)
        done = len(counts) - counts.count(0)
        if done == len(ids):
            assert events == [], f"drained before {len(events)} of the changes could run"
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


WAVE = 1000


@pytest.mark.parametrize("drain", [(5000, 0, WAVE)], indirect=True)
def test_slots_migrate_while_the_shim_drains_5000_tasks(drain: Drain) -> None:
    # Five waves of 1,000: halfway through each wave, slots move, then the next wave is
    # submitted. The shim reads a wave ahead at once, so a wave's unanswered tasks are in
    # its in-flight list (which moves with the queue's slot) or in a batch, and its taker
    # is blocked in BLMOVE on the empty queue when the queue's slot moves; the next wave
    # is pushed to the new owner and must be taken from there.
    cluster = drain.cluster
    queue = L.queue(WORKER)

    def move_queue(_: list[str]) -> None:
        cluster.migrate_slot(cluster.key_slot(queue), other_master(cluster, queue))
        drain.submit(WAVE)

    def move_task_slots(unanswered: list[str]) -> None:
        for task_id in unanswered[:20:2]:  # tasks about to be taken: hash and reply slots
            for key in (L.task(task_id), L.reply(task_id)):
                cluster.migrate_slot(cluster.key_slot(key), other_master(cluster, key))
        drain.submit(WAVE)

    drain_with(
        drain.ids,
        drain.probe,
        [move_queue, move_task_slots, move_queue, move_task_slots],
        first_at=WAVE // 2,
    )
    assert drain.submitted == len(drain.ids)
    assert_exactly_one_right_reply(drain.ids, drain.probe)


@pytest.mark.parametrize("drain", [(2000, 0, 2000)], indirect=True)
def test_a_half_done_migration_is_ridden_out(drain: Drain) -> None:
    cluster, ids, probe = drain.cluster, drain.ids, drain.probe
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


FAILOVER_WAVE = 700


@pytest.mark.parametrize("drain", [(2000, 1, FAILOVER_WAVE)], indirect=True)
def test_masters_fail_over_mid_drain(drain: Drain) -> None:
    # Three waves (700, 700, 600), as in the migration test: a failover takes longer
    # than the shim needs for the rest of 2,000 tasks, so each failover is followed by
    # the next wave, which the shim must take and answer on the new masters.
    cluster, ids, probe = drain.cluster, drain.ids, drain.probe
    queue = L.queue(WORKER)

    def fail_over_the_queue(_: list[str]) -> None:
        cluster.failover(cluster.node_for_key(queue))
        drain.submit(FAILOVER_WAVE)

    def fail_over_a_task_master(unanswered: list[str]) -> None:
        queue_master = cluster.node_for_key(queue)
        for task_id in unanswered[:50]:
            owner = cluster.node_for_key(L.task(task_id))
            if owner.port != queue_master.port:
                cluster.failover(owner)
                break
        else:
            cluster.failover(next(m for m in cluster.masters() if m.port != queue_master.port))
        drain.submit(FAILOVER_WAVE)

    drain_with(
        ids, probe, [fail_over_the_queue, fail_over_a_task_master], first_at=FAILOVER_WAVE // 2
    )
    assert drain.submitted == len(ids)
    assert_exactly_one_right_reply(ids, probe)
