"""The ``rhailambda shim`` process: SIGTERM, status, pause; and a Redis restart mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import redis
from redis_server import RedisServer
from support.shim_doubles import FakeInvoker, seed_tasks, wait_until
from support.waiting import wait_for

from rhailambda.event import BatchResponse, InvocationEvent
from rhailambda.protocol import KeyLayout
from rhailambda.settings import ProtocolSettings, RedisSettings
from rhailambda.shim.app import serve
from rhailambda.shim.settings import FlowSettings, QueueSettings, RetrySettings, ShimSettings

L = KeyLayout()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rhailambda", *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


def test_shim_process_status_pause_and_sigterm(redis_client: redis.Redis, redis_url: str) -> None:
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "RHAILAMBDA_WORKERS": "Worker One,w2",
        "RHAILAMBDA_HANDLER": "support.shim_doubles.echo_handler",
        "RHAILAMBDA_LOCAL_WORKERS": "2",
        "RHAILAMBDA_BLOCK_S": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhailambda", "shim", "--shim-id", "proc1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: redis_client.zscore(L.shims(), "proc1"), 15, "registration")
        seed_tasks(redis_client, L, "worker_one", [f"p{i}" for i in range(50)])
        wait_for(lambda: redis_client.llen(L.queue("worker_one")) == 0, 30, "draining")
        wait_for(lambda: redis_client.llen(L.inflight("worker_one", "proc1")) == 0, 30, "acks")

        paused = cli("pause", "--redis-url", redis_url, "--worker", "W2")
        assert paused.returncode == 0, paused.stderr
        assert [redis_client.exists(L.paused(w)) for w in ("w1", "w2")] == [0, 1]
        seed_tasks(redis_client, L, "w2", ["held"])

        status = cli("status", "--redis-url", redis_url, "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        queues = {q["worker_id"]: q for q in report["queues"]}
        assert queues["w2"]["paused"] is True
        assert queues["worker_one"]["queued"] == 0
        (shim,) = report["shims"]
        assert shim["shim_id"] == "proc1" and shim["live"] and shim["healthy"]
        assert cli("status", "--redis-url", redis_url).returncode == 0  # the table renders

        assert cli("resume", "--redis-url", redis_url, "--worker", "w2").returncode == 0
        wait_for(lambda: redis_client.llen(L.queue("w2")) == 0, 30, "resume")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "batch worker=worker_one" in out
    assert redis_client.zscore(L.shims(), "proc1") is None


def test_bad_setting_exits_2_naming_it(redis_url: str) -> None:
    result = cli("shim", "--workers", "w", "--max-attempts", "zero")
    assert result.returncode == 2
    assert "--max-attempts" in result.stderr


def test_redis_restart_mid_run_loses_nothing() -> None:
    # Persisted (AOF) so the restart keeps the data: an outage, not a wipe.
    server = RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    with server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        tasks = [f"o{i:04d}" for i in range(300)]
        seed_tasks(client, L, "w1", tasks)

        async def reply(event: InvocationEvent) -> BatchResponse:
            await asyncio.sleep(0.01)
            pipe = client.pipeline(transaction=False)
            for t in event.tasks:
                pipe.rpush(L.reply(t.task_id), "done")
            await asyncio.to_thread(pipe.execute)
            return BatchResponse({t.task_id: "completed" for t in event.tasks})

        invoker = FakeInvoker(reply)
        settings = ShimSettings(
            redis=RedisSettings(server.url),
            protocol=ProtocolSettings(),
            queues=QueueSettings(worker_ids=("w1",), shim_id="s1", lease_s=30, block_s=0.5),
            flow=FlowSettings(max_concurrency=2, per_queue_concurrency=2, shutdown_timeout_s=5),
            retry=RetrySettings(max_attempts=5, backoff_base_s=0.01, backoff_cap_s=0.1),
        )

        def all_replied() -> bool:
            try:
                pipe = client.pipeline(transaction=False)
                for t in tasks:
                    pipe.exists(L.reply(t))
                return all(pipe.execute())
            except redis.exceptions.ConnectionError:
                return False

        async def scenario() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(serve(settings, invoker, stop=stop))
            await wait_until(lambda: len(invoker.task_ids) >= 50, timeout_s=20)
            await asyncio.to_thread(server.restart)
            await wait_until(all_replied, timeout_s=60, what="every task to get a reply")
            stop.set()
            await asyncio.wait_for(task, 20)

        try:
            asyncio.run(scenario())
            assert client.llen(L.queue("w1")) == 0
            assert client.llen(L.inflight("w1", "s1")) == 0
        finally:
            client.close()
