"""The shim's metrics: one table of names, one sample, two sinks.

Both the self-run shim and the poller publish the same metrics (README, "Metrics"):

* per queue (dimension / label ``worker``): depth, age of the oldest queued task,
  ids in flight (held by live shims), ids waiting for a retry (held by this shim),
  dead letters;
* per shim: invocations, invocation errors, throttles, batch duration (from the drain
  loop's :class:`~rhailambda.shim.drain.DrainStats`);
* per queue and circle, for the :data:`TOP_CIRCLES` busiest circles of each queue's
  read-ahead window (the intake's ``busiest``, no Redis read): tasks queued there and
  running. A circle id is tenant data of any length and alphabet, so it is labelled
  by its :func:`~rhailambda.tenancy.tenant_id_for` spelling (printable ASCII, at most
  256 characters, one per circle: the same as its Lambda ``TenantId``). Only the top
  circles of the moment are in a sample, so a circle that dropped out of the top (or
  has nothing left) has no series: the label set stays bounded.

A :class:`Sampler` reads them; :mod:`~rhailambda.shim.metrics_emf` writes Embedded
Metric Format lines (CloudWatch) and :mod:`~rhailambda.shim.metrics_prom` renders
the Prometheus text format. Reading the queues costs two pipelined rounds (one write
per node each), however many queues: the leases and each queue's oldest id (the
right end: taken next), then the counts of :func:`~rhailambda.shim.status.queue_commands`
(``rhailambda status``'s) and the oldest tasks' ``createdAt``. Every command is a
single-key read, so it works on a Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from rhailambda.protocol import CREATED_AT, KeyLayout, age_s
from rhailambda.resp_async import RoundTripper
from rhailambda.shim.drain import DrainStats
from rhailambda.shim.status import queue_commands, queue_rows
from rhailambda.tenancy import tenant_id_for

__all__ = [
    "METRICS",
    "TOP_CIRCLES",
    "CircleSample",
    "CircleView",
    "MetricDef",
    "QueueSample",
    "Sample",
    "Sampler",
    "ShimCounters",
    "top_circles",
]

_READ_TIMEOUT_S = 5.0
#: circles per queue in the metrics: the busiest by queued + running in the window
TOP_CIRCLES: Final = 10


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric: its CloudWatch (EMF) name, its Prometheus name, and what it is."""

    name: str  # CloudWatch metric name, in the EMF lines
    prom: str  # Prometheus family name (a counter's samples add ``_total``)
    kind: Literal["queue", "circle", "counter", "duration"]
    unit: str  # Powertools MetricUnit value
    help: str


METRICS: tuple[MetricDef, ...] = (
    MetricDef("QueueDepth", "rhailambda_queue_depth", "queue", "Count", "ids waiting in the queue"),
    MetricDef(
        "OldestTaskAge",
        "rhailambda_oldest_task_age_seconds",
        "queue",
        "Seconds",
        "age (from createdAt) of the task taken next; 0 when the queue is empty",
    ),
    MetricDef("InFlight", "rhailambda_in_flight", "queue", "Count", "ids held by live shims"),
    MetricDef(
        "RetriesWaiting",
        "rhailambda_retries_waiting",
        "queue",
        "Count",
        "ids this shim holds for a retry after a backoff",
    ),
    MetricDef(
        "DeadLetterDepth",
        "rhailambda_dead_letter_depth",
        "queue",
        "Count",
        "ids in the dead-letter list",
    ),
    MetricDef(
        "Invocations",
        "rhailambda_invocations",
        "counter",
        "Count",
        "function invocations started by this shim (throttled ones included)",
    ),
    MetricDef(
        "InvocationErrors",
        "rhailambda_invocation_errors",
        "counter",
        "Count",
        "invocations that failed whole (crash, timeout, backend error)",
    ),
    MetricDef("Throttles", "rhailambda_throttles", "counter", "Count", "throttled invocations"),
    MetricDef(
        "CircleQueued",
        "rhailambda_circle_queued",
        "circle",
        "Count",
        "tasks of this circle held in this shim's read-ahead window, not yet delivered",
    ),
    MetricDef(
        "CircleRunning",
        "rhailambda_circle_running",
        "circle",
        "Count",
        "tasks of this circle delivered to an invocation and not yet settled",
    ),
    MetricDef(
        "BatchDuration",
        "rhailambda_batch_duration_seconds",
        "duration",
        "Milliseconds",
        "time per invocation (EMF: the mean over the period, in ms)",
    ),
)


@dataclass(frozen=True, slots=True)
class QueueSample:
    worker_id: str
    depth: int
    oldest_age_s: float | None  # None: its oldest task has no readable createdAt
    in_flight: int
    retries_waiting: int
    dead_letters: int

    def values(self) -> dict[str, float]:
        """By CloudWatch name; no ``OldestTaskAge`` when it cannot be told."""
        values: dict[str, float] = {
            "QueueDepth": self.depth,
            "InFlight": self.in_flight,
            "RetriesWaiting": self.retries_waiting,
            "DeadLetterDepth": self.dead_letters,
        }
        if self.oldest_age_s is not None:
            values["OldestTaskAge"] = round(self.oldest_age_s, 3)
        return values


@dataclass(frozen=True, slots=True)
class CircleSample:
    """One of a queue's busiest circles; ``rank`` 1 is the busiest."""

    worker_id: str
    rank: int
    circle: str  # the label: tenant_id_for(circle id)
    queued: int
    running: int

    def values(self) -> dict[str, float]:
        return {"CircleQueued": self.queued, "CircleRunning": self.running}


class CircleView(Protocol):
    """What the metrics read from one queue's intake (:class:`~rhailambda.shim.intake.Intake`)."""

    def busiest(self, top: int) -> list[tuple[str, int, int]]: ...


def top_circles(
    intakes: Mapping[str, CircleView], top: int = TOP_CIRCLES
) -> tuple[CircleSample, ...]:
    """The ``top`` busiest circles of each queue, busiest first, idle ones left out."""
    out: list[CircleSample] = []
    for worker_id, intake in intakes.items():
        rows = [r for r in intake.busiest(top) if r[1] > 0 or r[2] > 0]
        rows.sort(key=lambda r: (-(r[1] + r[2]), r[0]))
        for rank, (circle, queued, running) in enumerate(rows[:top], start=1):
            out.append(CircleSample(worker_id, rank, tenant_id_for(circle), queued, running))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ShimCounters:
    invocations: int = 0
    invocation_errors: int = 0
    throttles: int = 0
    batch_s: float = 0.0  # total seconds over ``invocations``

    @classmethod
    def of(cls, stats: DrainStats) -> ShimCounters:
        return cls(stats.batches, stats.invocation_errors, stats.throttled, stats.batch_s)


@dataclass(frozen=True, slots=True)
class Sample:
    """What one read saw; ``queues`` is empty (and ``error`` set) when Redis failed."""

    queues: tuple[QueueSample, ...]
    counters: ShimCounters
    error: str = ""
    circles: tuple[CircleSample, ...] = ()  # by queue, busiest first (the shim's window)

    @property
    def dead_letters(self) -> int:
        return sum(q.dead_letters for q in self.queues)


class DrainView(Protocol):
    """What the sampler reads from the drain loop (a :class:`~rhailambda.shim.drain.Drainer`)."""

    @property
    def stats(self) -> DrainStats: ...

    def retries_waiting(self) -> dict[str, int]: ...

    @property
    def intakes(self) -> Mapping[str, CircleView]: ...


async def read_queues(
    client: RoundTripper,
    layout: KeyLayout,
    worker_ids: Sequence[str],
    retries: Mapping[str, int] | None = None,
    *,
    now_s: Callable[[], float] = time.time,
) -> tuple[QueueSample, ...]:
    """The per-queue metrics of ``worker_ids`` (two rounds, one write per node each)."""
    first: list[list[str | int]] = [["ZRANGE", layout.shims(), 0, -1, "WITHSCORES"]]
    first += [["LINDEX", layout.queue(w), -1] for w in worker_ids]
    flat, *oldest = await client.round_trip(first, timeout_s=_READ_TIMEOUT_S)
    if isinstance(flat, Exception):
        raise flat
    now_ms = now_s() * 1000
    shims = [(str(flat[i]), float(flat[i + 1]) > now_ms) for i in range(0, len(flat), 2)]
    counts = queue_commands(layout, worker_ids, shims)
    ids = [o if isinstance(o, str) else None for o in oldest]
    reads: list[list[str | int]] = [
        ["HMGET", layout.task(i), CREATED_AT, "created_at"] for i in ids if i is not None
    ]
    replies = await client.round_trip([*counts, *reads], timeout_s=_READ_TIMEOUT_S)
    rows = queue_rows(layout, worker_ids, shims, replies[: len(counts)])
    created = iter(replies[len(counts) :])
    now = now_s()
    samples: list[QueueSample] = []
    for row, task_id in zip(rows, ids, strict=True):
        age: float | None = 0.0
        if task_id is not None:
            age = _created_age(next(created), now)
        samples.append(
            QueueSample(
                row.worker_id, row.queued, age, row.in_flight,
                (retries or {}).get(row.worker_id, 0), row.dead_letters,
            )
        )  # fmt: skip
    return tuple(samples)


def _created_age(reply: Any, now: float) -> float | None:
    if not isinstance(reply, list):
        return None  # not a hash (a poison id): no age to tell
    stamp = next((str(v) for v in reply if v), "")
    age = age_s(stamp, now)
    return None if age is None else max(0.0, age)


class Sampler:
    """Reads a :class:`Sample` of one shim: its queues in Redis, its drain loop's counters."""

    def __init__(
        self,
        client: RoundTripper,
        layout: KeyLayout,
        worker_ids: Sequence[str],
        drain: DrainView,
    ) -> None:
        self._client = client
        self._layout = layout
        self._worker_ids = tuple(worker_ids)
        self._drain = drain

    async def sample(self) -> Sample:
        # The counters and circles are read after Redis answered: a batch whose ids are
        # gone from the lists is then (nearly always) counted too.
        try:
            queues = await read_queues(
                self._client, self._layout, self._worker_ids, self._drain.retries_waiting()
            )
        except Exception as exc:  # Redis down: the counters and circles still go out
            error = f"{type(exc).__name__}: {exc}"
            return Sample((), ShimCounters.of(self._drain.stats), error, self._circles())
        return Sample(queues, ShimCounters.of(self._drain.stats), circles=self._circles())

    def _circles(self) -> tuple[CircleSample, ...]:
        return top_circles(self._drain.intakes)
