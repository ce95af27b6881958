"""The read-ahead window on an in-memory source: no attempt spent while an id waits in
it, hand-back oldest first on shutdown and on a pause, caps counted until settled."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from memory_source import MemoryQueueSource
from support.shim_doubles import FakeInvoker
from support.unit_rig import SETTINGS, W, parse, until

from rhailambda.errors import SettingError
from rhailambda.event import BatchResponse, InvocationEvent
from rhailambda.shim.drain import Drainer
from rhailambda.shim.settings import BatchSettings, FairSettings, ShimSettings


def with_fair(**fair: Any) -> ShimSettings:
    batch = BatchSettings(batch_size=2)
    settings: ShimSettings = dataclasses.replace(SETTINGS, fair=FairSettings(**fair), batch=batch)
    return settings


def test_read_ahead_spends_no_attempt_and_shutdown_hands_back_oldest_first() -> None:
    source = MemoryQueueSource()
    source.push(W, [f"t{i}" for i in range(10)], circle="a")
    release = asyncio.Event()

    async def hang(event: InvocationEvent) -> BatchResponse:
        await release.wait()
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    async def go() -> None:
        drainer = Drainer(with_fair(per_circle_concurrency=2), source, FakeInvoker(hang))
        drainer.start()
        await until(lambda: len(drainer.intakes[W]) == 8)  # 2 running, 8 read ahead
        assert not source.queues[W]  # all moved into in-flight: none can be lost
        assert [source.tasks[f"t{i}"].attempt for i in range(10)] == [1, 1] + [0] * 8
        await drainer.stop_taking()
        # the window is back at the queue's taking end, oldest next
        assert list(source.queues[W])[::-1] == [f"t{i}" for i in range(2, 10)]
        release.set()
        await drainer.finish_invocations(1.0)

    asyncio.run(go())
    assert [t.task_id for t in source.acked] == ["t0", "t1"]


def test_a_pause_hands_the_window_back() -> None:
    source = MemoryQueueSource()
    source.push(W, [f"t{i}" for i in range(6)], circle="a")
    release = asyncio.Event()

    async def hang(event: InvocationEvent) -> BatchResponse:
        await release.wait()
        return BatchResponse({t.task_id: "completed" for t in event.tasks})

    async def go() -> None:
        settings = dataclasses.replace(with_fair(per_circle_concurrency=2), fair=FairSettings(
            per_circle_concurrency=2, window=4))  # fmt: skip
        drainer = Drainer(settings, source, FakeInvoker(hang))
        drainer.start()
        await until(lambda: len(drainer.intakes[W]) == 4)
        source.paused.add(W)
        await until(lambda: drainer.intakes[W].paused)
        assert len(drainer.intakes[W]) == 0
        assert sorted(source.queues[W]) == [f"t{i}" for i in range(2, 6)]
        source.paused.discard(W)
        release.set()
        await until(lambda: len(source.acked) == 6)
        await drainer.stop_taking()
        await drainer.finish_invocations(1.0)

    asyncio.run(go())


def test_a_circle_counts_against_its_cap_through_a_retry() -> None:
    source = MemoryQueueSource()
    source.push(W, ["a0", "a1", "a2"], circle="a")
    running = {"now": 0, "most": 0}
    failed_once: set[str] = set()

    async def behave(event: InvocationEvent) -> BatchResponse:
        running["now"] += len(event.tasks)
        running["most"] = max(running["most"], running["now"])
        await asyncio.sleep(0.01)
        running["now"] -= len(event.tasks)
        out: dict[str, str] = {}
        for t in event.tasks:
            out[t.task_id] = "completed" if t.task_id in failed_once else "failed"
            failed_once.add(t.task_id)
        return BatchResponse(out)  # type: ignore[arg-type]

    async def go() -> None:
        settings = dataclasses.replace(
            with_fair(per_circle_concurrency=1), batch=BatchSettings(batch_size=1)
        )
        drainer = Drainer(settings, source, FakeInvoker(behave))
        drainer.start()
        await until(lambda: len(source.acked) == 3)
        await drainer.stop_taking()
        await drainer.finish_invocations(1.0)

    asyncio.run(go())
    assert running["most"] == 1
    assert [t.attempt for t in source.acked] == [2, 2, 2]


def test_fair_settings_from_flags_and_env() -> None:
    s = parse(
        ["--per-circle-rate", "2.5", "--tenant-isolation", "true"],
        {"RHAILAMBDA_WORKERS": "w1", "RHAILAMBDA_PER_CIRCLE_CONCURRENCY": "4"},
    )
    assert s.fair == FairSettings(
        fair_share=True, window=50_000, per_circle_concurrency=4, per_circle_rate=2.5,
        tenant_isolation=True,
    )  # fmt: skip
    assert parse([], {"RHAILAMBDA_WORKERS": "w1", "RHAILAMBDA_FAIR_SHARE": "no"}).fair == (
        FairSettings(fair_share=False)
    )


@pytest.mark.parametrize(
    ("argv", "env", "name"),
    [
        ([], {"RHAILAMBDA_PER_CIRCLE_CONCURRENCY": "0"}, "RHAILAMBDA_PER_CIRCLE_CONCURRENCY"),
        (["--per-circle-rate", "0"], {}, "--per-circle-rate"),
        (["--fair-window", "5", "--batch-size", "10"], {}, "--fair-window"),
        ([], {"RHAILAMBDA_FAIR_SHARE": "maybe"}, "RHAILAMBDA_FAIR_SHARE"),
        ([], {"RHAILAMBDA_TENANT_ISOLATION": "2"}, "RHAILAMBDA_TENANT_ISOLATION"),
    ],
)
def test_bad_fair_settings_name_the_setting(
    argv: list[str], env: dict[str, str], name: str
) -> None:
    with pytest.raises(SettingError) as err:
        parse(argv, {"RHAILAMBDA_WORKERS": "w1", **env})
    assert err.value.name == name
