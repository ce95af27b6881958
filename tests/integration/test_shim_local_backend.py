"""The local backend: the handler in local worker processes, like warm Lambda environments."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from support.shim_doubles import seed_tasks, wait_until

from rhailambda.errors import InvocationError
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.protocol import ATTEMPT, KeyLayout
from rhailambda.settings import ProtocolSettings, RedisSettings
from rhailambda.shim.app import serve
from rhailambda.shim.local_backend import LocalInvoker
from rhailambda.shim.settings import FlowSettings, QueueSettings, RetrySettings, ShimSettings

BEHAVE = "support.shim_doubles.behaviour_handler"
ECHO = "support.shim_doubles.echo_handler"
L = KeyLayout()


def event(*task_ids: str, attempt: int = 1) -> InvocationEvent:
    return InvocationEvent("w1", tuple(TaskRef(t, attempt) for t in task_ids))


def invoker(handler: str = BEHAVE, **kw: object) -> LocalInvoker:
    options: dict[str, object] = {"max_workers": 2, "idle_timeout_s": 60.0, "timeout_margin_s": 0.3}
    options.update(kw)
    return LocalInvoker(handler=handler, function_name="fn-test", **options)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_runs_the_handler_with_a_lambda_like_context() -> None:
    async def scenario() -> None:
        inv = invoker(ECHO)
        try:
            response = await inv.invoke(event("a", "b"), timeout_s=5)
            assert response.outcomes == {"a": "completed", "b": "completed"}
            assert response.failed_ids == frozenset()
        finally:
            await inv.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_failed_items_handler_errors_and_crashes() -> None:
    async def scenario() -> None:
        inv = invoker()
        try:
            response = await inv.invoke(event("ok", "fail-1"), timeout_s=5)
            assert response.failed_ids == {"fail-1"}
            with pytest.raises(InvocationError, match=r"RuntimeError: boom on raise-1") as err:
                await inv.invoke(event("raise-1"), timeout_s=5)
            assert err.value.retryable
            with pytest.raises(InvocationError, match=r"worker \d+ exited with code"):
                await inv.invoke(event("crash-1"), timeout_s=5)
            # The crashed worker is replaced on demand.
            assert (await inv.invoke(event("ok2"), timeout_s=5)).outcomes == {"ok2": "completed"}
        finally:
            await inv.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_timeout_kills_the_worker() -> None:
    async def scenario() -> None:
        inv = invoker(max_workers=1)
        try:
            await inv.invoke(event("warm"), timeout_s=5)
            (pid,) = inv.worker_pids()
            with pytest.raises(InvocationError, match=r"timed out after 0\.5 s"):
                await inv.invoke(event("sleep-1"), timeout_s=0.5)
            await wait_until(lambda: not alive(pid), timeout_s=5, what="the worker to die")
            assert (await inv.invoke(event("ok"), timeout_s=5)).outcomes == {"ok": "completed"}
            assert inv.worker_pids() != [pid]
        finally:
            await inv.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_scales_up_to_max_then_retires_idle_workers() -> None:
    async def scenario() -> None:
        inv = invoker(ECHO, max_workers=2, idle_timeout_s=0.3)
        try:
            await asyncio.gather(*(inv.invoke(event(f"t{i}"), timeout_s=5) for i in range(6)))
            assert inv.spawned == 2
            assert inv.worker_count == 2
            pids = inv.worker_pids()
            await wait_until(lambda: inv.worker_count == 0, timeout_s=5, what="idle retirement")
            await wait_until(lambda: not any(map(alive, pids)), timeout_s=5)
            await inv.invoke(event("again"), timeout_s=5)  # scales from zero again
            assert inv.spawned == 3
        finally:
            await inv.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 60))


# A handler whose import never finishes (until its stdin closes): a cold start that is
# still going when the invocation waiting for it is cancelled.
SLOW_START = """
import os
import sys

pid_file = os.environ["RHAILAMBDA_TEST_PID_FILE"]
with open(pid_file + ".tmp", "w") as out:
    out.write(str(os.getpid()))
os.replace(pid_file + ".tmp", pid_file)
sys.stdin.buffer.read()


def handler(event, context):
    return {"batchItemFailures": []}
"""


def test_cancelled_while_a_worker_starts_leaves_no_process(tmp_path: Path) -> None:
    """The cancelled invocation's half-started worker was in no pool and never killed."""
    (tmp_path / "slow_start_handler.py").write_text(SLOW_START)
    pid_file = tmp_path / "worker.pid"
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "RHAILAMBDA_TEST_PID_FILE": str(pid_file),
    }
    pids: list[int] = []

    async def scenario() -> tuple[bool, int]:
        inv = invoker("slow_start_handler.handler", env=env)
        try:
            call = asyncio.create_task(inv.invoke(event("t1"), timeout_s=5))
            await wait_until(pid_file.exists, timeout_s=20, what="the worker to import")
            pids.append(int(pid_file.read_text()))
            assert not call.done()
            call.cancel()
            await asyncio.wait({call})
            assert call.cancelled()
            # Once the cancellation has settled, not a moment later:
            return alive(pids[0]), inv.worker_count
        finally:
            await inv.aclose()

    try:
        still_alive, workers = asyncio.run(asyncio.wait_for(scenario(), 30))
        assert not still_alive, "the half-started worker is still running (or a zombie)"
        assert workers == 0
    finally:
        for pid in pids:
            if alive(pid):  # before the fix: do not leave it behind
                os.kill(pid, signal.SIGKILL)


# A handler the test steers through files under RHAILAMBDA_TEST_GATES: a ``hold-<name>``
# task runs until the file <name> exists; ``together-<n>-<i>`` tasks run until n of them
# run at once. One that waited 5 s in vain is reported failed.
GATED = """
import os
import time

root = os.environ["RHAILAMBDA_TEST_GATES"]
together = os.path.join(root, "together")


def wait_for(done):
    deadline = time.monotonic() + 5
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def handler(event, context):
    failures = []
    for t in event["tasks"]:
        kind, _, name = t["taskId"].partition("-")
        ok = True
        if kind == "hold":
            ok = wait_for(lambda: os.path.exists(os.path.join(root, name)))
        elif kind == "together":
            open(os.path.join(together, name), "w").close()
            ok = wait_for(lambda: len(os.listdir(together)) >= int(name.split("-")[0]))
        if not ok:
            failures.append({"itemIdentifier": t["taskId"]})
    return {"batchItemFailures": failures}
"""


async def _spin_until(predicate: Callable[[], object], *, timeout_s: float, what: str) -> None:
    """Wait for ``predicate`` one event-loop step at a time (never past the deadline):
    the moments looked for here last a single step."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0)


def test_invocations_cancelled_under_contention_never_cost_the_pool_a_slot(
    tmp_path: Path,
) -> None:
    """Invocations queued for a busy pool, cancelled at varied points: still queued, just
    after a worker was handed back to them (before they ran), as they take it, send, run
    or respawn a killed one. None may cost the pool a slot. Under the asyncio.Condition
    used before, a waiter cancelled after its wake-up lost it (Python 3.11): after two
    such cancels the calls still queued waited forever beside two idle workers."""
    (tmp_path / "gated_handler.py").write_text(GATED)
    gates = tmp_path / "gates"
    (gates / "together").mkdir(parents=True)
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "RHAILAMBDA_TEST_GATES": str(gates),
    }
    max_workers = 2

    async def scenario() -> None:
        inv = invoker("gated_handler.handler", env=env, max_workers=max_workers)
        try:
            for delay_steps in range(5):
                holders = [f"r{delay_steps}{n}" for n in "ab"]
                calls = [
                    *(
                        asyncio.create_task(inv.invoke(event(f"hold-{h}"), timeout_s=5))
                        for h in holders
                    ),
                    *(
                        asyncio.create_task(inv.invoke(event(f"r{delay_steps}-{i}"), timeout_s=5))
                        for i in range(6)
                    ),
                ]
                # The holders have both workers (spawning any killed before); six queue.
                await _spin_until(
                    lambda: not inv.worker_pids() and inv.worker_count == max_workers,
                    timeout_s=5,
                    what="both workers held",
                )
                queued, cancelled = calls[max_workers:], []
                for holder in holders:
                    seen = set(inv.worker_pids())

                    def handed_back(before: set[int] = seen) -> set[int]:
                        return set(inv.worker_pids()) - before

                    (gates / holder).touch()  # that holder returns its worker
                    # A worker handed back: cancel the youngest queued call at once, and
                    # the oldest (the one woken for that worker) delay_steps steps later.
                    await _spin_until(
                        handed_back,
                        timeout_s=5,
                        what="a hand-back",
                    )
                    queued[-1].cancel()
                    cancelled.append(queued.pop())
                    for _ in range(delay_steps):
                        await asyncio.sleep(0)
                    queued[0].cancel()
                    cancelled.append(queued.pop(0))
                kept = [c for c in calls if c not in cancelled]
                done, stuck = await asyncio.wait(kept, timeout=3)
                assert not stuck, f"{len(stuck)} calls never got a worker (round {delay_steps})"
                assert all(c.result().failed_ids == frozenset() for c in done)
                await asyncio.wait(cancelled)
                assert inv.worker_count <= max_workers
            # Afterwards the pool still runs max_workers invocations at once.
            replies = await asyncio.gather(
                *(
                    inv.invoke(event(f"together-{max_workers}-{i}"), timeout_s=5)
                    for i in range(max_workers)
                )
            )
            assert [r.failed_ids for r in replies] == [frozenset()] * max_workers
        finally:
            await inv.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_crashed_worker_means_a_retry(redis_client: redis.Redis, redis_url: str) -> None:
    seed_tasks(redis_client, L, "w1", ["crash-once-1", "ok-1"])
    settings = ShimSettings(
        redis=RedisSettings(redis_url),
        protocol=ProtocolSettings(),
        queues=QueueSettings(worker_ids=("w1",), shim_id="s1", block_s=0.5),
        flow=FlowSettings(max_concurrency=1, per_queue_concurrency=1, shutdown_timeout_s=5),
        retry=RetrySettings(max_attempts=3, backoff_base_s=0.01, backoff_cap_s=0.05),
    )
    settings = dataclasses.replace(settings, function=dataclasses.replace(settings.function,
                                   function_timeout_s=5))  # fmt: skip

    async def scenario() -> None:
        inv = invoker(max_workers=1)
        stop = asyncio.Event()
        task = asyncio.create_task(serve(settings, inv, stop=stop))
        try:
            await wait_until(
                lambda: (
                    redis_client.hget(L.task("crash-once-1"), ATTEMPT) == "2"
                    and redis_client.llen(L.inflight("w1", "s1")) == 0
                    and redis_client.llen(L.queue("w1")) == 0
                ),
                timeout_s=20,
            )
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
            await inv.aclose()
        assert inv.spawned == 2  # the crashed environment was replaced

    asyncio.run(scenario())
