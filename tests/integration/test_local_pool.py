"""The local pool's template process (fork server) and ``--isolate-circles``.

Workers are forked from a template that imported the handler's modules; with
circles isolated a worker process serves one circle for its life. Behaviour only:
the speed of a start after scale-to-zero is measured in ``bench/`` (latency).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.shim_doubles import wait_until

from rhailambda.errors import InvocationError, RedisConnectionError, SettingError
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.protocol import KeyLayout, now_rfc3339
from rhailambda.settings import Env
from rhailambda.shim import settings as shim_settings
from rhailambda.shim.local_backend import LocalInvoker

L = KeyLayout()
PROBE_KEY = "rhailambda:test:circle-pids"
HANDLER = "rhailambda.functions.handler.handler"

# An extension recording, for every task it is opened for, the worker process and the
# task's circle: "<pid> <contextId>" pushed to PROBE_KEY.
PROBE = """
import os

from rhailambda.resp import from_url
from rhailambda.settings import RedisSettings

KEY = "rhailambda:test:circle-pids"


class _Session:
    def modules(self):
        return {}

    def commit(self):
        pass

    def discard(self):
        pass


class CircleProbe:
    name = "circleprobe"

    def __init__(self, url):
        self._client = from_url(url, client_name="circle-probe")

    def open(self, ctx):
        self._client.execute("RPUSH", KEY, f"{os.getpid()} {ctx.context_id}")
        return _Session()


def factory(env):
    return CircleProbe(RedisSettings.from_env(env).url)
"""

# A handler that notes which process ran its module body (a line "<pid>" per import).
NOTED = """
import os

with open(os.environ["RHAILAMBDA_TEST_IMPORTS"], "a") as out:
    out.write(f"{os.getpid()}\\n")


def handler(event, context):
    return {"batchItemFailures": []}
"""

# A handler whose import, once the gate file exists, notes its pid and blocks reading
# stdin (a worker's request pipe) until the pool closes it.
GATED_START = """
import os
import sys

gate = os.environ["RHAILAMBDA_TEST_GATE"]
if os.path.exists(gate):
    with open(gate + ".pid.tmp", "w") as out:
        out.write(str(os.getpid()))
    os.replace(gate + ".pid.tmp", gate + ".pid")
    sys.stdin.buffer.read()


def handler(event, context):
    return {"batchItemFailures": []}
"""

# A handler whose import starts a thread: such a process cannot be forked safely.
THREADED = """
import threading
import time

threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()


def handler(event, context):
    return {"batchItemFailures": []}
"""


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def sockets_of(pid: int) -> list[str]:
    links = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    return [link for link in links if link.startswith("socket:")]


def event(*task_ids: str, tenant_id: str | None = None) -> InvocationEvent:
    return InvocationEvent("w1", tuple(TaskRef(t) for t in task_ids), tenant_id=tenant_id)


@pytest.fixture
def handler_dir(tmp_path: Path) -> Iterator[dict[str, str]]:
    for name, text in (("probe_ext", PROBE), ("noted_handler", NOTED),
                       ("threaded_handler", THREADED), ("gated_start", GATED_START)):  # fmt: skip
        (tmp_path / f"{name}.py").write_text(text)
    yield {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "RHAILAMBDA_TEST_IMPORTS": str(tmp_path / "imports.txt"),
        "RHAILAMBDA_TEST_GATE": str(tmp_path / "gate"),
    }


def test_the_first_task_after_scale_to_zero_runs_in_a_worker_forked_from_the_template(
    handler_dir: dict[str, str], tmp_path: Path
) -> None:
    imports = tmp_path / "imports.txt"

    async def scenario() -> None:
        inv = LocalInvoker(handler="noted_handler.handler", max_workers=2, idle_timeout_s=0.3,
                           env=handler_dir)  # fmt: skip
        try:
            assert (await inv.invoke(event("t1"), timeout_s=5)).outcomes == {"t1": "completed"}
            template = inv.template
            assert template is not None
            (first,) = inv.worker_pids()
            assert parent_of(first) == template.pid
            await wait_until(lambda: inv.worker_count == 0, timeout_s=10, what="scale to zero")
            await wait_until(lambda: not alive(first), timeout_s=5, what="the worker to exit")
            assert template.alive and alive(template.pid)  # the template stays

            assert (await inv.invoke(event("t2"), timeout_s=5)).outcomes == {"t2": "completed"}
            (second,) = inv.worker_pids()
            assert second != first
            assert parent_of(second) == template.pid  # forked, not exec'd by the shim
            assert inv.template is template
            # The handler's module body (its clients, its state) ran in each worker
            # after the fork, once more in the template only to load its imports.
            ran_in = [int(line) for line in imports.read_text().split()]
            assert ran_in == [template.pid, first, second]
            # Nothing inherited: no socket (the template's control socket is closed),
            # one thread.
            assert sockets_of(second) == []
            assert os.listdir(f"/proc/{second}/task") == [str(second)]
        finally:
            await inv.aclose()
        assert not alive(template.pid)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_cancelled_while_a_forked_worker_starts_leaves_no_process(
    handler_dir: dict[str, str], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    pid_file = tmp_path / "gate.pid"

    async def scenario() -> None:
        inv = LocalInvoker(handler="gated_start.handler", max_workers=1, idle_timeout_s=0.3,
                           env=handler_dir)  # fmt: skip
        try:
            await inv.invoke(event("t1"), timeout_s=5)
            template = inv.template
            assert template is not None
            await wait_until(lambda: inv.worker_count == 0, timeout_s=10, what="scale to zero")
            gate.touch()  # the next worker's import blocks
            call = asyncio.create_task(inv.invoke(event("t2"), timeout_s=5))
            await wait_until(pid_file.exists, timeout_s=20, what="the forked worker to import")
            pid = int(pid_file.read_text())
            assert parent_of(pid) == template.pid and not call.done()
            call.cancel()
            await asyncio.wait({call})
            assert call.cancelled()
            # Once the cancellation has settled, killed and reaped (by the template):
            assert not alive(pid)
            assert inv.worker_count == 0 and template.alive
            gate.unlink()
            assert (await inv.invoke(event("t3"), timeout_s=5)).outcomes == {"t3": "completed"}
        finally:
            await inv.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_handler_that_starts_a_thread_at_import_gets_exec_started_workers(
    handler_dir: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        inv = LocalInvoker(handler="threaded_handler.handler", max_workers=1,
                           idle_timeout_s=60, env=handler_dir)  # fmt: skip
        try:
            assert (await inv.invoke(event("t1"), timeout_s=5)).outcomes == {"t1": "completed"}
            assert inv.template is None
            (pid,) = inv.worker_pids()
            assert parent_of(pid) == os.getpid()
        finally:
            await inv.aclose()

    with caplog.at_level("WARNING", logger="rhailambda.shim.local"):
        asyncio.run(asyncio.wait_for(scenario(), 60))
    assert "not from a template: the handler's import left 1 thread(s) running" in caplog.text


def test_a_handler_that_does_not_import_is_reported_by_the_template() -> None:
    async def scenario() -> None:
        inv = LocalInvoker(handler="no_such_module_here.handler", max_workers=1, idle_timeout_s=60)
        try:
            with pytest.raises(InvocationError, match="failed to import the handler: "
                               "ModuleNotFoundError"):  # fmt: skip
                await inv.invoke(event("t1"), timeout_s=5)
            assert inv.worker_count == 0
        finally:
            await inv.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_killed_template_is_replaced_and_its_workers_go_with_it(
    handler_dir: dict[str, str],
) -> None:
    async def scenario() -> None:
        inv = LocalInvoker(handler="noted_handler.handler", max_workers=1, idle_timeout_s=60,
                           env=handler_dir)  # fmt: skip
        try:
            await inv.invoke(event("t1"), timeout_s=5)
            old = inv.template
            assert old is not None
            (worker,) = inv.worker_pids()
            os.kill(old.pid, signal.SIGKILL)
            await wait_until(lambda: not old.alive, timeout_s=5, what="the loss to be seen")
            await wait_until(lambda: not alive(worker), timeout_s=5, what="its worker to go")
            with pytest.raises(InvocationError):  # the orphan was killed under it
                await inv.invoke(event("t2"), timeout_s=5)
            assert (await inv.invoke(event("t3"), timeout_s=5)).outcomes == {"t3": "completed"}
            assert inv.template is not None and inv.template.pid != old.pid
            (fresh,) = inv.worker_pids()
            assert parent_of(fresh) == inv.template.pid
        finally:
            await inv.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 60))


# --- isolate circles -----------------------------------------------------------------
def write_task(r: redis.Redis, task_id: str, circle: str) -> None:
    stamp = now_rfc3339()
    r.hset(L.task(task_id), mapping={
        "taskId": task_id, "script": "40 + 2", "callerId": "c", "contextId": circle,
        "workerId": "w1", "status": "pending", "createdAt": stamp, "updatedAt": stamp,
    })  # fmt: skip


def isolating_invoker(redis_url: str, env: dict[str, str], max_workers: int) -> LocalInvoker:
    args = argparse.Namespace(rhailambda_workers=["w1"], redis_url=redis_url,
                              rhailambda_isolate_circles="true")  # fmt: skip
    settings = shim_settings.from_args(args, Env({}))
    inv = LocalInvoker(
        handler=HANDLER, max_workers=max_workers, idle_timeout_s=60, isolate_circles=True,
        env={**env, "REDIS_URL": redis_url, "POWERTOOLS_METRICS_DISABLED": "true",
             "RHAILAMBDA_EXTENSIONS": "probe_ext:factory", "POWERTOOLS_LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    inv.read_circles_from(settings)  # for the batches without tenant_id
    return inv


def served(r: redis.Redis) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for entry in r.lrange(PROBE_KEY, 0, -1):
        pid, _, circle = str(entry).partition(" ")
        out.setdefault(int(pid), set()).add(circle)
    return out


def test_no_worker_process_ever_serves_two_circles(
    redis_client: redis.Redis, redis_url: str, handler_dir: dict[str, str]
) -> None:
    """Four circles through a pool of two: one-circle batches (the drain loop's, with
    tenant_id) and mixed ones (split here by contextId), two at a time."""
    circles = ["alpha", "beta", "gamma", "delta"]
    redis_client.delete(PROBE_KEY)
    seq = iter(range(10_000))

    def batch(*of: str) -> list[str]:
        ids = [f"iso-{next(seq)}-{c}" for c in of]
        for task_id, circle in zip(ids, of, strict=True):
            write_task(redis_client, task_id, circle)
        return ids

    async def scenario() -> None:
        inv = isolating_invoker(redis_url, handler_dir, max_workers=2)
        try:
            for round_ in range(12):
                one = circles[round_ % 4]
                mixed = [circles[(round_ + k) % 4] for k in range(3)] * 2
                calls = [
                    (ids := batch(one, one, one), event(*ids, tenant_id=one)),
                    (ids2 := batch(*mixed), event(*ids2)),
                ]
                replies = await asyncio.gather(*(inv.invoke(ev, timeout_s=10) for _, ev in calls))
                for (ids_, _), reply in zip(calls, replies, strict=True):
                    assert reply.outcomes == dict.fromkeys(ids_, "completed")
                assert inv.worker_count <= 2
                assert all(c in circles for c in inv.worker_circles().values())
        finally:
            await inv.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 120))
    by_pid = served(redis_client)
    assert sum(map(len, by_pid.values())) >= 4
    assert {c for cs in by_pid.values() for c in cs} == set(circles)
    assert all(len(cs) == 1 for cs in by_pid.values()), by_pid
    assert len(by_pid) > 4  # the least recently used were retired and replaced
    assert len(redis_client.lrange(PROBE_KEY, 0, -1)) == 12 * 3 + 12 * 6


def test_a_worker_refuses_a_batch_with_a_task_of_another_circle(
    redis_client: redis.Redis, redis_url: str, handler_dir: dict[str, str]
) -> None:
    redis_client.delete(PROBE_KEY)
    for task_id, circle in (("ref-a1", "a"), ("ref-a2", "a"), ("ref-b1", "b")):
        write_task(redis_client, task_id, circle)

    async def scenario() -> None:
        inv = isolating_invoker(redis_url, handler_dir, max_workers=1)
        try:
            assert (await inv.invoke(event("ref-a1", tenant_id="a"), timeout_s=10)).outcomes == {
                "ref-a1": "completed"
            }
            with pytest.raises(InvocationError, match=r"CircleMismatch: .*tasks of \['b'\]"):
                await inv.invoke(event("ref-a2", "ref-b1", tenant_id="a"), timeout_s=10)
        finally:
            await inv.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert set().union(*served(redis_client).values()) == {"a"}
    assert redis_client.hget(L.task("ref-b1"), "status") == "pending"  # never ran
    assert redis_client.hget(L.task("ref-a2"), "status") == "pending"


def test_the_isolate_circles_flag_and_its_bounds() -> None:
    parser = argparse.ArgumentParser()
    shim_settings.add_arguments(parser)
    on = shim_settings.from_args(parser.parse_args(["--worker", "w", "--isolate-circles"]),
                                 Env({}))  # fmt: skip
    off = shim_settings.from_args(parser.parse_args(["--worker", "w"]), Env({}))
    assert on.local.isolate_circles and not off.local.isolate_circles
    env_on = shim_settings.from_args(parser.parse_args(["--worker", "w"]),
                                     Env({"RHAILAMBDA_ISOLATE_CIRCLES": "true"}))  # fmt: skip
    assert env_on.local.isolate_circles
    with pytest.raises(SettingError, match=r"--isolate-circles.*local backend only"):
        shim_settings.from_args(
            parser.parse_args(["--worker", "w", "--isolate-circles", "--backend", "lambda",
                               "--function-name", "arn:aws:lambda:eu-west-1:1:function:f"]),
            Env({}),
        )  # fmt: skip


def test_the_shim_with_isolate_circles_keeps_circles_apart(
    redis_client: redis.Redis, redis_url: str, handler_dir: dict[str, str]
) -> None:
    """The real ``rhailambda shim --isolate-circles`` on a queue of mixed circles."""
    redis_client.delete(PROBE_KEY)
    ids = [f"shim-{i}" for i in range(60)]
    for i, task_id in enumerate(ids):
        write_task(redis_client, task_id, f"circle{i % 5}")
    redis_client.lpush(L.queue("w1"), *ids)
    env = {**os.environ, **handler_dir, "REDIS_URL": redis_url,
           "POWERTOOLS_METRICS_DISABLED": "true",
           "RHAILAMBDA_EXTENSIONS": "probe_ext:factory"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhailambda.cli", "shim", "--worker", "w1", "--shim-id", "iso1",
         "--block-s", "1", "--batch-size", "7", "--local-workers", "2", "--isolate-circles"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while redis_client.llen(PROBE_KEY) < len(ids) or any(
            redis_client.llen(L.reply(t)) == 0 for t in ids
        ):
            assert proc.poll() is None and time.monotonic() < deadline, "the shim stalled"
            time.sleep(0.05)  # polling another process's effect, with a deadline
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    by_pid = served(redis_client)
    assert all(len(cs) == 1 for cs in by_pid.values()), by_pid
    assert {c for cs in by_pid.values() for c in cs} == {f"circle{i}" for i in range(5)}


def test_a_mixed_batch_whose_circles_cannot_be_read_fails_as_a_retryable_invocation() -> None:
    async def unreachable(task_ids: object) -> list[str]:
        raise RedisConnectionError("cannot connect to Redis at 127.0.0.1:1")

    async def scenario() -> None:
        inv = LocalInvoker(handler="support.shim_doubles.echo_handler", max_workers=1,
                           idle_timeout_s=60, isolate_circles=True,
                           circle_lookup=unreachable)  # fmt: skip
        try:
            with pytest.raises(InvocationError, match="cannot read the batch's circles") as err:
                await inv.invoke(event("t1", "t2"), timeout_s=5)
            assert err.value.retryable
            assert inv.spawned == 0  # no worker saw the batch
        finally:
            await inv.aclose()

    asyncio.run(asyncio.wait_for(scenario(), 30))
