"""ElastiCache Serverless refuses a command of more than 3,999 arguments: every command
we send stays under it, however large the batch (big groups are split into calls)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
from support.shim_doubles import queue_source

from rhailambda import resp_async, resp_wire
from rhailambda.client import Client, Submission
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.functions.runner import BatchRunner
from rhailambda.functions.settings import FunctionSettings
from rhailambda.protocol import KeyLayout
from rhailambda.resp import from_url
from rhailambda.shim.health import Health
from rhailambda.slots import MAX_ARGS
from rhailambda.taskstore import TaskStore

pytest.importorskip("rhai_py")
L = KeyLayout()
N = 2500  # one standalone group of 2,500 tasks: 10,000 keys in a single finish call


@pytest.fixture
def widest(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The most arguments any command sent so far had (both clients)."""
    most = [0]
    real = resp_wire.encode

    def spy(commands: Sequence[Sequence[Any]]) -> bytes:
        most[0] = max([most[0], *(len(c) for c in commands)])
        return real(commands)

    monkeypatch.setattr(resp_wire, "encode", spy)
    monkeypatch.setattr(resp_async, "encode", spy)
    yield most


def test_a_huge_batch_never_sends_a_command_over_3999_arguments(
    redis_url: str, redis_client: redis.Redis, widest: list[int]
) -> None:
    with Client(redis_url) as client:
        ids = client.submit_many([Submission("let x = 1; x + 1", "w1", "c", "c")] * N)
    assert widest[0] <= MAX_ARGS, "submit"

    async def take() -> list[TaskRef]:
        with queue_source(None, redis_url, health=Health(redis_url=redis_url)) as source:
            taken = (await source.take("w1", N, block_s=0)).items
            return [TaskRef(t.task_id, t.attempt) for t in taken]

    refs = asyncio.run(take())
    assert len(refs) == N and widest[0] <= MAX_ARGS, "take and deliver"

    settings = FunctionSettings(circle_enabled=False)
    with from_url(redis_url) as sync:
        outcomes = BatchRunner(settings, TaskStore(sync, settings.protocol)).run(
            InvocationEvent("w1", tuple(refs)), 120
        )
    assert set(outcomes.outcomes.values()) == {"completed"}
    assert widest[0] <= MAX_ARGS, "claim and finish"
    replies = [redis_client.lindex(L.reply(t), 0) for t in ids[:: N // 25]]
    assert all(r is not None and '"2"' in r for r in replies), replies
