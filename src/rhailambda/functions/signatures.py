"""The signature policy applied to a claimed batch: one verdict per task, replays refused.

:func:`rhailambda.signing.check_task` judges each task alone. A signed task that
passes must also not be a finished task id coming back: its hash re-written under
the same id, which the signature (over taskId and createdAt) cannot tell from the
original. The finish step leaves a done marker for every finished task, kept for
at least the signature's validity (:attr:`~rhailambda.settings.ProtocolSettings.done_ttl_s`),
and the claim reports it (:attr:`~rhailambda.taskstore.Claim.finished_before`):
no look-up of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from rhailambda.settings import SignatureSettings
from rhailambda.signing import Verdict, check_task, replay_error
from rhailambda.taskstore import Claim

__all__ = ["batch_verdicts"]


def batch_verdicts(
    settings: SignatureSettings, claims: Sequence[Claim], worker_id: str, now_s: float
) -> dict[str, Verdict]:
    """The verdict of each of ``claims`` (claimed tasks fit to run otherwise), by task id."""
    out: dict[str, Verdict] = {}
    for claim in claims:
        if claim.fields is None:
            continue
        task_id = claim.ref.task_id
        verdict = check_task(settings, worker_id, task_id, claim.fields, now_s)
        if verdict.verified and claim.finished_before:
            verdict = Verdict(verified=False, error=replay_error(task_id))
        out[task_id] = verdict
    return out
