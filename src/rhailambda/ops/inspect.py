"""Where a task id is: ``rhailambda task show ID``.

An id can be in five places: *queued* (on ``rhailib:<worker>``, at some position),
*in flight* (in a shim's in-flight list: ``rhailambda:inflight:{rhailib:<worker>}:<shim>``),
*waiting for a retry* (the drain loop keeps retries in the shim's memory while the id
stays in that in-flight list, so Redis cannot tell it from a running attempt: both
are reported as in flight under that shim), *dead-lettered* (on the queue's
dead-letter list) or *done* (its done marker, ``rhailambda:done:{rhailib:<task>}``,
lives as long as the reply). The queues searched are the ones named, the task's own
``workerId`` and every live shim's; three rounds of single-key reads, so it works on
a Redis Cluster. The reply is shown while it is still uncollected on the reply list.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rhailambda import protocol as p
from rhailambda.ops.dlq import read_task
from rhailambda.resp import RespClient
from rhailambda.resp_wire import raise_error
from rhailambda.settings import ProtocolSettings
from rhailambda.shim.redis_lease import WORKERS_FIELD

__all__ = ["Place", "TaskReport", "locate"]


@dataclass(frozen=True, slots=True)
class Place:
    """One place the id is: ``queued``, ``in_flight``, ``dead_lettered`` or ``done``."""

    kind: str
    worker_id: str = ""
    position: int = 0  # queued: 1 is taken next
    queue_length: int = 0
    shim_id: str = ""  # in flight: whose list holds it
    shim_live: bool = False
    since: str = ""  # in flight: when its current attempt was claimed (updatedAt)
    attempt: int = 0
    kept_s: int = 0  # done: how long the marker lives; dead-lettered: the hash

    def describe(self) -> str:
        if self.kind == "queued":
            return (f"queued on {self.worker_id}, position {self.position} of "
                    f"{self.queue_length} (1 is taken next)")  # fmt: skip
        if self.kind == "in_flight":
            lease = "live" if self.shim_live else "lease expired: the reaper hands it back"
            since = f", claimed at {self.since}" if self.since else ", not claimed yet"
            return (
                f"in flight on {self.worker_id} under shim {self.shim_id} ({lease}), attempt "
                f"{self.attempt}{since}: running, or waiting in that shim for a retry "
                "(a shim keeps its retries in memory)"
            )
        if self.kind == "dead_lettered":
            kept = {-1: "hash kept, no expiry", -2: "its hash is gone"}.get(
                self.kept_s, f"hash kept {self.kept_s} s more"
            )
            return f"dead-lettered on {self.worker_id} ({kept}; rhailambda dlq redrive)"
        return f"done: finished, its done marker lives {self.kept_s} s more"


@dataclass(frozen=True, slots=True)
class TaskReport:
    task_id: str
    fields: dict[str, str]
    hash_kept_s: int  # -1 no expiry, -2 no hash
    places: tuple[Place, ...]
    replies: tuple[Any, ...] = ()  # uncollected replies, newest first (JSON when it parses)
    problem: str = ""  # the task key is not a hash
    searched: tuple[str, ...] = field(default=())

    @property
    def known(self) -> bool:
        return bool(self.fields or self.places or self.replies or self.problem)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["places"] = [{**asdict(pl), "text": pl.describe()} for pl in self.places]
        return out


def _int(reply: Any) -> int:
    return reply if isinstance(reply, int) else -1


def locate(
    client: RespClient, protocol: ProtocolSettings, task_id: str, workers: Sequence[str] = ()
) -> TaskReport:
    layout = protocol.layout
    (task,) = read_task(client, protocol, [task_id])
    first = client.round_trip(
        [["TTL", layout.done(task_id)], ["LRANGE", layout.reply(task_id), 0, -1],
         ["ZRANGE", layout.shims(), 0, -1, "WITHSCORES"]],
        idempotent=True,
    )  # fmt: skip
    done_ttl, replies = first[0], first[1]
    flat = raise_error(first[2])
    now_ms = time.time() * 1000
    shims = [(str(flat[i]), float(flat[i + 1]) > now_ms) for i in range(0, len(flat), 2)]
    infos = client.round_trip(
        [["HGET", layout.shim_info(s), WORKERS_FIELD] for s, _ in shims], idempotent=True
    ) if shims else []  # fmt: skip
    own = task.fields.get(p.WORKER_ID, "")
    names = [*workers, *([p.normalize_worker_id(own)] if own else [])]
    names += [w for info in infos if isinstance(info, str) for w in info.split(",") if w]
    searched = list(dict.fromkeys(names))
    commands: list[list[str | int]] = []
    for w in searched:
        commands += [["LPOS", layout.queue(w), task_id, "RANK", -1], ["LLEN", layout.queue(w)],
                     ["LPOS", layout.dead_letter(w), task_id]]  # fmt: skip
        commands += [["LPOS", layout.inflight(w, s), task_id] for s, _ in shims]
    found = iter(client.round_trip(commands, idempotent=True) if commands else [])
    places: list[Place] = []
    attempt = task.fields.get(p.ATTEMPT, "")
    claimed = task.fields.get(p.STATUS) == p.STATUS_PROCESSING and task.fields.get(
        p.CLAIM
    ) == attempt  # fmt: skip
    for w in searched:
        index, length, dead = next(found), next(found), next(found)
        if isinstance(index, int):
            places.append(Place("queued", w, position=_int(length) - index,
                                queue_length=_int(length)))  # fmt: skip
        for shim_id, live in shims:
            if isinstance(next(found), int):
                places.append(Place(
                    "in_flight", w, shim_id=shim_id, shim_live=live,
                    since=task.fields.get(p.UPDATED_AT, "") if claimed else "",
                    attempt=int(attempt) if attempt.isdigit() else 0,
                ))  # fmt: skip
        if isinstance(dead, int):
            places.append(Place("dead_lettered", w, kept_s=task.kept_s))
    if not places and _int(done_ttl) >= 0:
        places.append(Place("done", kept_s=_int(done_ttl)))
    return TaskReport(
        task_id, task.fields, task.kept_s, tuple(places),
        tuple(_parsed(r) for r in replies) if isinstance(replies, list) else (),
        problem=task.problem, searched=tuple(searched),
    )  # fmt: skip


def _parsed(reply: Any) -> Any:
    try:
        return json.loads(reply)
    except (TypeError, ValueError):
        return reply
