"""The shim's metrics and health port against a real Redis (standalone or cluster).

Values are checked as a user reads them: the Prometheus endpoint scraped over HTTP
and parsed with prometheus-client's own parser, EMF lines parsed as JSON from the
process's stdout, ``/healthz`` and ``/readyz`` answered over HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer, free_port
from support.shim_doubles import FakeInvoker, seed_tasks, wait_until
from support.waiting import wait_for

from rhailambda.errors import InvocationError, ThrottledError
from rhailambda.event import BatchResponse, InvocationEvent
from rhailambda.protocol import KeyLayout
from rhailambda.settings import ProtocolSettings, RedisSettings
from rhailambda.shim.app import serve
from rhailambda.shim.metrics import METRICS
from rhailambda.shim.settings import (
    BatchSettings,
    FlowSettings,
    MetricsSettings,
    QueueSettings,
    RetrySettings,
    ShimSettings,
)
from rhailambda.tenancy import tenant_id_for

L = KeyLayout()
QUEUE_NAMES = {m.name for m in METRICS if m.kind == "queue"}
ALL_NAMES = {m.name for m in METRICS if m.kind != "circle"}  # the shim's line: no circles

Scrape = dict[str, dict[tuple[tuple[str, str], ...], float]]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> Scrape:
    """Every sample of /metrics by name, then by sorted labels."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def worker(scraped: Scrape, name: str, worker_id: str) -> float | None:
    return scraped.get(name, {}).get((("worker", worker_id),))


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rhailambda", *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


def emf_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"_aws"')]


def emf_names(line: dict[str, Any]) -> set[str]:
    (directive,) = line["_aws"]["CloudWatchMetrics"]
    return {m["Name"] for m in directive["Metrics"]}


def test_oldest_task_age_rises_while_paused_and_drops_after_resume(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """The whole path a user takes: `rhailambda pause`, `rhailambda shim --metrics-port
    --metrics-emf true`, a Prometheus scrape, `rhailambda resume`, the EMF log."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "RHAILAMBDA_HANDLER": "support.shim_doubles.echo_handler",
        "RHAILAMBDA_LOCAL_WORKERS": "1",
        "RHAILAMBDA_BLOCK_S": "1",
        "POWERTOOLS_METRICS_NAMESPACE": "rhailambda-test",
    }
    assert cli("pause", "--worker", "w1", env=env).returncode == 0
    ids = [f"age{i}" for i in range(5)]
    seed_tasks(redis_client, L, "w1", ids)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhailambda", "shim", "--worker", "w1", "--shim-id", "m1",
         "--metrics-port", str(port), "--metrics-emf", "true", "--metrics-interval-s", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: _ready(port), 30, "/readyz 200")
        first = scrape(port)
        assert worker(first, "rhailambda_queue_depth", "w1") == 5
        assert worker(first, "rhailambda_in_flight", "w1") == 0
        assert worker(first, "rhailambda_dead_letter_depth", "w1") == 0
        age0 = worker(first, "rhailambda_oldest_task_age_seconds", "w1")
        assert age0 is not None and age0 >= 0
        # Paused: nothing is taken, and the oldest task only gets older.
        later = wait_for(
            lambda: (
                (s := scrape(port))
                and (worker(s, "rhailambda_oldest_task_age_seconds", "w1") or 0) >= age0 + 1.0
                and s
            ),
            30,
            "the oldest task's age to rise",
        )
        assert worker(later, "rhailambda_queue_depth", "w1") == 5
        assert later["rhailambda_invocations_total"][()] == 0

        assert cli("resume", "--worker", "w1", env=env).returncode == 0
        drained = wait_for(
            lambda: (
                (s := scrape(port))
                and worker(s, "rhailambda_queue_depth", "w1") == 0
                and worker(s, "rhailambda_in_flight", "w1") == 0
                and s["rhailambda_invocations_total"][()] >= 1  # counted as its ids left
                and s
            ),
            30,
            "the queue to drain after resume",
        )
        assert worker(drained, "rhailambda_oldest_task_age_seconds", "w1") == 0
        assert drained["rhailambda_batch_duration_seconds_count"][()] >= 1
        assert drained["rhailambda_batch_duration_seconds_sum"][()] > 0
        # Every family of the table, under its Prometheus name, and nothing unnamed.
        families = {f.name for f in text_string_to_metric_families(get(port, "/metrics")[1])}
        assert families == {m.prom for m in METRICS}
    finally:  # the last EMF publish comes at shutdown, after the drain
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    lines = emf_lines(stdout)
    queue_lines = [ln for ln in lines if ln.get("worker") == "w1" and "circle_rank" not in ln]
    shim_lines = [line for line in lines if "worker" not in line]
    assert queue_lines and shim_lines
    assert all(
        line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "rhailambda-test" for line in lines
    )
    assert {n for line in queue_lines for n in emf_names(line)} == QUEUE_NAMES
    assert {n for line in shim_lines for n in emf_names(line)} == ALL_NAMES
    ages = [line["OldestTaskAge"][0] for line in queue_lines]
    depths = [line["QueueDepth"][0] for line in queue_lines]
    assert max(ages) >= 1.0 and depths[0] == 5  # seen while paused
    assert ages[-1] == 0 and depths[-1] == 0  # the last publish: after the drain
    assert sum(line["Invocations"][0] for line in shim_lines) >= 1


def _ready(port: int) -> bool:
    try:
        return get(port, "/readyz")[0] == 200
    except OSError:
        return False  # not listening yet


def _settings(url: str, port: int, **retry: Any) -> ShimSettings:
    return ShimSettings(
        redis=RedisSettings(url),
        protocol=ProtocolSettings(),
        queues=QueueSettings(
            worker_ids=("w1", "w2", "w3"),
            shim_id="m2",
            lease_s=3.0,
            block_s=0.5,
            pause_poll_s=0.1,
        ),
        flow=FlowSettings(max_concurrency=4, per_queue_concurrency=2, shutdown_timeout_s=2),
        retry=RetrySettings(**retry),
        metrics=MetricsSettings(port=port),
    )


def test_retries_dead_letters_errors_and_throttles_by_value(
    redis_client: redis.Redis, redis_url: str
) -> None:
    """w1's invocations fail (their ids wait out a long backoff), w2's tasks are past
    their attempts (dead-lettered), w3 is throttled: each shows in its own series."""

    async def behaviour(event: InvocationEvent) -> BatchResponse:
        if event.worker_id == "w1":
            raise InvocationError("boom")
        raise ThrottledError("slow down", retry_after_s=60)

    seed_tasks(redis_client, L, "w1", ["r1", "r2", "r3"])
    seed_tasks(redis_client, L, "w2", ["d1", "d2"])
    for t in ("d1", "d2"):
        redis_client.hset(L.task(t), "rhailambdaAttempt", 7)
    seed_tasks(redis_client, L, "w3", ["th1"])
    port = free_port()
    settings = _settings(redis_url, port, max_attempts=3, backoff_base_s=60, backoff_cap_s=60)

    async def scenario() -> Scrape:
        stop = asyncio.Event()
        shim = asyncio.create_task(serve(settings, FakeInvoker(behaviour), stop=stop))
        scraped: Scrape = {}

        async def settled() -> bool:
            nonlocal scraped
            try:
                scraped = await asyncio.to_thread(scrape, port)
            except OSError:
                return False
            return (
                worker(scraped, "rhailambda_retries_waiting", "w1") == 3
                and worker(scraped, "rhailambda_dead_letter_depth", "w2") == 2
                and scraped["rhailambda_throttles_total"][()] >= 1
            )

        try:
            await wait_until(settled, timeout_s=30, interval_s=0.1, what="the metrics")
        finally:
            stop.set()
            await shim
        return scraped

    scraped = asyncio.run(scenario())
    assert worker(scraped, "rhailambda_in_flight", "w1") == 3  # held while they wait
    assert worker(scraped, "rhailambda_queue_depth", "w1") == 0
    assert worker(scraped, "rhailambda_in_flight", "w2") == 0
    assert worker(scraped, "rhailambda_queue_depth", "w2") == 0
    assert worker(scraped, "rhailambda_retries_waiting", "w3") == 1  # throttled: waits too
    assert worker(scraped, "rhailambda_dead_letter_depth", "w1") == 0
    assert scraped["rhailambda_invocation_errors_total"][()] >= 1
    assert scraped["rhailambda_invocations_total"][()] >= 2


def _wait_http(port: int, path: str, status: int, *, timeout_s: float = 30) -> str:
    def answered() -> str | None:
        try:
            got, body = get(port, path)
        except OSError:
            return None
        return body if got == status else None

    return str(wait_for(answered, timeout_s, f"{path} {status}"))


def test_healthz_and_readyz_follow_redis(private_redis_server: RedisServer) -> None:
    """/readyz fails while Redis is down and recovers with it; /healthz stays up."""
    port = free_port()
    settings = _settings(private_redis_server.url, port)

    async def scenario() -> tuple[str, str, str, str]:
        stop = asyncio.Event()
        shim = asyncio.create_task(serve(settings, FakeInvoker(), stop=stop))
        try:
            ready = await asyncio.to_thread(_wait_http, port, "/readyz", 200)
            assert (await asyncio.to_thread(get, port, "/nope"))[0] == 404
            await asyncio.to_thread(private_redis_server.stop)
            down = await asyncio.to_thread(_wait_http, port, "/readyz", 503)
            alive = await asyncio.to_thread(_wait_http, port, "/healthz", 200, timeout_s=5)
            await asyncio.to_thread(private_redis_server.start)
            back = await asyncio.to_thread(_wait_http, port, "/readyz", 200)
        finally:
            stop.set()
            await shim
        return ready, down, alive, back

    ready, down, alive, back = asyncio.run(scenario())
    assert ready == "ok\n" and alive == "ok\n" and back == "ok\n"
    assert down.startswith("redis unreachable")
    with pytest.raises(OSError):  # the port closes with the shim
        get(port, "/healthz")


def test_a_metrics_port_in_use_stops_the_shim_by_name(redis_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "REDIS_URL": redis_url}
        done = cli("shim", "--worker", "w1", "--metrics-port", str(port), env=env)
    assert done.returncode != 0
    assert f"--metrics-port {port}" in done.stderr and "Traceback" not in done.stderr


REPO = Path(__file__).resolve().parents[2]


def dockerfile_env_and_healthcheck() -> tuple[dict[str, str], list[str]]:
    """shim/Dockerfile's runtime ENV (one ENV block) and HEALTHCHECK CMD."""
    text = (REPO / "shim" / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text.rsplit("\nFROM ", 1)[1]
    (env_line,) = [line for line in runtime.splitlines() if line.startswith("ENV ")]
    env = dict(shlex.split(kv)[0].split("=", 1) for kv in shlex.split(env_line[4:]))
    (check,) = [line for line in runtime.splitlines() if line.startswith("HEALTHCHECK ")]
    return env, json.loads(check.split(" CMD ", 1)[1])


def test_the_container_healthcheck_passes_on_a_live_shim_and_fails_after(
    redis_url: str,
) -> None:
    """The image's own HEALTHCHECK command (no curl: python and urllib), run against
    a shim started with the image's own metrics settings."""
    image_env, check = dockerfile_env_and_healthcheck()
    assert image_env["RHAILAMBDA_METRICS_EMF"] == "true"
    port = free_port()
    env = {
        **os.environ,
        **{k: v for k, v in image_env.items() if k.startswith("RHAILAMBDA_METRICS_")},
        "RHAILAMBDA_METRICS_PORT": str(port),
        "RHAILAMBDA_METRICS_HOST": "127.0.0.1",  # the image listens on 0.0.0.0; tests: loopback
        "REDIS_URL": redis_url,
        "RHAILAMBDA_HANDLER": "support.shim_doubles.echo_handler",
        "RHAILAMBDA_LOCAL_WORKERS": "1",
    }
    assert check[0] == "python"
    probe = [sys.executable, *check[1:]]

    def healthy() -> bool:
        return subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0

    proc = subprocess.Popen(
        [sys.executable, "-m", "rhailambda", "shim", "--worker", "w1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(healthy, 30, "the HEALTHCHECK command to pass")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-2000:]
    assert not healthy()


def test_a_poller_run_publishes_the_same_names_and_its_dead_letter_depth(
    redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The poller (on demand, exiting when idle) writes the self-run shim's EMF lines:
    the same names, and its result's deadLetterDepth is the last line's total."""
    from rhailambda.shim import poller
    from rhailambda.shim.poller_modes import PollerMode

    seed_tasks(redis_client, L, "w1", ["p1", "p2"])
    seed_tasks(redis_client, L, "w2", ["dead1"])
    redis_client.hset(L.task("dead1"), "rhailambdaAttempt", 9)  # past its attempts
    env = {
        "REDIS_URL": redis_url,
        "RHAILAMBDA_WORKERS": "w1,w2",
        "RHAILAMBDA_FUNCTION_NAME": "stack-ScriptFunction",
        "RHAILAMBDA_SHIM_ID": "stack-poller",
        "RHAILAMBDA_BLOCK_S": "0.5",
        "RHAILAMBDA_SHUTDOWN_TIMEOUT_S": "2",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": "rhailambda-shim",
    }
    settings = poller.settings_from_env(env)
    assert settings.metrics.emf and settings.metrics.port is None
    capsys.readouterr()
    run = asyncio.run(
        asyncio.wait_for(
            poller.run_poller(
                settings, 600.0, invoker=FakeInvoker(), mode=PollerMode("on-demand", 0.5)
            ),
            timeout=120,
        )
    )
    lines = emf_lines(capsys.readouterr().out)
    assert run.dead_letter_depth == 1
    totals = [line for line in lines if "worker" not in line]
    assert totals and totals[-1]["DeadLetterDepth"] == [1.0]
    assert totals[-1]["QueueDepth"] == [0.0] and totals[-1]["OldestTaskAge"] == [0.0]
    assert {n for line in totals for n in emf_names(line)} == ALL_NAMES
    per_queue = {ln["worker"]: ln for ln in lines if "worker" in ln and "circle_rank" not in ln}
    assert set(per_queue) == {"w1", "w2"}
    assert all(emf_names(line) == QUEUE_NAMES for line in per_queue.values())
    assert per_queue["w2"]["DeadLetterDepth"] == [1.0]
    assert all(line["service"] == "rhailambda-shim" for line in lines)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--metrics-port", "70000", "must be from 1 to 65535"),
        ("--metrics-port", "http", "expected an integer"),
        ("--metrics-emf", "maybe", "expected true or false"),
        ("--metrics-interval-s", "0", "must be from 1 to 3600"),
    ],
)
def test_bad_metrics_settings_stop_the_shim_by_name(
    flag: str, value: str, message: str, redis_url: str
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url}
    done = cli("shim", "--worker", "w1", flag, value, env=env)
    assert done.returncode != 0
    assert flag in done.stderr and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_readyz_fails_while_the_lease_cannot_be_renewed(private_redis_server: RedisServer) -> None:
    """Redis answers PING but refuses writes (out of memory): the heartbeat cannot
    renew the lease, and /readyz says so once the lease has run out."""
    port = free_port()
    settings = _settings(private_redis_server.url, port)
    admin = redis.Redis.from_url(private_redis_server.url, decode_responses=True)

    async def scenario() -> tuple[str, str]:
        stop = asyncio.Event()
        shim = asyncio.create_task(serve(settings, FakeInvoker(), stop=stop))
        try:
            await asyncio.to_thread(_wait_http, port, "/readyz", 200)
            admin.config_set("maxmemory", 1)  # every write now fails with OOM
            lapsed = await asyncio.to_thread(_wait_http, port, "/readyz", 503)
            admin.config_set("maxmemory", 0)
            back = await asyncio.to_thread(_wait_http, port, "/readyz", 200)
        finally:
            admin.config_set("maxmemory", 0)
            stop.set()
            await shim
        return lapsed, back

    try:
        lapsed, back = asyncio.run(scenario())
    finally:
        admin.close()
    assert lapsed.startswith("lease not held") and back == "ok\n"


ODD_CIRCLE = 'beta "β"\n' + "x" * 600  # quotes, non-ASCII, a newline, past 256 characters


def circles(scraped: Scrape, name: str) -> dict[tuple[str, str], float]:
    """A circle gauge's series: (worker, circle label) -> value."""
    return {
        (dict(labels)["worker"], dict(labels)["circle"]): value
        for labels, value in scraped.get(name, {}).items()
    }


def test_the_busiest_circles_show_per_queue_and_go_when_the_queue_drains(
    redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two circles queue work on w1 (one with an id no label could hold as is), one on
    w2; invocations are held, so each circle has tasks running and tasks queued in the
    read-ahead window. Prometheus shows each (queue, circle) with its counts, EMF by
    rank; once the invocations are let go and the queues drain, the series are gone."""
    work = {("w1", "alpha"): 6, ("w1", ODD_CIRCLE): 3, ("w2", "alpha"): 2}
    for (worker_id, circle), n in work.items():
        ids = [f"{worker_id}-{circle[:4]}-{i}" for i in range(n)]
        seed_tasks(redis_client, L, worker_id, ids)
        for task_id in ids:
            redis_client.hset(L.task(task_id), "contextId", circle)
    expected = {(w, tenant_id_for(c)): n for (w, c), n in work.items()}
    port = free_port()
    base = _settings(redis_url, port)
    settings = dataclasses.replace(
        base,
        batch=BatchSettings(batch_size=1),
        metrics=MetricsSettings(port=port, emf=True, interval_s=0.2),
    )
    emf_out: list[dict[str, Any]] = []

    async def scenario() -> tuple[Scrape, Scrape]:
        gate = asyncio.Event()

        async def held(event: InvocationEvent) -> BatchResponse:
            await gate.wait()
            return BatchResponse({t.task_id: "completed" for t in event.tasks})

        stop = asyncio.Event()
        shim = asyncio.create_task(serve(settings, FakeInvoker(held), stop=stop))
        busy: Scrape = {}

        async def all_read_and_running() -> bool:
            nonlocal busy
            try:
                busy = await asyncio.to_thread(scrape, port)
            except OSError:
                return False
            queued = circles(busy, "rhailambda_circle_queued")
            running = circles(busy, "rhailambda_circle_running")
            totals = {k: queued.get(k, 0) + running.get(k, 0) for k in queued | running}
            # w1: 2 invocations at once (per queue), w2: both of its tasks running
            return totals == expected and sum(running.values()) == 4

        drained: Scrape = {}

        async def all_gone() -> bool:
            nonlocal drained
            drained = await asyncio.to_thread(scrape, port)
            return (
                not circles(drained, "rhailambda_circle_queued")
                and not circles(drained, "rhailambda_circle_running")
                and all(
                    worker(drained, "rhailambda_in_flight", w) == 0
                    and worker(drained, "rhailambda_queue_depth", w) == 0
                    for w in ("w1", "w2")
                )
            )

        def emf_by_rank() -> bool:
            emf_out.extend(emf_lines(capsys.readouterr().out))
            return any(line.get("circle") == tenant_id_for(ODD_CIRCLE) for line in emf_out)

        try:
            await wait_until(all_read_and_running, timeout_s=30, interval_s=0.05,
                             what="both circles queued and running")  # fmt: skip
            await wait_until(emf_by_rank, timeout_s=30, interval_s=0.05, what="EMF circles")
            gate.set()
            await wait_until(all_gone, timeout_s=30, interval_s=0.05, what="the drain")
        finally:
            gate.set()
            stop.set()
            await shim
        return busy, drained

    busy, drained = asyncio.run(scenario())
    queued = circles(busy, "rhailambda_circle_queued")
    running = circles(busy, "rhailambda_circle_running")
    # fair share: w1's two running tasks are one of each circle; w2's two are both alpha
    assert running == {("w1", "alpha"): 1, ("w1", tenant_id_for(ODD_CIRCLE)): 1,
                       ("w2", "alpha"): 2}  # fmt: skip
    assert queued == {("w1", "alpha"): 5, ("w1", tenant_id_for(ODD_CIRCLE)): 2,
                      ("w2", "alpha"): 0}  # fmt: skip
    assert worker(busy, "rhailambda_in_flight", "w1") == 9  # all read ahead: in flight
    assert {n for n in drained if n.startswith("rhailambda_circle_")} == set()
    by_rank = [ln for ln in emf_out if "circle_rank" in ln]
    assert {(ln["worker"], ln["circle_rank"]) for ln in by_rank} <= {
        (w, str(r)) for w in ("w1", "w2") for r in (1, 2)
    }
    odd = [ln for ln in by_rank if ln["circle"] == tenant_id_for(ODD_CIRCLE)]
    assert odd and all(ln["CircleQueued"][0] + ln["CircleRunning"][0] <= 3 for ln in odd)
    assert all(len(ln["circle"]) <= 256 for ln in by_rank)
