"""The shim's side of finishing tasks: dead-lettering with an error reply (asyncio).

The same steps and scripts as :mod:`rhailambda.taskstore` (whose docstring argues
why every task gets exactly one reply), on the shim's asyncio client. Kept apart so
the function, which never imports asyncio, does not load this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rhailambda import protocol as p
from rhailambda.event import TaskRef
from rhailambda.resp_async import AsyncRespClient, AsyncScript
from rhailambda.settings import ProtocolSettings
from rhailambda.taskstore import (
    CLEAN_LUA,
    FINISH_LUA,
    PUSH_LUA,
    REPLIED,
    REPLY_KEY_UNUSABLE,
    STAGE_LUA,
    Finish,
    FinishPlan,
    Mode,
    results,
    scatter,
)

__all__ = ["fail_tasks_async", "finish_async"]

_ASYNC_SCRIPTS: dict[str, AsyncScript] = {}


def _async_script(text: str) -> AsyncScript:
    script = _ASYNC_SCRIPTS.get(text)
    if script is None:
        script = _ASYNC_SCRIPTS[text] = AsyncScript(text)
    return script


async def finish_async(
    client: AsyncRespClient, protocol: ProtocolSettings, finishes: Sequence[Finish]
) -> list[int]:
    """:meth:`TaskStore.finish` on the shim's asyncio client (the dead-letter path)."""
    if not finishes:
        return []
    n = len(finishes)
    await client.refresh()
    plan = FinishPlan(protocol, finishes, client.slot_group)

    async def run(
        text: str, calls: list[tuple[list[int], list[str], list[str | int]]]
    ) -> list[Any]:
        replies = await _async_script(text).many(client, [(k, a) for _, k, a in calls])
        return scatter(n, calls, replies)

    if not client.cluster:
        return [int(x) for x in await run(FINISH_LUA, plan.whole())]
    staged = plan.staged(await run(STAGE_LUA, plan.stage()))
    pushed = await run(PUSH_LUA, plan.push(staged))
    await run(CLEAN_LUA, plan.clean([i for i in staged if pushed[i] != REPLY_KEY_UNUSABLE]))
    return results(n, staged, pushed)


def _failures(task_ids: Sequence[str], hashes: Sequence[Any], error: str) -> list[Finish]:
    out: list[Finish] = []
    for task_id, found in zip(task_ids, hashes, strict=True):
        mode: Mode
        if isinstance(found, Exception):
            raw: dict[str, str] = {}
            mode = "poison"  # the task key is not a hash
        else:
            raw = dict(zip(found[::2], found[1::2], strict=True)) if found else {}
            mode = "force" if raw else "missing"
        fields = p.TaskFields.from_hash(task_id, raw)
        out.append(Finish(TaskRef(task_id), fields, p.STATUS_ERROR, error=error, mode=mode))
    return out


async def fail_tasks_async(
    client: AsyncRespClient, protocol: ProtocolSettings, task_ids: Sequence[str], error: str
) -> list[str]:
    """Give each task that is not final yet an ``error`` status and reply; return those ids.

    The shim's dead-letter path (one round of HGETALLs, then the finish steps). A
    task already staged by a finish that died gets ITS reply pushed, not this one.
    """
    if not task_ids:
        return []
    layout = protocol.layout
    hashes = await client.round_trip([["HGETALL", layout.task(t)] for t in task_ids])
    done = await finish_async(client, protocol, _failures(task_ids, hashes, error))
    return [t for t, ok in zip(task_ids, done, strict=True) if ok == REPLIED]
