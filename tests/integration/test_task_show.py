"""``rhailambda task show``: each of the five places a task id can be, with real shims.

Queued (a queue nobody drains), in flight (a script hanging in a live shim's local
worker), waiting for a retry (timed out once, its retry far off: the shim keeps it in
memory, in flight under that shim), dead-lettered (too old at take) and done (its
reply still uncollected).
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from support.ops_helpers import CLI, SCRIPT, cli, hang_env
from support.waiting import wait_for

from rhailambda.client import Client
from rhailambda.protocol import KeyLayout

L = KeyLayout()


def show(task_id: str, env: dict[str, str], *extra: str) -> dict[str, Any]:
    done = cli("task", "show", task_id, "--json", *extra, env=env)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.fixture
def shims(tmp_path: Path, redis_url: str) -> Iterator[dict[str, str]]:
    env = hang_env(tmp_path, redis_url)
    common = ["--local-workers", "1", "--block-s", "1", "--lease-s", "3",
              "--shutdown-timeout-s", "1"]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*CLI, "shim", "--worker", "tsrun", "--shim-id", "ts-run", *common,
             "--function-timeout-s", "120"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [*CLI, "shim", "--worker", "tsretry", "--shim-id", "ts-retry", *common,
             "--function-timeout-s", "1", "--backoff-base-s", "3600", "--backoff-cap-s", "3600",
             "--max-task-age-s", "3600"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
    ]  # fmt: skip
    try:
        yield env
    finally:
        Path(env["HANG_FLAG"]).unlink(missing_ok=True)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)


def test_task_show_reports_each_of_the_five_places(
    shims: dict[str, str], redis_url: str, redis_client: redis.Redis
) -> None:
    env = shims
    with Client(redis_url) as client:
        # 1. queued, on a queue no shim drains: the oldest is taken next
        queued = [client.submit("1", worker_id="tsq", context_id="c", caller_id="c")
                  for _ in range(3)]  # fmt: skip
        first, last = show(queued[0], env), show(queued[2], env)
        assert [(p["kind"], p["worker_id"], p["position"], p["queue_length"])
                for p in first["places"]] == [("queued", "tsq", 1, 3)]  # fmt: skip
        assert [p["position"] for p in last["places"]] == [3]
        assert first["fields"]["status"] == "pending" and first["fields"]["script"] == "1"

        # 2. in flight: running in a live shim
        running = client.submit(SCRIPT, worker_id="tsrun", context_id="c", caller_id="c")
        wait_for(lambda: redis_client.hget(L.task(running), "status") == "processing",
                 60, "the hanging task to be claimed")  # fmt: skip
        report = show(running, env)
        (place,) = report["places"]
        assert place["kind"] == "in_flight"
        assert (place["worker_id"], place["shim_id"]) == ("tsrun", "ts-run")
        assert place["shim_live"] and place["attempt"] == 1
        assert place["since"] == redis_client.hget(L.task(running), "updatedAt")
        text = cli("task", "show", running, env=env)
        assert text.returncode == 0 and "in flight on tsrun under shim ts-run" in text.stdout

        # 3. waiting for a retry: timed out once, its retry an hour away (in shim memory)
        retry = client.submit(SCRIPT, worker_id="tsretry", context_id="c", caller_id="c")
        info = L.shim_info("ts-retry")
        wait_for(lambda: int(redis_client.hget(info, "retried") or 0) >= 1,
                 60, "the timed-out task to wait for its retry")  # fmt: skip
        (place,) = show(retry, env)["places"]
        assert (place["kind"], place["shim_id"]) == ("in_flight", "ts-retry")
        assert "waiting in that shim for a retry" in place["text"]

        # 4. dead-lettered: too old when taken; its hash is kept, with the error
        old = "old-task"
        redis_client.hset(L.task(old), mapping={
            "taskId": old, "script": "1", "callerId": "c", "contextId": "c",
            "status": "pending", "createdAt": "2020-01-01T00:00:00Z",
        })  # fmt: skip
        redis_client.lpush(L.queue("tsretry"), old)
        wait_for(lambda: redis_client.llen(L.dead_letter("tsretry")) == 1, 60, "the dead letter")
        report = show(old, env, "--worker", "tsretry")  # its hash names no worker
        (place,) = report["places"]
        assert (place["kind"], place["worker_id"]) == ("dead_lettered", "tsretry")
        assert place["kept_s"] > 0 and report["fields"]["status"] == "error"
        assert "older than the maximum task age" in report["fields"]["error"]

        # 5. done, its reply not collected yet
        quick = client.submit("40 + 2", worker_id="tsretry", context_id="c", caller_id="c")
        wait_for(lambda: redis_client.llen(L.reply(quick)) == 1, 60, "the quick task's reply")
        report = show(quick, env)
        (place,) = report["places"]
        assert place["kind"] == "done" and place["kept_s"] > 0
        assert report["fields"] == {} and report["hash_kept_s"] == -2
        (reply,) = report["replies"]
        assert reply["status"] == "completed" and reply["output"] == "42"

    unknown = cli("task", "show", "no-such-task", env=env)
    assert unknown.returncode == 1 and "unknown" in unknown.stderr


def test_protocol_md_names_every_key_field_and_status() -> None:
    """The keys ``task show`` and ``dlq`` read, and every field, are in PROTOCOL.md."""
    from rhailambda import protocol

    text = (Path(__file__).resolve().parents[2] / "PROTOCOL.md").read_text()
    keys = [
        L.queue("<worker_id>"), L.task("<task_id>"), L.reply("<task_id>"),
        L.inflight("<worker>", "<shim>"), L.dead_letter("<worker>"), L.paused("<worker>"),
        L.done("<task>"), L.replied("<task>"), L.shims(), L.shim_info("<shim>"),
        L.circle("<circle>", "rec", "<collection>"), L.circle("<circle>", "idx", "<collection>"),
        L.circle_receipt("<circle>", "<task>"),
    ]  # fmt: skip
    fields = [v for k, v in vars(protocol).items() if k.isupper() and isinstance(v, str)]
    fields += [*protocol.FIELD_ALIASES, "rhailambdaRun", "RHAILAMBDA_DLQ_RETENTION_S"]
    missing = [f"`{name}`" for name in [*keys, *fields] if f"`{name}`" not in text]
    assert not missing, missing
