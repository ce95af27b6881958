"""``rhailambda dlq``: tasks dead-lettered by real function timeouts, listed, shown,
redriven (they then complete with a reply) and purged.

The real shim on the local backend runs the real handler; the scripts call an
extension (written to ``tmp_path``) that hangs in Python, where the engine cannot
stop it, while a flag file exists: the local backend kills the worker at
``--function-timeout-s``, and after ``RHAILAMBDA_MAX_ATTEMPTS`` deliveries the shim
dead-letters the task.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support.ops_helpers import CLI, SCRIPT, cli, hang_env

from rhailambda.client import Client
from rhailambda.protocol import KeyLayout
from rhailambda.signing import SigningKey

L = KeyLayout()
WORKER = "dlqw"
RETENTION_S = 5000


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[dict[str, str]]:
    env = hang_env(tmp_path, redis_url)
    shim_env = {**env, "RHAILAMBDA_MAX_ATTEMPTS": "2",
                "RHAILAMBDA_DLQ_RETENTION_S": str(RETENTION_S)}  # fmt: skip
    shim = subprocess.Popen(
        [*CLI, "shim", "--worker", WORKER, "--shim-id", "dlq1", "--local-workers", "1",
         "--block-s", "1", "--function-timeout-s", "1", "--backoff-base-s", "0.05",
         "--backoff-cap-s", "0.1", "--shutdown-timeout-s", "1"],
        env=shim_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        yield env
    finally:
        shim.send_signal(signal.SIGTERM)
        out, _ = shim.communicate(timeout=60)
    assert shim.returncode == 0, out[-3000:]


def test_timed_out_tasks_are_listed_shown_purged_and_redriven_to_a_reply(
    stack: dict[str, str], redis_url: str, redis_client: redis.Redis
) -> None:
    env = stack
    with Client(redis_url) as client:
        kept, purged = (
            client.submit(SCRIPT, worker_id=WORKER, context_id="alice", caller_id="bob")
            for _ in range(2)
        )
        # the client waiting gets the dead-letter's error reply
        for task_id in (kept, purged):
            reply = client.wait(task_id, timeout_s=90)
            assert reply.status == "error", reply.raw
            assert "dead-lettered after 2 attempts" in (reply.error or ""), reply.raw

        listed = cli("dlq", "list", "--worker", WORKER, "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        rows = {r["taskId"]: r for r in json.loads(listed.stdout)}
        assert set(rows) == {kept, purged}
        row = rows[kept]
        assert row["attempts"] == 2
        assert "dead-lettered after 2 attempts" in row["error"]
        assert (row["callerId"], row["contextId"]) == ("bob", "alice")
        assert row["scriptHead"] == "hang::while_flagged(); 40 + 2"
        assert row["deadLetteredAt"] and 0 < row["keptForS"] <= RETENTION_S
        table = cli("dlq", "list", "--worker", WORKER, env=env)
        assert table.returncode == 0 and kept in table.stdout and "alice" in table.stdout

        shown = cli("dlq", "show", kept, env=env)
        assert shown.returncode == 0, shown.stderr
        body = json.loads(shown.stdout)
        assert body["deadLettered"] is True and body["workerId"] == WORKER
        assert body["hash"]["status"] == "error" and body["hash"]["script"] == SCRIPT
        assert 0 < redis_client.ttl(L.task(kept)) <= RETENTION_S

        gone = cli("dlq", "purge", "--worker", WORKER, purged, env=env)
        assert gone.returncode == 0, gone.stderr
        assert not redis_client.exists(L.task(purged))
        assert redis_client.lrange(L.dead_letter(WORKER), 0, -1) == [kept]

        unknown = cli("dlq", "redrive", "--worker", WORKER, "nope", env=env)
        assert unknown.returncode == 1 and "nope: not on the dead-letter list" in unknown.stderr

        Path(env["HANG_FLAG"]).unlink()  # the cause is fixed: the script runs through now
        again = cli("dlq", "redrive", "--worker", WORKER, "--all", env=env)
        assert again.returncode == 0, again.stderr
        assert "redriven: 1" in again.stdout and kept in again.stdout
        reply = client.wait(kept, timeout_s=60)
    assert reply.status == "completed" and reply.output == "42", reply.raw
    assert redis_client.llen(L.dead_letter(WORKER)) == 0
    assert redis_client.llen(L.reply(kept)) == 0  # one new reply, no stale error left
    after = cli("dlq", "list", "--worker", WORKER, "--json", env=env)
    assert json.loads(after.stdout) == []


def test_redrive_resets_the_hash_and_queues_it_with_fresh_attempts(
    stack: dict[str, str], redis_url: str, redis_client: redis.Redis
) -> None:
    env = stack
    key = SigningKey.generate()  # signed: a done marker left behind would refuse it as a replay
    with Client(redis_url, signing_key=key) as client:
        task_id = client.submit(
            SCRIPT, worker_id=WORKER, context_id="alice", caller_id=key.public_key
        )
        assert client.wait(task_id, timeout_s=90).status == "error"
    assert redis_client.exists(L.done(task_id))
    # the uncollected copy of the error reply a second client would find
    redis_client.lpush(L.reply(task_id), '{"status":"error"}')
    assert cli("pause", "--worker", WORKER, env=env).returncode == 0
    done = cli("dlq", "redrive", "--worker", WORKER, task_id, env=env)
    assert done.returncode == 0, done.stderr
    task = redis_client.hgetall(L.task(task_id))
    assert task["status"] == "pending" and task["script"] == SCRIPT
    assert not [f for f in task if str(f).startswith("rhailambda") or f in ("error", "output")]
    assert redis_client.ttl(L.task(task_id)) == -1
    assert not redis_client.exists(L.done(task_id), L.replied(task_id), L.reply(task_id))
    assert redis_client.lrange(L.queue(WORKER), 0, -1) == [task_id]
    twice = cli("dlq", "redrive", "--worker", WORKER, task_id, env=env)
    assert twice.returncode == 1 and redis_client.llen(L.queue(WORKER)) == 1
    Path(env["HANG_FLAG"]).unlink()
    assert cli("resume", "--worker", WORKER, env=env).returncode == 0
    with Client(redis_url) as client:
        reply = client.wait(task_id, timeout_s=60)
    assert reply.status == "completed" and reply.output == "42", reply.raw


@pytest.mark.parametrize("command", [["status"], ["dlq", "list", "--worker", WORKER]])
def test_without_the_cli_extra_the_install_command_is_named(
    redis_url: str, command: list[str]
) -> None:
    hide_rich = (
        "import sys; sys.modules['rich'] = None; from rhailambda.cli import main; "
        f"sys.exit(main({[*command, '--redis-url', redis_url]!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", hide_rich], capture_output=True, text=True, timeout=60
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "pip install 'rhailambda[cli]'" in done.stderr
