"""The poller's modes against a real Redis (standalone or cluster): the on-demand check,
the drain that exits once idle, recovery of a run killed mid-drain, and the always-on
successor check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from support.shim_doubles import FakeInvoker, seed_tasks

from rhailambda.event import BatchResponse, InvocationEvent
from rhailambda.protocol import KeyLayout
from rhailambda.resp_async import AsyncRespClient
from rhailambda.settings import ProtocolSettings, RedisSettings
from rhailambda.shim import poller
from rhailambda.shim.poller_modes import PollerMode, live_pollers, probe
from rhailambda.shim.redis_lease import now_ms
from rhailambda.shim.settings import (
    BatchSettings,
    FlowSettings,
    QueueSettings,
    RetrySettings,
    ShimSettings,
)

L = KeyLayout()
WORKERS = ("w1", "w2")


def make_settings(url: str, shim_id: str = "stack-poller") -> ShimSettings:
    return ShimSettings(
        redis=RedisSettings(url),
        protocol=ProtocolSettings(),
        queues=QueueSettings(worker_ids=WORKERS, shim_id=shim_id, lease_s=3.0, block_s=0.5),
        batch=BatchSettings(batch_size=10),
        flow=FlowSettings(max_concurrency=4, per_queue_concurrency=4, shutdown_timeout_s=5),
        retry=RetrySettings(max_attempts=3, backoff_base_s=0.1, backoff_cap_s=0.1),
    )


def _probe(url: str, shim_id: str = "stack-poller") -> int:
    async def go() -> int:
        client = AsyncRespClient(RedisSettings(url).address())
        try:
            return await probe(client, L, WORKERS, shim_id)
        finally:
            client.close()

    return asyncio.run(go())


@dataclass
class InvokeEndpoint:
    """What the local Lambda Invoke endpoint saw: each invoked path, in order; each
    request's payload goes to ``on_invoke`` (when set) before the 202 answer."""

    invoked: list[str] = field(default_factory=list)
    on_invoke: Callable[[bytes], None] | None = None


@pytest.fixture
def lambda_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[InvokeEndpoint]:
    """A local Lambda Invoke endpoint for boto3 (``AWS_ENDPOINT_URL_LAMBDA``)."""
    import http.server
    import threading

    endpoint = InvokeEndpoint()

    class Invoke(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            payload = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            endpoint.invoked.append(self.path)
            if endpoint.on_invoke is not None:
                endpoint.on_invoke(payload)
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Invoke)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()


def test_the_check_sees_queued_work_paused_queues_and_dead_shims(
    redis_url: str, redis_client: Any
) -> None:
    assert _probe(redis_url) == 0
    seed_tasks(redis_client, L, "w2", ["t1", "t2"])
    assert _probe(redis_url) == 2
    redis_client.set(L.paused("w2"), "1")
    assert _probe(redis_url) == 0  # a paused queue is no work
    redis_client.delete(L.paused("w2"), L.queue("w2"))
    redis_client.lpush(L.inflight("w1", "stack-poller"), "t1")  # a killed run's ids
    assert _probe(redis_url) == 1
    redis_client.delete(L.inflight("w1", "stack-poller"))
    redis_client.zadd(L.shims(), {"dead-shim": now_ms() - 1000})  # its lease expired
    assert _probe(redis_url) == 1
    redis_client.zadd(L.shims(), {"dead-shim": now_ms() + 60_000})  # live: not ours to reap
    assert _probe(redis_url) == 0


def test_an_on_demand_run_drains_everything_then_exits_once_idle(
    redis_url: str, redis_client: Any
) -> None:
    ids = [f"t{i}" for i in range(300)]
    seed_tasks(redis_client, L, "w1", ids[:150])
    seed_tasks(redis_client, L, "w2", ids[150:])
    invoker = FakeInvoker()
    settings = make_settings(redis_url)
    # A budget far beyond the test's patience: only the idle exit can end this run.
    run = asyncio.run(
        asyncio.wait_for(
            poller.run_poller(settings, 600.0, invoker=invoker, mode=PollerMode("on-demand", 0.5)),
            timeout=120,
        )
    )
    assert sorted(invoker.task_ids) == sorted(ids)
    assert run.shim_id == "stack-poller"
    assert redis_client.zcard(L.shims()) == 0  # deregistered
    assert _probe(redis_url) == 0


def test_an_on_demand_run_under_a_steady_stream_is_not_idle(
    redis_url: str, redis_client: Any
) -> None:
    """Quick tasks leave the queues empty at almost every probe; the batches the run
    invokes count as work, so it exits only once the stream stopped. (The old idle
    watch sampled the queues alone and stopped this run a second into the stream.)"""
    import threading
    import time

    ended: list[float] = []

    def run() -> None:
        asyncio.run(
            poller.run_poller(
                make_settings(redis_url),
                600.0,
                invoker=FakeInvoker(),
                mode=PollerMode("on-demand", 1.0),
            )
        )
        ended.append(time.monotonic())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ids = [f"s{i}" for i in range(60)]
    for task_id in ids:  # 3 s of submits, one each 50 ms
        seed_tasks(redis_client, L, "w1", [task_id])
        time.sleep(0.05)
    stream_end = time.monotonic()
    thread.join(60)
    assert ended and ended[0] >= stream_end + 0.5  # idle (1 s) after its last batch
    assert redis_client.llen(L.queue("w1")) == 0


def test_a_run_killed_mid_drain_loses_nothing(redis_url: str, redis_client: Any) -> None:
    ids = [f"k{i}" for i in range(40)]
    seed_tasks(redis_client, L, "w1", ids)
    gate = asyncio.Event()

    async def hang(event: InvocationEvent) -> BatchResponse:
        await gate.wait()  # never set: the run dies holding its batches
        return BatchResponse({})

    async def killed() -> None:
        task = asyncio.create_task(
            poller.run_poller(
                make_settings(redis_url),
                600.0,
                invoker=FakeInvoker(hang),
                mode=PollerMode("on-demand", 60),
            )
        )
        while not redis_client.llen(L.inflight("w1", "stack-poller")):
            await asyncio.sleep(0.05)
        task.cancel()  # like a Lambda timeout: no hand-back
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(killed())
    assert redis_client.llen(L.inflight("w1", "stack-poller")) > 0
    assert _probe(redis_url) > 0  # the next trigger sees the killed run's ids
    invoker = FakeInvoker()
    asyncio.run(
        asyncio.wait_for(
            poller.run_poller(
                make_settings(redis_url), 600.0, invoker=invoker, mode=PollerMode("on-demand", 0.5)
            ),
            timeout=120,
        )
    )
    assert sorted(set(invoker.task_ids)) == sorted(ids)
    assert redis_client.llen(L.inflight("w1", "stack-poller")) == 0


def test_a_scheduled_always_on_trigger_sees_the_live_run(redis_url: str, redis_client: Any) -> None:
    redis_client.zadd(
        L.shims(), {"stack-poller-aaaa": now_ms() + 60_000, "other": now_ms() + 60_000}
    )
    redis_client.zadd(L.shims(), {"stack-poller-dead": now_ms() - 1})

    async def go() -> list[str]:
        client = AsyncRespClient(RedisSettings(redis_url).address())
        try:
            return await live_pollers(client, L, "stack-poller")
        finally:
            client.close()

    assert asyncio.run(go()) == ["stack-poller-aaaa"]


def test_a_bad_mode_is_a_clear_error() -> None:
    from rhailambda.errors import SettingError
    from rhailambda.shim.poller_modes import mode_from_env

    with pytest.raises(SettingError, match="RHAILAMBDA_POLLER_MODE"):
        mode_from_env({"RHAILAMBDA_POLLER_MODE": "sometimes"})
    with pytest.raises(SettingError, match="RHAILAMBDA_POLLER_IDLE_EXIT_S"):
        mode_from_env({"RHAILAMBDA_POLLER_IDLE_EXIT_S": "soon"})
    assert mode_from_env({}).mode == "always-on"


class FirstTaken:
    """A FakeInvoker behaviour for the hand-over tests: completes every task and notes
    when each id was first taken (by whichever run)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    async def __call__(self, event: InvocationEvent) -> BatchResponse:
        now = time.monotonic()
        for t in event.tasks:
            self.at.setdefault(t.task_id, now)
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    def longest_wait_s(self, submitted: dict[str, float]) -> float:
        """The longest a submitted task waited for a drainer (printed for the log)."""
        waits = sorted(self.at[t] - submitted[t] for t in submitted)
        print(f"{len(waits)} tasks across the hand-over; longest wait for a drainer "
              f"{waits[-1]:.3f} s")  # fmt: skip
        return waits[-1]


def test_always_on_runs_hand_over_without_a_gap(
    redis_url: str, redis_client: Any, lambda_endpoint: InvokeEndpoint
) -> None:
    """The ending run invokes its successor (a real second run, started by a local
    Invoke endpoint) and stops taking only once that run's lease is live: tasks
    submitted continuously across both never wait for a drainer longer than 2 s."""
    import threading

    taken = FirstTaken()

    def run(shim_id: str, drain_s: float, successor: tuple[str, str] | None) -> None:
        asyncio.run(
            poller.run_poller(
                make_settings(redis_url, shim_id),
                drain_s,
                invoker=FakeInvoker(taken),
                mode=PollerMode("always-on", 60),
                successor=successor,
            )
        )

    second = threading.Thread(target=run, args=("stack-poller-b", 3.0, None), daemon=True)
    lambda_endpoint.on_invoke = lambda payload: second.start()
    first = threading.Thread(
        target=run, args=("stack-poller-a", 2.0, ("stack-poller", "poller")), daemon=True
    )
    submitted: dict[str, float] = {}
    first.start()
    deadline = time.monotonic() + 30
    while redis_client.zscore(L.shims(), "stack-poller-a") is None:  # draining from here
        assert time.monotonic() < deadline, "the first run never took its lease"
        time.sleep(0.01)
    time.sleep(0.2)  # its first blocking take is out
    i = 0
    while first.is_alive() or not second.is_alive():
        task_id = f"h{i}"
        submitted[task_id] = time.monotonic()
        seed_tasks(redis_client, L, "w1", [task_id])
        i += 1
        time.sleep(0.05)  # a steady stream of submits
        assert i < 2000, "the first run never ended"
    second.join(30)
    assert not second.is_alive()
    assert set(taken.at) == set(submitted)
    assert taken.longest_wait_s(submitted) < 2.0  # the bound (the take wakes within ms)


def test_only_a_live_poller_lease_suppresses_the_wake_up(
    redis_url: str, redis_client: Any, lambda_endpoint: InvokeEndpoint
) -> None:
    """A self-run shim serving other queues holds a live lease, a poller run's has expired:
    a submit still wakes the poller. A live poller lease (an on-demand run's id, or an
    always-on run's suffixed one) suppresses the wake-up."""
    from rhailambda.client import Client

    def submit(function: str) -> bool:
        with Client(redis_url, wake_function=function) as c:
            c.submit("1", worker_id="w1", context_id="c", caller_id="c")
            assert c.waker is not None
            c.waker.flush()
            return c.waker.sent == 1

    redis_client.zadd(L.shims(), {"laptop-4242-a1b2c3": now_ms() + 60_000})  # self-run, live
    redis_client.zadd(L.shims(), {"stack-poller": now_ms() - 1000})  # a dead poller run
    assert submit("stack-poller-fn-1")
    assert lambda_endpoint.invoked == ["/2015-03-31/functions/stack-poller-fn-1/invocations"]
    redis_client.zadd(L.shims(), {"stack-poller": now_ms() + 60_000})  # on demand, live
    assert not submit("stack-poller-fn-2")
    redis_client.zrem(L.shims(), "stack-poller")
    redis_client.zadd(L.shims(), {"stack-poller-5f3a9c1e": now_ms() + 60_000})  # always on
    assert not submit("stack-poller-fn-3")
    assert len(lambda_endpoint.invoked) == 1


def test_what_counts_as_a_poller_lease() -> None:
    from rhailambda.wake import is_poller_lease

    assert is_poller_lease("stack-poller") and is_poller_lease(b"stack-poller-5f3a9c1e")
    for other in ("laptop-4242-a1b2c3", "poller", "stack-poller-a-b", "stack-pollers", ""):
        assert not is_poller_lease(other), other


class _Context:
    """The parts of Lambda's context the poller's handler reads."""

    def __init__(self, request_id: str, remaining_s: float) -> None:
        import time

        self.aws_request_id = request_id
        self.function_name = "poller"
        self.memory_limit_in_mb = 128
        self.invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:poller"
        self._deadline = time.monotonic() + remaining_s

    def get_remaining_time_in_millis(self) -> int:
        import time

        return int((self._deadline - time.monotonic()) * 1000)


def test_a_busy_on_demand_run_hands_over_without_a_gap(
    redis_url: str,
    redis_client: Any,
    monkeypatch: pytest.MonkeyPatch,
    lambda_endpoint: InvokeEndpoint,
) -> None:
    """On demand, a run whose budget ends before its idle exit (a steady stream of
    submits) invokes its successor (a second handler run, started by a local Invoke
    endpoint, as ``<id>-<request id>``: the fixed id is still live) and stops taking only
    once that run's lease is live: no submit waits 2 s for a drainer. The successor
    exits once idle. (The old handler gave an on-demand run no successor: the queue
    waited for the next minute's trigger.) The ending run releases the fixed id's claim."""
    import json
    import threading

    taken = FirstTaken()

    monkeypatch.setattr(poller, "build_invoker", lambda settings: FakeInvoker(taken))
    for name, value in {
        "REDIS_URL": redis_url,
        "RHAILAMBDA_WORKERS": ",".join(WORKERS),
        "RHAILAMBDA_FUNCTION_NAME": "script",
        "RHAILAMBDA_SHIM_ID": "stack-poller",
        "RHAILAMBDA_POLLER_MODE": "on-demand",
        "RHAILAMBDA_POLLER_IDLE_EXIT_S": "2",  # less than a budget: the successor idles out
        "RHAILAMBDA_SHUTDOWN_TIMEOUT_S": "1",
        "RHAILAMBDA_LEASE_S": "3",
        "RHAILAMBDA_BLOCK_S": "0.5",
        "AWS_LAMBDA_FUNCTION_NAME": "poller",
    }.items():
        monkeypatch.setenv(name, value)
    # Left in each run: the hand-back reserve, the shutdown timeout, the shortest budget.
    remaining_s = poller.HAND_BACK_RESERVE_S + 1 + poller.MIN_DRAIN_S + 0.5
    outcomes: list[dict[str, Any]] = []
    successors: list[threading.Thread] = []

    def run(event: dict[str, Any], request_id: str) -> None:
        outcomes.append(poller.handler(event, _Context(request_id, remaining_s)))

    def start_successor(payload: bytes) -> None:
        n = len(successors) + 2
        thread = threading.Thread(
            target=run, args=(json.loads(payload), f"{n:08x}-0000"), daemon=True
        )
        successors.append(thread)
        thread.start()

    lambda_endpoint.on_invoke = start_successor
    submitted: dict[str, float] = {"h0": time.monotonic()}
    seed_tasks(redis_client, L, "w1", ["h0"])  # the first trigger finds work
    first = threading.Thread(target=run, args=({"source": "aws.events"}, "00000001-0"))
    first.start()
    i, ended_at = 1, None
    while ended_at is None or time.monotonic() - ended_at < 1.0:  # 1 s past its end
        if ended_at is None and not first.is_alive():
            ended_at = time.monotonic()
        submitted[f"h{i}"] = time.monotonic()
        seed_tasks(redis_client, L, "w1", [f"h{i}"])
        i += 1
        time.sleep(0.05)  # a steady stream of submits
        assert i < 1000, "the first run never ended"
    deadline = time.monotonic() + 10
    while set(taken.at) != set(submitted) and time.monotonic() < deadline:
        time.sleep(0.05)
    for thread in successors:
        thread.join(30)
    assert set(taken.at) == set(submitted), "tasks left waiting after the first run ended"
    assert (outcomes[0]["shimId"], outcomes[0]["outcome"]) == ("stack-poller", "drained")
    assert outcomes[1]["shimId"] == "stack-poller-00000002"  # not the fixed id: it is live
    assert len(outcomes) == 1 + len(successors) and {o["outcome"] for o in outcomes} == {
        "drained"
    }  # the last successor idled out
    assert taken.longest_wait_s(submitted) < 2.0
    assert redis_client.exists(f"{L.shims()}:claim:stack-poller") == 0  # released


def test_the_fixed_id_is_claimed_once(redis_url: str, redis_client: Any) -> None:
    """Two on-demand triggers that both saw work (the schedule and a wake-up, or wake-ups
    from many clients) must not both drain as the fixed id; a live run blocks a claim."""
    from rhailambda.shim.poller_modes import claim, release_claim

    async def go() -> list[bool]:
        client = AsyncRespClient(RedisSettings(redis_url).address())
        try:
            got = [await claim(client, L, "stack-poller"), await claim(client, L, "stack-poller")]
            await release_claim(client, L, "stack-poller")
            redis_client.zadd(L.shims(), {"stack-poller-00000002": now_ms() + 60_000})
            got.append(await claim(client, L, "stack-poller"))  # a successor drains
            redis_client.zadd(L.shims(), {"stack-poller-00000002": now_ms() - 1})  # it died
            got.append(await claim(client, L, "stack-poller"))
            return got
        finally:
            client.close()

    assert asyncio.run(go()) == [True, False, False, True]
