"""A lone task's wake-up in one round trip, on a standalone server.

On a cluster a read takes two round trips: the *move* (queue slot) brings the ids
into the in-flight list, and the *deliver* (each task's slot) counts their attempts.
A standalone server lets one script do both (:data:`~rhailambda.shim.taskslot.
MOVE_DELIVER_LUA`), but the script cannot see what the BLMOVE it rides behind took.
So that BLMOVE moves into a *stage* list of this shim and queue (``KeyLayout.stage``),
and the script, right behind it on the same connection, moves the staged id on into
the in-flight list and delivers it with whatever else it moves. The stage list holds
an id only between those two commands, which Redis runs back to back; should a shim
die in between anyway, the reaper hands the stage list back like the in-flight list.

Only a read into an empty window goes this way (``unread_up_to``, as for the reads
whose circles the delivery reads), and only when the queue holds no more than a batch:
its ids are the next batch, so counting their attempts at once costs nothing. A
backlog comes back with its circles read and nothing delivered, for fair share to pick.
A pause or shutdown before the ids are sent hands them back with that attempt counted
(one attempt of the task's budget, never a lost id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from rhailambda.errors import RedisResponseError
from rhailambda.protocol import KeyLayout
from rhailambda.resp_async import AsyncChannel, AsyncScript
from rhailambda.resp_wire import raise_error
from rhailambda.shim.source import UNREAD

__all__ = ["args", "blmove_deliver", "blmove_move", "circle_of", "keys", "pop_answers"]

_BLOCK_MARGIN_S = 5.0  # a BLMOVE's reply may take this much longer than its block
_LATER = "later"


def keys(layout: KeyLayout, worker_id: str, shim_id: str) -> list[str]:
    """MOVE_DELIVER_LUA's keys: queue, in-flight list, pause switch, stage list."""
    return [layout.queue(worker_id), layout.inflight(worker_id, shim_id),
            layout.paused(worker_id), layout.stage(worker_id, shim_id)]  # fmt: skip


def args(layout: KeyLayout, n: int, queue_keys: Iterable[str], room: int) -> list[str | int]:
    """MOVE_DELIVER_LUA's arguments: how many to deliver, what a task key of its own
    looks like, and how many a backlog may bring into the window."""
    head, tail = layout.reply("\x00").split("\x00")
    return [n, layout.task(""), head, tail, "\n".join(sorted(queue_keys)), max(room, n)]


async def blmove_move(
    channel: AsyncChannel, move: AsyncScript, block_s: float, keys: list[str], args: list[str | int]
) -> tuple[str | None, list[Any]]:
    """BLMOVE, then MOVE_LUA (``keys``: queue, inflight, paused) pipelined behind it on
    the taker's own connection (a cluster's wake-up, or a read into a busy window)."""
    commands: list[list[str | int | float]] = [
        ["BLMOVE", keys[0], keys[1], "RIGHT", "LEFT", block_s],
        ["EVALSHA", str(move.sha), len(keys), *keys, *args],
    ]
    first, moved = await channel.round_trip(commands, timeout_s=block_s + _BLOCK_MARGIN_S)
    first = raise_error(first)
    if isinstance(moved, RedisResponseError) and moved.code == "NOSCRIPT":
        moved = await move(channel, keys, args)  # flushed scripts: load it again
    return (None if first is None else str(first)), list(raise_error(moved))


async def blmove_deliver(
    channel: AsyncChannel,
    script: AsyncScript,
    keys: list[str],
    args: list[str | int],
    block_s: float,
) -> tuple[list[str], list[str], list[list[Any]]] | None:
    """``BLMOVE queue stage`` and the script behind it (``keys``: queue, inflight, paused,
    stage): (ids, their circles, their delivery answers), or None when the queue is
    paused. A backlog comes back undelivered: no answers, the circles read."""
    sha = script.sha or script_sha(script)
    commands: list[list[str | int | float]] = [
        ["BLMOVE", keys[0], keys[3], "RIGHT", "LEFT", block_s],
        ["EVALSHA", sha, len(keys), *keys, *args],
    ]
    first, got = await channel.round_trip(commands, timeout_s=block_s + _BLOCK_MARGIN_S)
    raise_error(first)
    if isinstance(got, RedisResponseError) and got.code == "NOSCRIPT":
        got = await script(channel, keys, args)  # loads it; the staged id waits for it
    else:
        script.sha = sha
    got = raise_error(got)
    if got and got[0] == -1:
        return None
    ids = [str(i) for i in got[0]]
    if len(got) > 2:  # a backlog: fair share picks among them
        return ids, [str(c) for c in got[2]], []
    answers = list(got[1])
    return ids, [circle_of(a) for a in answers], answers


def script_sha(script: AsyncScript) -> str:
    """The SHA1 Redis knows ``script`` by (EVALSHA before the first load)."""
    return hashlib.sha1(script.text.encode()).hexdigest()


def circle_of(answer: list[Any]) -> str:
    """The circle a delivery read, or UNREAD (the long way reads it)."""
    return str(answer[3]) if answer and answer[0] == "go" else UNREAD


def pop_answers(answered: dict[str, list[Any]], task_ids: list[str]) -> dict[int, list[Any]]:
    """Per index of ``task_ids``: the answer its read gave (taken out of ``answered``);
    ids answered "later" (and ids the read did not deliver) are left to the long way."""
    known: dict[int, list[Any]] = {}
    for i, task_id in enumerate(task_ids):
        answer = answered.pop(task_id, None)
        if answer is not None and answer[0] != _LATER:
            known[i] = answer
    return known
