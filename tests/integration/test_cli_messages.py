"""What a user sees when they get something wrong: one line, a non-zero exit, no secret.

Every command of the ``rhailambda`` CLI runs as a subprocess, as a user runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from rhailambda.client import Client
from rhailambda.errors import InvalidIdError

CLI = [sys.executable, "-m", "rhailambda.cli"]
PASSWORD = "Pa#ss?w/rd"
BAD_URL = f"redis://:{PASSWORD}@127.0.0.1:1/0"
SUBMIT = ["submit", "--worker", "w", "--context", "c", "--caller", "c"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, *args], env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0", **(env or {})},
        capture_output=True, timeout=120,
    )  # fmt: skip


def _one_line_error(done: subprocess.CompletedProcess[bytes]) -> str:
    err = done.stderr.decode(errors="replace")
    assert done.returncode != 0, err
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def _fragments(secret: str, size: int = 3) -> set[str]:
    return {
        secret[i : i + n] for n in range(size, len(secret) + 1) for i in range(len(secret) - n + 1)
    }


def _assert_no_secret(done: subprocess.CompletedProcess[bytes]) -> None:
    text = (done.stdout + done.stderr).decode(errors="replace")
    leaked = [f for f in _fragments(PASSWORD) if f in text]
    assert not leaked, (leaked, text)


COMMANDS = [
    [*SUBMIT, "--script", "1"],
    ["status"],
    ["status", "--json"],
    ["pause", "--worker", "w"],
    ["resume", "--worker", "w"],
    ["shim", "--worker", "w"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("how", ["env", "flag"])
def test_a_password_that_breaks_the_url_is_never_printed(command: list[str], how: str) -> None:
    if how == "env":
        done = _run(*command, env={"REDIS_URL": BAD_URL})
        name = "REDIS_URL"
    else:
        done = _run(*command, "--redis-url", BAD_URL)
        name = "--redis-url"
    err = _one_line_error(done)
    _assert_no_secret(done)
    assert f"bad setting {name}:" in err and "percent-encoded" in err


def test_a_bad_circle_url_is_named_at_shim_start_not_in_every_reply() -> None:
    done = _run("shim", "--worker", "w", "--local-workers", "1",
                env={"RHAILAMBDA_CIRCLE_REDIS_URL": BAD_URL})  # fmt: skip
    err = _one_line_error(done)
    _assert_no_secret(done)
    assert "RHAILAMBDA_CIRCLE_REDIS_URL" in err and "REDIS_URL:" not in err.split(": ", 2)[1]


def test_the_local_worker_start_up_error_is_redacted() -> None:
    """The text a failing local worker reports (it became every task's error reply)."""
    worker = [sys.executable, "-m", "rhailambda.shim.local_worker",
              "rhailambda.functions.handler.handler"]  # fmt: skip
    for env in ({"REDIS_URL": BAD_URL}, {"RHAILAMBDA_CIRCLE_REDIS_URL": BAD_URL}):
        done = subprocess.run(
            worker, input=b"", capture_output=True, timeout=60, env={**os.environ, **env}
        )
        assert done.returncode == 1
        _assert_no_secret(done)
        assert next(iter(env)) + ":" in done.stdout.decode(errors="replace")


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        (["--lease-s", "1e308"], "--lease-s"),
        (["--lease-s", "0.001"], "--lease-s"),
        (["--block-s", "1e308"], "--block-s"),
        (["--block-s", "0"], "--block-s"),
        (["--function-timeout-s", "1e308"], "--function-timeout-s"),
        (["--batch-size", "100000"], "--batch-size"),
        (["--max-concurrency", "0"], "--max-concurrency"),
        (["--local-workers", "100000"], "--local-workers"),
        (["--shutdown-timeout-s", "nan"], "--shutdown-timeout-s"),
        (["--handler", "no_such_module.handler"], "--handler"),
        (["--backend", "lambda"], "AWS_REGION"),
    ],
)
def test_shim_values_that_cannot_work_stop_it_at_start(flags: list[str], name: str) -> None:
    env = {"AWS_REGION": "", "AWS_DEFAULT_REGION": "", "AWS_CONFIG_FILE": "/nonexistent"}
    err = _one_line_error(_run("shim", "--worker", "w", *flags, env=env))
    assert f"bad setting {name}:" in err


def test_submit_mistakes_are_one_line(tmp_path: Path, redis_url: str) -> None:
    latin1 = tmp_path / "latin1.rhai"
    latin1.write_bytes(b'let s = "\xe9"; s')
    cases: list[tuple[list[str], str]] = [
        ([*SUBMIT, str(tmp_path / "missing.rhai")], "missing.rhai"),
        ([*SUBMIT, str(tmp_path)], "directory"),
        ([*SUBMIT, str(latin1)], "UTF-8"),
        ([*SUBMIT, "--script", "1\udcff"], "script"),
        (
            ["submit", "--worker", "w\udcff", "--context", "c", "--caller", "c", "--script", "1"],
            "worker id",
        ),
        ([*SUBMIT, "--task-id", "reply:victim", "--script", "1"], "reply list"),
        ([*SUBMIT, "--task-id", "w", "--script", "1"], "worker queue"),
        ([*SUBMIT, "--task-id", "", "--script", "1"], "task id"),
        ([*SUBMIT, "--task-id", "a b", "--script", "1"], "whitespace"),
        (
            [
                "submit",
                "--worker",
                "reply:victim",
                "--context",
                "c",
                "--caller",
                "c",
                "--script",
                "1",
            ],
            "reply list",
        ),
        ([*SUBMIT, "--script", "1", "--timeout", "soon"], "--timeout"),
        ([*SUBMIT, "--script", "1"], "Redis"),  # nobody listens on port 1
    ]
    for argv, needle in cases:
        env = {} if needle == "Redis" else {"REDIS_URL": redis_url}
        done = subprocess.run(
            [*CLI, *(a.encode(errors="surrogateescape") for a in argv)],
            env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0", **env},
            capture_output=True, timeout=60,
        )  # fmt: skip
        err = _one_line_error(done)
        assert needle in err, (argv, err)


@pytest.mark.standalone_only("counts keys with DBSIZE / KEYS, which read one node of a cluster")
def test_the_client_refuses_ids_that_collide_with_protocol_keys(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.rpush("rhailib:reply:victim", "the victim's reply")
    with Client(redis_url) as client:
        for kwargs in (
            {"worker_id": "reply:victim"},
            {"worker_id": "w", "task_id": "reply:victim"},
            {"worker_id": "w", "task_id": "w"},
            {"worker_id": "w", "task_id": ""},
            {"worker_id": ""},
            {"worker_id": "w", "task_id": "x\n"},
        ):
            args = {"context_id": "c", "caller_id": "c", "task_id": None, **kwargs}
            with pytest.raises(InvalidIdError):
                client.submit("1", **args)  # type: ignore[arg-type]
    assert redis_client.lrange("rhailib:reply:victim", 0, -1) == ["the victim's reply"]
    assert redis_client.dbsize() == 1
