"""Pure parts of the shim: backoff, batching window, the fair limiter, settings parsing."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.unit_rig import parse

from rhailambda.errors import SettingError
from rhailambda.shim.limiter import FairLimiter
from rhailambda.shim.policy import backoff_s, window_wait_s


@given(st.integers(1, 200), st.floats(0.001, 5), st.floats(5, 100))
def test_backoff_is_jittered_below_the_capped_exponential(
    attempt: int, base: float, cap: float
) -> None:
    delay = backoff_s(attempt, base, cap, random.Random(attempt))
    assert 0 <= delay <= min(cap, base * 2 ** (attempt - 1))


def test_backoff_grows_then_caps() -> None:
    rng = random.Random(1)
    means = [sum(backoff_s(a, 0.1, 2.0, rng) for _ in range(2000)) / 2000 for a in (1, 3, 10)]
    assert means[0] == pytest.approx(0.05, rel=0.1)
    assert means[1] == pytest.approx(0.2, rel=0.1)
    assert means[2] == pytest.approx(1.0, rel=0.1)


def test_window_only_on_a_busy_queue() -> None:
    kw: dict[str, Any] = {"batch_size": 10, "window_s": 1.0}
    assert window_wait_s(taken=1, since_last_dispatch_s=None, **kw) == 0  # idle: go at once
    assert window_wait_s(taken=1, since_last_dispatch_s=5.0, **kw) == 0  # idle for a while
    assert window_wait_s(taken=1, since_last_dispatch_s=0.2, **kw) == 1.0  # busy: fill
    assert window_wait_s(taken=10, since_last_dispatch_s=0.2, **kw) == 0  # full batch
    assert window_wait_s(taken=1, batch_size=10, window_s=0, since_last_dispatch_s=0.1) == 0


def test_limiter_is_fifo_fair_and_backs_off() -> None:
    async def scenario() -> None:
        limiter = FairLimiter(2)
        order: list[str] = []
        await limiter.acquire()
        await limiter.acquire()

        async def waiter(name: str) -> None:
            await limiter.acquire()
            order.append(name)

        tasks = [asyncio.create_task(waiter(n)) for n in ("a", "b", "a2")]
        await asyncio.sleep(0)  # let them queue up, in order
        for _ in range(3):
            limiter.release()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert order == ["a", "b", "a2"]

        limiter.on_throttle()
        assert limiter.limit == 1
        limiter.on_throttle()
        assert limiter.limit == 1  # never below one
        for _ in range(10):
            limiter.on_success()
        assert limiter.limit == 2  # recovered additively, capped at the maximum

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_cancelled_waiter_gives_its_slot_back() -> None:
    async def scenario() -> None:
        limiter = FairLimiter(1)
        await limiter.acquire()
        waiting = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        waiting.cancel()
        limiter.release()
        await asyncio.gather(waiting, return_exceptions=True)
        assert limiter.in_use == 0
        await asyncio.wait_for(limiter.acquire(), 1)

    asyncio.run(scenario())


def test_settings_from_env_and_flags_win() -> None:
    env = {
        "RHAILAMBDA_WORKERS": "Worker One, w2,w2",
        "RHAILAMBDA_BATCH_SIZE": "25",
        "RHAILAMBDA_LOCAL_WORKERS": "3",
        "REDIS_URL": "redis://:pw@localhost:6380/1",
        "RHAILAMBDA_PRESERVE_TASKS": "true",
    }
    s = parse(["--batch-size", "7", "--shim-id", "me"], env)
    assert s.queues.worker_ids == ("worker_one", "w2")
    assert s.batch.batch_size == 7
    assert s.queues.shim_id == "me"
    assert s.flow.max_concurrency == 3 == s.flow.per_queue_concurrency == s.local.max_workers
    assert s.retry.max_attempts == 3 and s.retry.max_task_age_s is None
    assert s.protocol.preserve_tasks
    assert s.function_env["REDIS_URL"] == "redis://:pw@localhost:6380/1"
    assert s.function_env["RHAILAMBDA_PRESERVE_TASKS"] == "true"
    assert "pw" not in repr(s.redis)


def test_worker_flag_repeats_and_takes_comma_lists() -> None:
    s = parse(["--worker", "a", "--worker", "B c,d", "--workers", "e"], {"RHAILAMBDA_WORKERS": "z"})
    assert s.queues.worker_ids == ("a", "b_c", "d", "e")


@pytest.mark.parametrize(
    ("argv", "env", "name"),
    [
        (["--batch-size", "0"], {}, "--batch-size"),
        ([], {"RHAILAMBDA_BATCH_SIZE": "ten"}, "RHAILAMBDA_BATCH_SIZE"),
        ([], {"RHAILAMBDA_MAX_CONCURRENCY": "0"}, "RHAILAMBDA_MAX_CONCURRENCY"),
        (["--lease-s", "-3"], {}, "--lease-s"),
        ([], {"RHAILAMBDA_BACKEND": "k8s"}, "RHAILAMBDA_BACKEND"),
        ([], {"REDIS_URL": "http://x"}, "REDIS_URL"),
        (["--backoff-cap-s", "0.1", "--backoff-base-s", "1"], {}, "--backoff-cap-s"),
        ([], {"RHAILAMBDA_WORKERS": ""}, "RHAILAMBDA_WORKERS"),
    ],
)
def test_bad_settings_name_the_setting(argv: list[str], env: dict[str, str], name: str) -> None:
    environ = {"RHAILAMBDA_WORKERS": "w1", **env}
    with pytest.raises(SettingError) as err:
        parse(argv, environ)
    assert err.value.name == name
    assert name in str(err.value)
