"""The rhailib wire protocol: every Redis key name and task-hash field lives here.

See ``shared/PROTOCOL.md``. Clients of the Rust ``rhai_dispatcher`` write the task
hash and push the task id on the worker queue; whoever runs the task updates the
hash and pushes exactly one JSON reply on the reply list.

Nothing else in the project spells a key: the client, the shim, the function and
the circle store all ask a :class:`KeyLayout` built once from settings.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from rhailambda.slots import key_home

__all__ = [
    "FIELD_ALIASES",
    "FINAL_STATUSES",
    "KeyLayout",
    "TaskFields",
    "build_reply",
    "normalize_worker_id",
    "now_rfc3339",
]

# Task hash fields (camelCase as the Rust dispatcher writes them).
TASK_ID: Final = "taskId"
SCRIPT: Final = "script"
CALLER_ID: Final = "callerId"
CONTEXT_ID: Final = "contextId"
WORKER_ID: Final = "workerId"
STATUS: Final = "status"
OUTPUT: Final = "output"
ERROR: Final = "error"
CREATED_AT: Final = "createdAt"
UPDATED_AT: Final = "updatedAt"
SIGNATURE: Final = "signature"  # optional: proves callerId (PROTOCOL.md, "Signed tasks")

# Bookkeeping fields of ours. Extra hash fields do not break an HGETALL reader.
ATTEMPT: Final = "rhailambdaAttempt"  # deliveries so far, counted by the shim
CLAIM: Final = "rhailambdaClaim"  # the attempt that holds the processing claim
STAGED_REPLY: Final = "rhailambdaReply"  # the reply, kept in the hash until it is pushed

STATUS_PENDING: Final = "pending"
STATUS_PROCESSING: Final = "processing"
STATUS_COMPLETED: Final = "completed"
STATUS_ERROR: Final = "error"
FINAL_STATUSES: Final = frozenset({STATUS_COMPLETED, STATUS_ERROR})

#: snake_case spellings written by other clients of the same family.
FIELD_ALIASES: Final[Mapping[str, str]] = {
    "task_id": TASK_ID,
    "caller_id": CALLER_ID,
    "context_id": CONTEXT_ID,
    "worker_id": WORKER_ID,
    "created_at": CREATED_AT,
    "updated_at": UPDATED_AT,
}


def normalize_worker_id(worker_id: str) -> str:
    """Normalise a worker id the way the Rust dispatcher does: spaces to ``_``, lower case."""
    return worker_id.replace(" ", "_").lower()


def age_s(created_at: str, now: float) -> float | None:
    """Seconds since ``created_at`` (RFC 3339; no zone: UTC) at ``now``; None if unreadable."""
    if not created_at:
        return None
    try:
        created = datetime.fromisoformat(created_at)
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return now - created.timestamp()


@functools.lru_cache(maxsize=16)
def _reply_parts(template: str, prefix: str) -> tuple[str, ...]:
    """The reply template around its ``{task_id}``s (formatted once, not per key)."""
    return tuple(template.format(prefix=prefix, task_id="\0").split("\0"))


def now_rfc3339() -> str:
    """The current UTC time as RFC 3339 (``2026-01-01T00:00:00.123456+00:00``)."""
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Where everything lives in Redis.

    ``prefix`` and ``reply_template`` are the protocol's (shared with clients);
    ``internal_prefix`` names the keys only rhailambda reads (leases, dead letters,
    pause switches, circle data).
    """

    prefix: str = "rhailib:"
    reply_template: str = "{prefix}reply:{task_id}"
    internal_prefix: str = "rhailambda:"

    def __post_init__(self) -> None:
        if "{" in self.internal_prefix or "}" in self.internal_prefix:
            raise ValueError("the internal prefix must not contain '{' or '}' (hash tags)")
        if "{task_id}" not in self.reply_template:
            raise ValueError("reply_template must contain '{task_id}'")
        try:
            self.reply_template.format(prefix="", task_id="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"reply_template may only use {{prefix}} and {{task_id}}: {exc}"
            ) from exc

    # --- protocol keys -------------------------------------------------------
    def queue(self, worker_id: str) -> str:
        """The worker queue (a list; clients LPUSH, we take from the right)."""
        return f"{self.prefix}{worker_id}"

    def task(self, task_id: str) -> str:
        """The task hash."""
        return f"{self.prefix}{task_id}"

    def reply(self, task_id: str) -> str:
        """The per-task reply list the client BLPOPs."""
        return task_id.join(_reply_parts(self.reply_template, self.prefix))

    def is_reply_key(self, key: str) -> bool:
        """Whether ``key`` is some task's reply list (a task id ``reply:x`` has its
        hash there, a worker id ``reply:x`` its queue: both refused)."""
        parts = _reply_parts(self.reply_template, self.prefix)
        head, tail = parts[0], parts[-1]
        return key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail)

    # --- rhailambda's own keys ----------------------------------------------
    # Each borrows the slot of the protocol key it belongs to (a hash tag), so every
    # script touches one Redis Cluster slot: a queue's in-flight lists, dead letters
    # and pause switch live with the queue; a task's done marker with its hash; the
    # reply's sent marker with the reply list. See shared/PROTOCOL.md, "On a Redis
    # Cluster", and PROTOCOL.md here for the whole list.
    def inflight(self, worker_id: str, shim_id: str) -> str:
        """A shim's in-flight list for one queue (ids it has taken, not yet finished)."""
        return f"{self.internal_prefix}inflight:{key_home(self.queue(worker_id))}:{shim_id}"

    def stage(self, worker_id: str, shim_id: str) -> str:
        """List: the id a standalone shim's BLMOVE just took, until the script right
        behind it moves it on (empty but for that instant; reaped like in-flight)."""
        return f"{self.internal_prefix}stage:{key_home(self.queue(worker_id))}:{shim_id}"

    def dead_letter(self, worker_id: str) -> str:
        """The dead-letter list of a worker queue."""
        return f"{self.internal_prefix}dlq:{key_home(self.queue(worker_id))}"

    def paused(self, worker_id: str) -> str:
        """Present while the queue is paused (like an event source mapping's ``Enabled: false``)."""
        return f"{self.internal_prefix}paused:{key_home(self.queue(worker_id))}"

    def done(self, task_id: str) -> str:
        """Marker of a finished task whose hash is gone: a late redelivery is dropped.

        Lives as long as the reply (the reply TTL), in the task hash's slot.
        """
        return f"{self.internal_prefix}done:{key_home(self.task(task_id))}"

    def replied(self, task_id: str) -> str:
        """Marker that the task's reply was pushed: the push happens once, in the reply's slot."""
        return f"{self.internal_prefix}replied:{key_home(self.reply(task_id))}"

    def shims(self) -> str:
        """Sorted set: shim id -> lease expiry (ms since epoch). One slot for every shim."""
        return f"{self.internal_prefix}{{shims}}"

    def shim_info(self, shim_id: str) -> str:
        """Hash describing a live shim (its queues, start time, health), beside the leases."""
        return f"{self.internal_prefix}{{shims}}:shim:{shim_id}"

    def circle(self, context_id: str, *parts: str) -> str:
        """A key of the circle store, always scoped under one context id."""
        suffix = "".join(f":{p}" for p in parts)
        return f"{self.internal_prefix}circle:{{{context_id}}}{suffix}"

    def circle_receipt(self, context_id: str, task_id: str) -> str:
        """The receipt of a task whose circle writes were committed (a string, with an expiry).

        Under the circle's hash tag, so the commit that writes it stays in one slot.
        """
        return self.circle(context_id, "receipt", task_id)


@dataclass(frozen=True, slots=True)
class TaskFields:
    """A task hash read back, with the snake_case aliases folded in."""

    task_id: str
    script: str | None
    caller_id: str
    context_id: str
    worker_id: str
    status: str
    created_at: str
    raw: Mapping[str, str]

    @classmethod
    def from_hash(cls, task_id: str, raw: Mapping[str, str], worker_id: str = "") -> TaskFields:
        merged = dict(raw)
        for alias, canonical in FIELD_ALIASES.items():
            if alias in raw and canonical not in raw:
                merged[canonical] = raw[alias]
        return cls(
            task_id=merged.get(TASK_ID) or task_id,
            script=merged.get(SCRIPT),
            caller_id=merged.get(CALLER_ID, ""),
            context_id=merged.get(CONTEXT_ID, ""),
            worker_id=merged.get(WORKER_ID) or worker_id,
            status=merged.get(STATUS, ""),
            created_at=merged.get(CREATED_AT, ""),
            raw=merged,
        )


def build_reply(
    fields: TaskFields, *, status: str, output: str | None, error: str | None, updated_at: str
) -> str:
    """The JSON reply pushed on the reply list (the shape the Rust dispatcher reads).

    Written out by hand (one per task on the hot path): the same text as
    ``json.dumps(reply, separators=(",", ":"), ensure_ascii=False)``, in half the time.
    """
    q = _json_str
    return (
        f'{{"taskId":{q(fields.task_id)},"script":{q(fields.script or "")},'
        f'"status":{q(status)},"output":{_json_opt(output)},"error":{_json_opt(error)},'
        f'"createdAt":{q(fields.created_at)},"updatedAt":{q(updated_at)},'
        f'"callerId":{q(fields.caller_id)},"contextId":{q(fields.context_id)},'
        f'"workerId":{q(fields.worker_id)}}}'
    )


#: the string escaper ``json.dumps(..., ensure_ascii=False)`` uses (C)
_json_str: Final = json.encoder.encode_basestring


def _json_opt(value: str | None) -> str:
    return "null" if value is None else _json_str(value)
