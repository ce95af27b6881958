"""The signature policy applied to a claimed batch: one verdict per task, replays refused.

:func:`rhailambda.signing.check_task` judges each task alone. A signed task that
passes must also not be a finished task id coming back: its hash re-written under
the same id, which the signature (over taskId and createdAt) cannot tell from the
original. The finish step leaves a done marker for every finished task, kept for
at least the signature's validity (:func:`rhailambda.signing.done_marker_ttl_s`),
so one look-up of the markers of the batch's verified tasks settles it: one more
round trip, only in batches that hold signed tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from rhailambda.protocol import KeyLayout
from rhailambda.resp import RespClient
from rhailambda.settings import SignatureSettings
from rhailambda.signing import Verdict, check_task, replay_error
from rhailambda.taskstore import Claim

__all__ = ["DoneMarkers", "RespDoneMarkers", "batch_verdicts"]


class DoneMarkers(Protocol):
    """Which task ids were finished (their done marker lives)."""

    def finished(self, task_ids: Sequence[str]) -> list[bool]: ...


class RespDoneMarkers:
    """Done markers read with the function's Redis client: one pipeline of ``EXISTS``."""

    def __init__(self, client: RespClient, layout: KeyLayout) -> None:
        self._client = client
        self._layout = layout

    def finished(self, task_ids: Sequence[str]) -> list[bool]:
        commands = [["EXISTS", self._layout.done(t)] for t in task_ids]
        replies = self._client.pipeline(commands, idempotent=True)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [bool(x) for x in replies]


def batch_verdicts(
    settings: SignatureSettings,
    done: DoneMarkers | None,
    claims: Sequence[Claim],
    worker_id: str,
    now_s: float,
) -> dict[str, Verdict | str]:
    """The verdict of each of ``claims`` (claimed tasks fit to run otherwise), by task id.

    A string instead of a verdict: the done markers could not be read, the task goes
    back to the shim (a later delivery decides). Without ``done`` (tests) no task is
    taken for a replay.
    """
    out: dict[str, Verdict | str] = {}
    verified: list[str] = []
    for claim in claims:
        if claim.fields is None:
            continue
        task_id = claim.ref.task_id
        verdict = check_task(settings, worker_id, task_id, claim.fields, now_s)
        out[task_id] = verdict
        if verdict.verified:
            verified.append(task_id)
    if done is None or not verified:
        return out
    try:
        seen = done.finished(verified)
    except Exception as exc:  # infrastructure: hand the tasks back rather than guess
        reason = f"done marker look-up failed: {type(exc).__name__}: {exc}"
        return out | dict.fromkeys(verified, reason)
    for task_id, finished in zip(verified, seen, strict=True):
        if finished:
            out[task_id] = Verdict(verified=False, error=replay_error(task_id))
    return out
