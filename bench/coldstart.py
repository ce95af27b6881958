"""Cold start: the function's import and first task in a fresh process; also under the RIE.

``direct``: ``python -c`` that times ``import rhailambda.functions.handler`` and the
first ``handler(event, ctx)`` on a seeded task (the in-process figure), while the
harness times the whole process from spawn to exit (interpreter start included).
``rie``: the AWS Lambda Runtime Interface Emulator shipped with aws-sam-cli
(``.venv-sam``) runs ``python -m awslambdaric <handler>``; the first invoke after
the emulator starts is the cold one (runtime process start, import, first task),
the second is warm. Skipped with a note when the emulator is absent.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import subprocess
import time
import urllib.request
import uuid
from typing import Any

import redis

from bench.config import REPO, SCRIPT
from bench.infra import PY, free_port, wait_for
from rhailambda.protocol import KeyLayout
from rhailambda.signing import SigningKey
from tests.support.shim_doubles import seed_tasks

__all__ = ["MIN_RUNS", "cold_start", "rie_binary"]

MIN_RUNS = 7  # a run takes ~0.2 s and single runs vary by 10-20 %

_PROBE = r"""
import json, os, time
t0 = time.perf_counter()
import rhailambda.functions.handler as h
t1 = time.perf_counter()
class Ctx:
    function_name = "bench"; function_version = "$LATEST"; memory_limit_in_mb = 1024
    aws_request_id = "cold"; invoked_function_arn = "arn:aws:lambda:local:0:function:bench"
    log_group_name = log_stream_name = "bench"
    def get_remaining_time_in_millis(self): return 30000
r = h.handler(json.loads(os.environ["BENCH_EVENT"]), Ctx())
t2 = time.perf_counter()
assert not r["batchItemFailures"], r
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "first_task_ms": (t2 - t1) * 1e3,
                  "in_process_ms": (t2 - t0) * 1e3}))
"""


def _seed(client: redis.Redis, worker: str, *, signed: bool = False) -> dict[str, Any]:
    task_id = f"cold-{uuid.uuid4().hex}"
    seed_tasks(client, KeyLayout(), worker, [task_id])
    client.hset(KeyLayout().task(task_id), "script", SCRIPT)
    if signed:  # the function loads coincurve for its first signature
        key = SigningKey.generate()
        created = client.hget(KeyLayout().task(task_id), "createdAt") or ""
        signature = key.sign_task(task_id, key.public_key, key.public_key, SCRIPT, created)
        fields = {"callerId": key.public_key, "contextId": key.public_key}
        client.hset(KeyLayout().task(task_id), mapping={**fields, "signature": signature})
    client.lrem(KeyLayout().queue(worker), 1, task_id)  # only the event carries it
    return {"workerId": worker, "tasks": [{"taskId": task_id, "attempt": 1}]}


def _probe_env(**extra: str) -> dict[str, str]:
    """The probe's environment: bytecode is cached, as in the deployed package (whose
    .pyc files `sam build` compiles), so the first, unmeasured run writes it."""
    env = {**os.environ, **extra}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _direct_once(url: str, client: redis.Redis, *, signed: bool = False) -> dict[str, float]:
    event = _seed(client, "cold", signed=signed)
    env = _probe_env(REDIS_URL=url, BENCH_EVENT=json.dumps(event))
    started = time.perf_counter()
    proc = subprocess.run([PY, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=60)
    wall_ms = (time.perf_counter() - started) * 1e3
    if proc.returncode != 0:
        raise RuntimeError(f"cold start probe failed: {proc.stderr[-2000:]}")
    reply = json.loads(client.lindex(KeyLayout().reply(event["tasks"][0]["taskId"]), 0) or "{}")
    if reply.get("status") != "completed":  # a refused signature would be an error reply
        raise RuntimeError(f"cold start probe: the task did not complete: {reply}")
    line = [x for x in proc.stdout.splitlines() if x.startswith('{"import_ms"')][-1]
    return {**json.loads(line), "process_wall_ms": wall_ms}


def _bare_python_ms() -> float:
    started = time.perf_counter()
    subprocess.run([PY, "-c", "pass"], check=True, timeout=30)
    return (time.perf_counter() - started) * 1e3


def rie_binary() -> str | None:
    found = sorted(
        glob.glob(
            str(
                REPO
                / ".venv-sam/lib/python3*/site-packages/samcli/local/rapid/aws-lambda-rie-x86_64"
            )
        )
    )
    return found[-1] if found else None


def _invoke(port: int, event: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/2015-03-31/functions/function/invocations",
        data=json.dumps(event).encode(),
        method="POST",
    )
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.loads(resp.read())
    return (time.perf_counter() - started) * 1e3, body


def _rie_once(rie: str, url: str, client: redis.Redis) -> dict[str, float]:
    port = free_port()
    env = _probe_env(
        REDIS_URL=url, AWS_LAMBDA_FUNCTION_TIMEOUT="30", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024"
    )
    cmd = [
        rie,
        "--runtime-interface-emulator-address",
        f"127.0.0.1:{port}",
        "--log-level",
        "error",
        PY,
        "-m",
        "awslambdaric",
        "rhailambda.functions.handler.handler",
    ]
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 10, "the RIE to listen")
        cold_ms, body = _invoke(port, _seed(client, "rie"))
        if body.get("batchItemFailures"):
            raise RuntimeError(f"RIE invoke failed: {body}")
        warm_ms, _ = _invoke(port, _seed(client, "rie"))
        return {"cold_invoke_ms": cold_ms, "warm_invoke_ms": warm_ms}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _median_dict(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def cold_start(url: str, runs: int, tick: Any = None) -> dict[str, Any]:
    client = redis.Redis.from_url(url, decode_responses=True)
    _direct_once(url, client)  # .pyc written, page cache warm: later runs start alike
    runs = max(runs, MIN_RUNS)
    direct, signed = [], []
    for _ in range(runs):
        direct.append(_direct_once(url, client))
        signed.append(_direct_once(url, client, signed=True))
        if tick:
            tick()
    out: dict[str, Any] = {
        "direct": _median_dict(direct),
        "direct_runs": direct,
        "direct_signed": _median_dict(signed),
        "direct_signed_runs": signed,
        "bare_python_ms": statistics.median(_bare_python_ms() for _ in range(max(3, runs))),
    }
    rie = rie_binary()
    if rie is None:
        out["rie"] = None
        out["rie_note"] = (
            "aws-lambda-rie absent (make sam-venv installs aws-sam-cli into .venv-sam)"
        )
    else:
        rows = [_rie_once(rie, url, client) for _ in range(runs)]
        out["rie"] = _median_dict(rows)
        out["rie_runs"] = rows
    client.close()
    return out
