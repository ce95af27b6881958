"""The invocation event the shim sends the function, and the response it gets back.

Event (JSON)::

    {"workerId": "worker1",
     "tasks": [{"taskId": "t1", "attempt": 1}, {"taskId": "t2", "attempt": 3}]}

Response (JSON), following Lambda's partial-batch convention::

    {"batchItemFailures": [{"itemIdentifier": "t2"}],
     "outcomes": {"t1": "completed", "t2": "failed"}}

``attempt`` is the delivery count the shim recorded in the task hash; the function
uses it as a fencing token so a stale invocation can never finish a task that a
newer delivery has claimed. Ids listed in ``batchItemFailures`` were not finished
and should be retried; every other id is done (completed, error reply sent, or
skipped because another delivery already owns or finished it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rhailambda.errors import RhailambdaError

__all__ = ["BatchResponse", "EventError", "InvocationEvent", "Outcome", "TaskRef"]

#: ``rejected``: the id cannot be run or answered as it is (an empty id, a reply key
#: that is not a list): the shim dead-letters it at once, with ``reasons[id]``.
Outcome = Literal["completed", "error", "skipped", "failed", "rejected"]
OUTCOMES: frozenset[str] = frozenset({"completed", "error", "skipped", "failed", "rejected"})


class EventError(RhailambdaError, ValueError):
    """The event does not have the documented shape."""


@dataclass(frozen=True, slots=True)
class TaskRef:
    task_id: str
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class InvocationEvent:
    worker_id: str
    tasks: tuple[TaskRef, ...]
    #: entries that are not a usable task (id or its repr, why): each is rejected
    #: alone, its neighbours run as if it were absent
    invalid: tuple[tuple[str, str], ...] = ()
    #: the circle every task of this batch belongs to, when the shim isolates circles
    #: (``RHAILAMBDA_TENANT_ISOLATION`` / ``--isolate-circles``): the lambda backend
    #: sends it as the Invoke's ``TenantId``, the local backend picks a worker by it.
    #: Not part of the event JSON: the function learns it from ``context.tenant_id``.
    tenant_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "workerId": self.worker_id,
            "tasks": [{"taskId": t.task_id, "attempt": t.attempt} for t in self.tasks],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> InvocationEvent:
        if not isinstance(raw, Mapping):
            raise EventError("event must be a JSON object")
        worker_id = raw.get("workerId", "")
        tasks_raw = raw.get("tasks")
        if not isinstance(worker_id, str):
            raise EventError("workerId must be a string")
        if not isinstance(tasks_raw, list):
            raise EventError("tasks must be a list")
        tasks: list[TaskRef] = []
        invalid: list[tuple[str, str]] = []
        for item in tasks_raw:
            if isinstance(item, str) and item:
                tasks.append(TaskRef(item))
                continue
            if not isinstance(item, Mapping):
                invalid.append((str(item)[:200], "each task must be an object or a task id"))
                continue
            task_id = item.get("taskId")
            attempt = item.get("attempt", 1)
            if not isinstance(task_id, str) or not task_id:
                invalid.append((str(task_id)[:200], "taskId must be a non-empty string"))
            elif not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
                invalid.append((task_id, f"attempt of {task_id} must be a positive integer"))
            else:
                tasks.append(TaskRef(task_id, attempt))
        return cls(worker_id=worker_id, tasks=tuple(tasks), invalid=tuple(invalid))


@dataclass(frozen=True, slots=True)
class BatchResponse:
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)  # of rejected ids

    @property
    def rejected(self) -> dict[str, str]:
        return {
            t: self.reasons.get(t, "rejected by the function")
            for t, o in self.outcomes.items()
            if o == "rejected"
        }

    @property
    def failed_ids(self) -> frozenset[str]:
        return frozenset(t for t, o in self.outcomes.items() if o == "failed")

    def to_json(self) -> dict[str, Any]:
        return {
            "batchItemFailures": [{"itemIdentifier": t} for t in sorted(self.failed_ids)],
            "outcomes": dict(self.outcomes),
            **({"reasons": dict(self.reasons)} if self.reasons else {}),
        }

    @classmethod
    def from_json(cls, raw: Any, event: InvocationEvent) -> BatchResponse:
        """Read a function's answer; ids it does not mention count as done."""
        if not isinstance(raw, Mapping):
            raise EventError("response must be a JSON object")
        outcomes: dict[str, Outcome] = {}
        given = raw.get("outcomes")
        if isinstance(given, Mapping):
            for k, v in given.items():
                if v in OUTCOMES:
                    outcomes[str(k)] = v
        for t in event.tasks:
            outcomes.setdefault(t.task_id, "completed")
        failures = raw.get("batchItemFailures") or []
        if not isinstance(failures, list):
            raise EventError("batchItemFailures must be a list")
        for item in failures:
            ident = item.get("itemIdentifier") if isinstance(item, Mapping) else None
            if isinstance(ident, str):
                outcomes[ident] = "failed"
        given_reasons = raw.get("reasons")
        reasons = (
            {str(k): str(v) for k, v in given_reasons.items()}
            if isinstance(given_reasons, Mapping)
            else {}
        )
        return cls(outcomes=outcomes, reasons=reasons)
