"""Claiming and finishing tasks in Redis: exactly one reply per task, on any deployment.

Both the function (claim a batch, then finish it) and the shim (dead-letter) go
through here, so "exactly one reply per task" is enforced in one place.

Keys of one task ``T`` (see :class:`~rhailambda.protocol.KeyLayout`): the hash
``rhailib:T`` and its done marker share the hash's slot; the reply list
``rhailib:reply:T`` and its sent marker share the reply's slot. On a Redis Cluster
the two slots differ, so no single script may write both the hash and the reply.

**Claim** (:data:`CLAIM_LUA`, the hash's slot): a task is claimed when its status
is ``pending`` (or missing or unknown: a malformed hash still deserves an error
reply), or ``processing`` under an OLDER delivery (``rhailambdaClaim`` holds the
attempt that claimed it). A task that is final and still holds its staged reply
is handed back as ``finishing``: an earlier finish died half-way, and this
delivery completes it without running the script.

**Finish**, three steps, each idempotent:

1. *stage* (hash slot): only while the caller holds the claim (mode ``claim``),
   or the task is not final yet (``force``: dead-lettering), write the final
   status, output or error, and the reply itself (field ``rhailambdaReply``).
   From here on the task is final: no delivery runs it again.
2. *push* (reply slot): unless the sent marker already names this run of the task
   (the token its claim wrote in ``rhailambdaRun``), ``LPUSH`` the staged reply and
   set the marker to the token (both with the reply TTL). A task id reused after its
   task finished is a new run with a new token: it is answered again.
3. *clean* (hash slot): delete the hash (or, preserving tasks, drop the staged
   reply) and leave the done marker. A dead letter (``force``) keeps its hash, minus
   the staged reply, with an expiry of ``RHAILAMBDA_DLQ_RETENTION_S``, so that
   ``rhailambda dlq show`` and ``redrive`` find it (:mod:`rhailambda.ops.dlq`); not a
   malformed one (its key may be another task's reply list or a queue).

Why a function dying between any two steps still gives exactly one reply:

* before *stage*: the task is ``processing`` under an attempt the shim will
  outbid; the next delivery claims and runs it (circle writes are applied once:
  receipts). No reply was pushed.
* after *stage*, before *push*: the hash is final and holds the reply; the next
  delivery's claim answers ``finishing`` with that reply, and steps 2-3 run.
* after *push*, before *clean*: the same, and step 2 finds the sent marker set:
  nothing is pushed twice. Step 3 then cleans up.
* after *clean*: the hash is gone and the done marker says so; a late delivery is
  dropped at claim.
* a dead-letter (``force``) meeting a staged task pushes that task's own staged
  reply, never a second one: the marker decides.

Every step may be re-sent after a broken connection: *stage* recognises its own
earlier write (final, same claim, reply staged), *push* is guarded by the marker,
*clean* only deletes a final hash holding a staged reply (a re-submitted task of
the same id, ``pending`` again, is never deleted).

On a standalone server (one node, no slots) the three steps run as one script
(:data:`FINISH_LUA`, the same Lua functions): atomic, one round trip. So do they on
a cluster for a task whose id carries a hash tag (``{worker1}6f1c...``, what
:class:`rhailambda.client.Client` makes up there): its hash, reply list and markers
share one slot, and the tasks of one slot finish in one call. There the usual
finish (this attempt holds the claim, nothing staged) pushes the reply and cleans up
directly: no state between the steps can be seen, so it stages nothing and writes no
sent marker; its done marker stops any later delivery at claim.

Keys with a TTL (replies, sent and done markers) are what ``volatile-lru`` may
evict under memory pressure (ElastiCache Serverless's policy). What each loss
means is in the README ("Guarantees"): an evicted sent marker can let a crash
window between *push* and *clean* end in a second reply; an evicted done marker
lets a late duplicate of a finished task get a "not found" error reply (never a
second run: its hash is gone). Nothing is lost by an eviction but the reply
itself, whose TTL the protocol requires.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rhailambda import protocol as p
from rhailambda.event import TaskRef
from rhailambda.resp import RespClient
from rhailambda.settings import ProtocolSettings
from rhailambda.slots import by_group
from rhailambda.taskstore_lua import CLAIM_LUA, CLEAN_LUA, FINISH_LUA, PUSH_LUA, STAGE_LUA

__all__ = [
    "CLEAN_LUA",
    "FINISH_LUA",
    "FINISH_STEPS",
    "NOT_OURS",
    "PUSH_LUA",
    "REPLIED",
    "REPLY_KEY_UNUSABLE",
    "STAGE_LUA",
    "Claim",
    "Finish",
    "FinishPlan",
    "TaskStore",
    "scatter",
]

#: crash points of a finish, in order (tests stop the function at each)
FINISH_STEPS = ("claimed", "staged", "pushed")
FaultHook = Callable[[str], None]

Mode = Literal["claim", "force", "missing", "poison", "finishing"]


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of claiming one task."""

    ref: TaskRef
    state: Literal["claimed", "missing", "skip", "poison", "finishing"]
    fields: p.TaskFields | None = None
    current_status: str = ""  # skip: the status; poison: the key's type
    staged_reply: str = ""  # finishing: the reply an earlier finish staged
    #: claimed: the id's done marker lives (this id finished before: a reuse, or a replay)
    finished_before: bool = False


@dataclass(frozen=True, slots=True)
class Finish:
    """How one task ends: ``status`` is completed or error."""

    ref: TaskRef
    fields: p.TaskFields
    status: str
    output: str | None = None
    error: str | None = None
    mode: Mode = "claim"


#: per finish: 1 the reply was pushed by this call, 0 not ours (or pushed before),
#: -1 the task's reply key holds something other than a list (no reply possible)
REPLIED, NOT_OURS, REPLY_KEY_UNUSABLE = 1, 0, -1


def _parse_claims(tasks: Sequence[TaskRef], raw: list[Any]) -> list[Claim]:
    claims: list[Claim] = []
    for ref, item in zip(tasks, raw, strict=True):
        state = item[0]
        if state == "claimed":
            flat = item[1]
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            fields_ = p.TaskFields.from_hash(ref.task_id, fields)
            claims.append(Claim(ref, "claimed", fields_, finished_before=item[2] == 1))
        elif state in ("missing", "finishing"):
            staged = str(item[1]) if state == "finishing" else ""
            claims.append(Claim(ref, state, staged_reply=staged))
        elif state == "poison":
            claims.append(Claim(ref, "poison", current_status=str(item[1])))
        else:
            claims.append(Claim(ref, "skip", current_status=str(item[1])))
    return claims


def _kept(f: Finish) -> bool:
    """A dead letter keeps its hash; not a malformed one (its key may be a reply or queue)."""
    return f.mode == "force" and not (f.error or "").startswith("malformed task:")


class FinishPlan:
    """The keys and arguments of one finish batch, per step, grouped by slot."""

    def __init__(
        self,
        protocol: ProtocolSettings,
        finishes: Sequence[Finish],
        group: Callable[[str], int],
    ) -> None:
        layout = protocol.layout
        self.protocol = protocol
        self.group = functools.cache(group)  # stage and clean group the same task keys
        self.task_keys = [layout.task(f.ref.task_id) for f in finishes]
        self.reply_keys = [layout.reply(f.ref.task_id) for f in finishes]
        self.done_keys = [layout.done(f.ref.task_id) for f in finishes]
        self.sent_keys = [layout.replied(f.ref.task_id) for f in finishes]
        self.args: list[list[str]] = []
        #: per finish, how long its hash is kept (0: deleted): a dead letter's for the retention
        self.keep_s = [protocol.dlq_retention_s if _kept(f) else 0 for f in finishes]
        now = p.now_rfc3339()  # one finish batch, one moment
        for f in finishes:
            reply = p.build_reply(
                f.fields, status=f.status, output=f.output, error=f.error, updated_at=now
            )
            field, value = (
                (p.OUTPUT, f.output or "")
                if f.status == p.STATUS_COMPLETED
                else (p.ERROR, f.error or "")
            )
            self.args.append([f.mode, str(f.ref.attempt), f.status, field, value, now, reply])

    @property
    def head(self) -> list[str | int]:
        preserve = "1" if self.protocol.preserve_tasks else "0"
        return [self.protocol.reply_ttl_s, preserve, self.protocol.done_ttl_s]

    def _groups(
        self, indexes: Iterable[int], keys: list[str], per_item: int, fixed: int = 0
    ) -> list[list[int]]:
        return by_group(indexes, keys, self.group, per_item=per_item, fixed=fixed)

    def whole(self) -> list[tuple[list[int], list[str], list[str | int]]]:
        """FINISH_LUA calls (standalone: one group)."""
        calls = []
        for idx in self._groups(range(len(self.args)), self.task_keys, 4 + 8, len(self.head)):
            keys = [k for i in idx for k in (self.task_keys[i], self.reply_keys[i],
                                             self.done_keys[i], self.sent_keys[i])]  # fmt: skip
            args: list[str | int] = []
            for i in idx:
                args += [*self.args[i], self.keep_s[i]]
            calls.append((idx, keys, [*self.head, *args]))
        return calls

    def stage(self) -> list[tuple[list[int], list[str], list[str | int]]]:
        calls = []
        for idx in self._groups(range(len(self.args)), self.task_keys, 1 + 7):
            args: list[str | int] = [a for i in idx for a in self.args[i]]
            calls.append((idx, [self.task_keys[i] for i in idx], args))
        return calls

    def staged(self, values: list[Any]) -> dict[int, tuple[str, str]]:
        """Per finish index: (reply, run token) staged by step 1 (STAGE_LUA's replies)."""
        return {
            i: (self.args[i][6] if v[0] == 0 else str(v[0]), str(v[1]))
            for i, v in enumerate(values)
            if isinstance(v, list)
        }

    def push(
        self, staged: dict[int, tuple[str, str]]
    ) -> list[tuple[list[int], list[str], list[str | int]]]:
        calls = []
        for idx in self._groups(sorted(staged), self.reply_keys, 2 + 2, 1):
            keys = [k for i in idx for k in (self.reply_keys[i], self.sent_keys[i])]
            args: list[str | int] = [self.protocol.reply_ttl_s]
            args += [part for i in idx for part in staged[i]]
            calls.append((idx, keys, args))
        return calls

    def clean(self, indexes: Sequence[int]) -> list[tuple[list[int], list[str], list[str | int]]]:
        calls = []
        for idx in self._groups(indexes, self.task_keys, 2 + 1, len(self.head)):
            keys = [k for i in idx for k in (self.task_keys[i], self.done_keys[i])]
            calls.append((idx, keys, [*self.head, *(self.keep_s[i] for i in idx)]))
        return calls


def scatter(n: int, calls: Sequence[tuple[list[int], Any, Any]], replies: list[Any]) -> list[Any]:
    out: list[Any] = [None] * n
    for (idx, _, _), reply in zip(calls, replies, strict=True):
        if isinstance(reply, Exception):
            raise reply
        for i, value in zip(idx, reply, strict=True):
            out[i] = value
    return out


def results(n: int, staged: dict[int, tuple[str, str]], pushed: list[Any]) -> list[int]:
    return [int(pushed[i]) if i in staged and pushed[i] is not None else NOT_OURS for i in range(n)]


class TaskStore:
    """Synchronous claim / finish of task batches (used by the function).

    A claim whose reply is lost is not re-sent (a second claim under the same
    attempt would skip the task): the batch fails and the shim delivers it again
    under a new attempt. Every finish step is safe to re-send.

    ``fault`` (tests) is called with each name of :data:`FINISH_STEPS` once that
    step is done, so a test can stop the function between any two Redis steps;
    ``steps`` runs the cluster's three-step finish on a standalone server too.
    """

    def __init__(
        self,
        client: RespClient,
        protocol: ProtocolSettings,
        *,
        fault: FaultHook | None = None,
        steps: bool = False,
    ) -> None:
        self._client = client
        self._protocol = protocol
        self._fault = fault
        self._steps = steps
        self._claim = client.script(CLAIM_LUA)
        self._finish = client.script(FINISH_LUA, idempotent=True)
        self._stage = client.script(STAGE_LUA, idempotent=True)
        self._push = client.script(PUSH_LUA, idempotent=True)
        self._clean = client.script(CLEAN_LUA, idempotent=True)

    def _at(self, step: str) -> None:
        if self._fault is not None:
            self._fault(step)

    def claim(self, tasks: Sequence[TaskRef]) -> list[Claim]:
        if not tasks:
            return []
        layout = self._protocol.layout
        task_keys = [layout.task(t.task_id) for t in tasks]
        calls: list[tuple[list[int], list[str], list[str | int]]] = []
        group = self._client.slot_group
        for idx in by_group(range(len(tasks)), task_keys, group, per_item=3, fixed=1):
            keys = [layout.task(tasks[i].task_id) for i in idx]
            keys += [layout.done(tasks[i].task_id) for i in idx]
            args: list[str | int] = [p.now_rfc3339(), *(tasks[i].attempt for i in idx)]
            calls.append((idx, keys, args))
        raw = scatter(len(tasks), calls, self._claim.many([(k, a) for _, k, a in calls]))
        claims = _parse_claims(tasks, raw)
        self._at("claimed")
        return claims

    def finish(self, finishes: Sequence[Finish]) -> list[int]:
        """Apply the finishes; per finish REPLIED, NOT_OURS or REPLY_KEY_UNUSABLE."""
        if not finishes:
            return []
        if self._steps:
            return self._three_steps(finishes)
        if not self._client.cluster:
            return self._whole(finishes)
        # a task whose reply list shares its hash's slot (a slot-tagged id) finishes whole
        layout, group = self._protocol.layout, self._client.slot_group
        whole: list[int] = []
        apart: list[int] = []
        for i, f in enumerate(finishes):
            t = f.ref.task_id
            (whole if group(layout.task(t)) == group(layout.reply(t)) else apart).append(i)
        if not whole:
            return self._three_steps(finishes)
        out = [NOT_OURS] * len(finishes)
        for part, run in ((whole, self._whole), (apart, self._three_steps)):
            for i, written in zip(part, run([finishes[i] for i in part]), strict=True):
                out[i] = written
        return out

    def _whole(self, finishes: Sequence[Finish]) -> list[int]:
        """FINISH_LUA: every key of each task in one slot (standalone: one call)."""
        if not finishes:
            return []
        calls = FinishPlan(self._protocol, finishes, self._client.slot_group).whole()
        return [int(x) for x in scatter(len(finishes), calls, self._finish.many(
            [(k, a) for _, k, a in calls]))]  # fmt: skip

    def _three_steps(self, finishes: Sequence[Finish]) -> list[int]:
        """Stage, push, clean: the hash and the reply in different slots."""
        if not finishes:
            return []
        n = len(finishes)
        plan = FinishPlan(self._protocol, finishes, self._client.slot_group)
        calls = plan.stage()
        staged = plan.staged(scatter(n, calls, self._stage.many([(k, a) for _, k, a in calls])))
        self._at("staged")
        calls = plan.push(staged)
        pushed = scatter(n, calls, self._push.many([(k, a) for _, k, a in calls]))
        self._at("pushed")
        calls = plan.clean([i for i in staged if pushed[i] != REPLY_KEY_UNUSABLE])
        scatter(n, calls, self._clean.many([(k, a) for _, k, a in calls]))
        return results(n, staged, pushed)
