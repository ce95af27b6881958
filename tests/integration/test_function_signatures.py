"""Signed tasks through the function's batch runner: real redis-server, engine, circle store.

Tasks are submitted by the real client (``Client(signing_key=...)``) or written by
hand as another client would; the circle's data lives in Redis, so "changes no
circle data" is checked on the server itself.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from rhailambda import protocol as p
from rhailambda.circle import CircleExtension
from rhailambda.circle.redis_store import RedisCircleStore
from rhailambda.client import Client
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.functions.runner import BatchRunner
from rhailambda.functions.settings import FunctionSettings
from rhailambda.resp import RespClient
from rhailambda.settings import ProtocolSettings, SignatureSettings
from rhailambda.signing import SigningKey, check_task
from rhailambda.taskstore import TaskStore

pytest.importorskip("rhai_py")

LAYOUT = p.KeyLayout()
WORKER = "worker1"
OWNER = SigningKey.generate()
#: writes the owner's circle, then says whether the caller was proven
WRITE = """
    let c = db::get("counters", "n");
    let n = if c == () { 0 } else { c.count };
    db::save("counters", "n", #{ count: n + 1 });
    `${n + 1} ${CALLER_VERIFIED}`
"""


def _runner(client: RespClient, signatures: SignatureSettings) -> BatchRunner:
    protocol = ProtocolSettings(replay_window_s=signatures.replay_window_s)
    settings = FunctionSettings(circle_enabled=False, signatures=signatures, protocol=protocol)
    return BatchRunner(
        settings,
        TaskStore(client, settings.protocol),
        [CircleExtension(RedisCircleStore(client))],
    )


@pytest.fixture
def runner(resp_client: RespClient) -> BatchRunner:
    return _runner(resp_client, SignatureSettings())  # the default policy: verify


@pytest.fixture
def client(redis_url: str) -> Iterator[Client]:
    with Client(redis_url, signing_key=OWNER) as c:
        yield c


def _run(runner: BatchRunner, *ids: str, worker: str = WORKER) -> dict[str, str]:
    event = InvocationEvent(worker, tuple(TaskRef(t, 1) for t in ids))
    return dict(runner.run(event, 30.0).outcomes)


def _reply(r: redis.Redis, task_id: str) -> dict[str, Any]:
    replies = r.lrange(LAYOUT.reply(task_id), 0, -1)
    assert len(replies) == 1, f"expected exactly one reply for {task_id}, got {replies}"
    return dict(json.loads(replies[0]))


def _circle_keys(r: redis.Redis) -> list[str]:
    return sorted(str(k) for k in r.keys(f"{LAYOUT.internal_prefix}circle:*"))


def _submit(client: Client, script: str = WRITE, **kw: str) -> str:
    return client.submit(script, worker_id=WORKER, context_id=OWNER.public_key, caller_id="", **kw)


def _assert_refused(r: redis.Redis, task_id: str, prefix: str, outcomes: dict[str, str]) -> str:
    assert outcomes == {task_id: "error"}
    reply = _reply(r, task_id)
    assert reply["status"] == "error" and reply["output"] is None
    assert reply["error"].startswith(prefix), reply["error"]
    assert _circle_keys(r) == [], "a refused task changed circle data"
    return str(reply["error"])


def _flip_last_bit(text: str) -> str:
    return text[:-1] + chr(ord(text[-1]) ^ 1)


@pytest.mark.standalone_only("counts keys with DBSIZE / KEYS, which read one node of a cluster")
def test_a_signed_task_runs_with_caller_verified(
    runner: BatchRunner, client: Client, redis_client: redis.Redis
) -> None:
    task_id = _submit(client)
    task = redis_client.hgetall(LAYOUT.task(task_id))
    assert task["callerId"] == OWNER.public_key and len(task["signature"]) == 128
    assert _run(runner, task_id) == {task_id: "completed"}
    assert _reply(redis_client, task_id)["output"] == "1 true"
    assert _circle_keys(redis_client), "the owner's write went in"


def test_unsigned_tasks_still_run_under_verify(
    runner: BatchRunner, redis_client: redis.Redis
) -> None:
    """The raw protocol exchange by hand, as README and PROTOCOL.md show it, unchanged."""
    redis_client.hset(
        LAYOUT.task("t1"),
        mapping={"taskId": "t1", "script": "let x = 10; x * 2", "callerId": "alice",
                 "contextId": "alice", "status": "pending", "createdAt": "2026-01-01T00:00:00Z",
                 "updatedAt": "2026-01-01T00:00:00Z"},
    )  # fmt: skip
    t1: dict[Any, Any] = redis_client.hgetall(LAYOUT.task("t1"))
    redis_client.hset(
        LAYOUT.task("t2"), mapping={**t1, "taskId": "t2", "script": "CALLER_VERIFIED"}
    )
    assert _run(runner, "t1", "t2") == {"t1": "completed", "t2": "completed"}
    assert _reply(redis_client, "t1")["output"] == "20"
    assert _reply(redis_client, "t2")["output"] == "false"


@pytest.mark.parametrize("field", ["contextId", "callerId", "script", "createdAt", "signature"])
def test_one_flipped_bit_in_a_signed_field_is_refused(
    runner: BatchRunner, client: Client, redis_client: redis.Redis, field: str
) -> None:
    task_id = _submit(client)
    value = redis_client.hget(LAYOUT.task(task_id), field)
    assert value is not None
    redis_client.hset(LAYOUT.task(task_id), field, _flip_last_bit(str(value)))
    _assert_refused(redis_client, task_id, "invalid signature", _run(runner, task_id))


@pytest.mark.parametrize("keep_task_id_field", [True, False])
def test_a_hash_copied_under_a_new_id_is_refused(
    runner: BatchRunner, client: Client, redis_client: redis.Redis, keep_task_id_field: bool
) -> None:
    task_id = _submit(client)
    copied: dict[Any, Any] = redis_client.hgetall(LAYOUT.task(task_id))
    redis_client.delete(LAYOUT.task(task_id))
    new_id = _flip_last_bit(task_id)
    if not keep_task_id_field:
        copied["taskId"] = new_id
    redis_client.hset(LAYOUT.task(new_id), mapping=copied)
    _assert_refused(redis_client, new_id, "invalid signature", _run(runner, new_id))


def test_a_signature_by_another_key_is_refused(
    runner: BatchRunner, redis_url: str, redis_client: redis.Redis
) -> None:
    """Mallory signs with her own key but claims to be the circle's owner."""
    mallory = SigningKey.generate()
    with Client(redis_url, signing_key=mallory) as c:
        task_id = c.submit(WRITE, worker_id=WORKER, context_id=OWNER.public_key, caller_id="")
    redis_client.hset(LAYOUT.task(task_id), "callerId", OWNER.public_key)
    error = _assert_refused(redis_client, task_id, "invalid signature", _run(runner, task_id))
    assert "does not match" in error


def test_a_stale_created_at_is_refused(runner: BatchRunner, redis_client: redis.Redis) -> None:
    created = (datetime.now(UTC) - timedelta(seconds=3600 + 60 + 30)).isoformat()
    task_id = "stale-1"
    fields: dict[Any, Any] = {"taskId": task_id, "script": WRITE, "callerId": OWNER.public_key,
              "contextId": OWNER.public_key, "status": "pending", "createdAt": created,
              "updatedAt": created}  # fmt: skip
    fields["signature"] = OWNER.sign_task(
        task_id, OWNER.public_key, OWNER.public_key, WRITE, created
    )
    redis_client.hset(LAYOUT.task(task_id), mapping=fields)
    error = _assert_refused(redis_client, task_id, "invalid signature", _run(runner, task_id))
    assert "expired" in error


def test_a_finished_task_id_is_never_run_again(
    runner: BatchRunner, client: Client, redis_client: redis.Redis
) -> None:
    """The whole hash written again, signature and all, after the task finished (a replay)."""
    task_id = _submit(client)
    original: dict[Any, Any] = redis_client.hgetall(LAYOUT.task(task_id))
    assert _run(runner, task_id) == {task_id: "completed"}
    assert redis_client.lpop(LAYOUT.reply(task_id)) is not None  # the client took its reply
    data = {k: redis_client.dump(k) for k in _circle_keys(redis_client)}
    redis_client.hset(LAYOUT.task(task_id), mapping=original)
    assert _run(runner, task_id) == {task_id: "error"}
    error = _reply(redis_client, task_id)["error"]
    assert error.startswith("invalid signature") and "replay" in error
    assert {k: redis_client.dump(k) for k in _circle_keys(redis_client)} == data


def test_the_done_marker_outlives_the_signature_window(
    runner: BatchRunner, client: Client, redis_client: redis.Redis
) -> None:
    task_id = _submit(client)
    _run(runner, task_id)
    wanted = 3600 + 2 * 60  # the signature's default window, past the reply's hour
    assert redis_client.ttl(LAYOUT.done(task_id)) >= wanted - 5


@pytest.mark.parametrize("how", ["policy", "worker list"])
def test_a_missing_signature_under_require_is_refused(
    resp_client: RespClient, redis_url: str, redis_client: redis.Redis, how: str
) -> None:
    if how == "policy":
        signatures = SignatureSettings(policy="require")
    else:
        signatures = SignatureSettings(require_workers=frozenset({WORKER}))
    runner = _runner(resp_client, signatures)
    with Client(redis_url) as unsigned:
        task_id = unsigned.submit(
            WRITE, worker_id=WORKER, context_id=OWNER.public_key, caller_id=OWNER.public_key
        )
    _assert_refused(redis_client, task_id, "signature required", _run(runner, task_id))
    with Client(redis_url, signing_key=OWNER) as signed:
        ok = _submit(signed)
    assert _run(runner, ok) == {ok: "completed"}
    assert _reply(redis_client, ok)["output"] == "1 true"


def test_off_runs_everything_unverified(
    resp_client: RespClient, client: Client, redis_client: redis.Redis
) -> None:
    runner = _runner(resp_client, SignatureSettings(policy="off"))
    task_id = _submit(client)
    redis_client.hset(LAYOUT.task(task_id), "signature", "00" * 64)
    assert _run(runner, task_id) == {task_id: "completed"}
    assert _reply(redis_client, task_id)["output"] == "1 false"


def test_the_client_refuses_a_caller_id_its_key_cannot_prove(client: Client) -> None:
    with pytest.raises(ValueError, match="signing key"):
        client.submit("1", worker_id=WORKER, context_id="c", caller_id="alice")


CLI = [sys.executable, "-m", "rhailambda.cli"]


def test_keygen_then_submit_with_the_key(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url}
    key_file = tmp_path / "me.key"
    made = subprocess.run([*CLI, "keygen", "--out", str(key_file)], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    public = made.stdout.strip()
    assert re.fullmatch(r"0[23][0-9a-f]{64}", public)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = subprocess.run([*CLI, "keygen", "--out", str(key_file)], env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert again.returncode == 1 and "exists already" in again.stderr
    sent = subprocess.run(
        [*CLI, "submit", "--worker", WORKER, "--context", public, "--key", str(key_file),
         "--script", "40 + 2"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    stored: dict[Any, Any] = redis_client.hgetall(LAYOUT.task(task_id))
    fields = p.TaskFields.from_hash(task_id, stored)
    assert fields.caller_id == public
    now = datetime.now(UTC).timestamp()
    assert check_task(SignatureSettings(), WORKER, task_id, fields, now).verified
