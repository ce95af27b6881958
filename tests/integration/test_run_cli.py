"""``rhailambda run``: the same answers as the local stack, without it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import redis

from rhailambda.client import Client

CLI = [sys.executable, "-m", "rhailambda.cli"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [*CLI, "run", *args], env={**os.environ, **(env or {})}, input=stdin,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_every_example_answers_as_the_local_stack_does(redis_url: str) -> None:
    scripts = sorted(EXAMPLES.glob("*.rhai"))
    assert len(scripts) >= 5
    env = {**os.environ, "REDIS_URL": redis_url, "POWERTOOLS_METRICS_DISABLED": "true"}
    shim = subprocess.Popen(
        [*CLI, "shim", "--worker", "runw", "--local-workers", "1", "--block-s", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with Client(redis_url) as client:
            ids = {client.submit(path.read_text(), worker_id="runw", context_id="alice",
                                 caller_id="alice"): path for path in scripts}  # fmt: skip
            replies = client.wait_many(list(ids), timeout_s=120)
    finally:
        shim.send_signal(signal.SIGTERM)
        shim.wait(timeout=60)
    # the local runs must not need a server: point them at a closed port
    closed = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    for task_id, path in ids.items():
        reply = replies[task_id]
        done = run("--context", "alice", "--caller", "alice", str(path), env=closed)
        if reply.ok:
            assert done.returncode == 0, (path.name, done.stderr)
            assert done.stdout == f"{reply.output}\n", path.name
        else:
            assert done.returncode == 1, path.name
            assert done.stdout == ""
            assert f"rhailambda run: {reply.error}" in done.stderr, (path.name, done.stderr)
            assert "line 3" in done.stderr  # the error says where
        as_json = run("--context", "alice", "--caller", "alice", "--json", str(path), env=closed)
        body = json.loads(as_json.stdout)
        assert (body["status"], body["output"], body["error"]) == (
            reply.status, reply.output, reply.error), path.name  # fmt: skip


def test_print_and_debug_go_to_stderr_and_stdin_is_read() -> None:
    script = (
        'print("to stderr"); debug("dbg");\n'
        + "`${CALLER_ID}@${CONTEXT_ID} ${WORKER_ID} ${TASK_ID}`"
    )
    done = run("-", "--context", "c1", "--caller", "bob", "--worker", "w9", "--task-id", "t1",
               stdin=script)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "bob@c1 w9 t1\n"
    assert "to stderr" in done.stderr and "dbg" in done.stderr and "line 1" in done.stderr


def test_memory_store_opens_no_connection() -> None:
    with socket.socket() as listener:  # a "Redis" that notices any connection
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        done = run(str(EXAMPLES / "circle_counter.rhai"),
                   env={"REDIS_URL": url, "RHAILAMBDA_CIRCLE_REDIS_URL": url})  # fmt: skip
        assert done.returncode == 0 and done.stdout == "1\n", done.stderr
        try:
            listener.accept()
            connected = True
        except BlockingIOError:
            connected = False
    assert not connected


def test_redis_store_applies_the_writes(redis_url: str, redis_client: redis.Redis) -> None:
    counter = str(EXAMPLES / "circle_counter.rhai")
    env = {"REDIS_URL": redis_url}
    outputs = [run("--store", "redis", "--context", "alice", counter, env=env) for _ in range(2)]
    assert [o.stdout for o in outputs] == ["1\n", "2\n"], [o.stderr for o in outputs]
    memory = run("--context", "alice", counter, env=env)  # in process: a fresh circle
    assert memory.stdout == "1\n"


def test_the_functions_limits_and_extensions_apply() -> None:
    fib = str(EXAMPLES / "fib.rhai")
    limited = run(fib, env={"RHAILAMBDA_MAX_OPERATIONS": "1000"})
    assert limited.returncode == 1 and "limit exceeded" in limited.stderr
    path = os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])
    ext = {"RHAILAMBDA_EXTENSIONS": "ext_hello:extension", "PYTHONPATH": path}
    greeted = run("-", "--context", "alice", env=ext, stdin='greet::hello("world")')
    assert greeted.returncode == 0, greeted.stderr
    assert greeted.stdout == "Hello, world! (from circle alice)\n"
    bad = run("-", env={"RHAILAMBDA_EXTENSIONS": "nope:factory"}, stdin="1")
    assert bad.returncode == 2 and "RHAILAMBDA_EXTENSIONS" in bad.stderr
    missing = run("/no/such/file.rhai")
    assert missing.returncode == 2 and "no/such/file.rhai" in missing.stderr
