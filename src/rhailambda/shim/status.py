"""What ``rhailambda status`` shows: queues, in-flight ids, dead letters, live shims.

Queues are found without KEYS or SCAN: every live shim lists its worker ids in
its info hash, and ``--worker`` adds more. Two pipelined round trips in all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from rhailambda.protocol import KeyLayout
from rhailambda.shim.redis_lease import WORKERS_FIELD

__all__ = ["QueueStatus", "ShimStatus", "Status", "gather_status", "render_status"]


@dataclass(frozen=True, slots=True)
class QueueStatus:
    worker_id: str
    queued: int
    in_flight: int  # held by live shims
    stranded: int  # held by shims whose lease expired (the reaper returns them)
    dead_letters: int
    paused: bool


@dataclass(frozen=True, slots=True)
class ShimStatus:
    shim_id: str
    live: bool
    lease_left_s: float
    healthy: bool
    workers: tuple[str, ...]
    info: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Status:
    queues: tuple[QueueStatus, ...]
    shims: tuple[ShimStatus, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def gather_status(client: redis.Redis, layout: KeyLayout, workers: Sequence[str] = ()) -> Status:
    now_ms = time.time() * 1000
    raw_leases: list[Any] = list(client.zrange(layout.shims(), 0, -1, withscores=True))
    leases = [(str(member), float(score)) for member, score in raw_leases]
    pipe = client.pipeline(transaction=False)
    pipe.smembers(layout.paused())
    for shim_id, _ in leases:
        pipe.hgetall(layout.shim_info(shim_id))
    paused_raw, *infos = pipe.execute()
    shims: list[ShimStatus] = []
    for (shim_id, score), info in zip(leases, infos, strict=True):
        listed = tuple(w for w in (info.get(WORKERS_FIELD) or "").split(",") if w)
        shims.append(
            ShimStatus(
                shim_id=shim_id,
                live=score > now_ms,
                lease_left_s=round((score - now_ms) / 1000, 1),
                healthy=info.get("healthy", "0") == "1" and score > now_ms,
                workers=listed,
                info=dict(info),
            )
        )
    names = list(dict.fromkeys([*workers, *(w for s in shims for w in s.workers)]))
    pipe = client.pipeline(transaction=False)
    for worker_id in names:
        pipe.llen(layout.queue(worker_id))
        pipe.llen(layout.dead_letter(worker_id))
        for shim in shims:
            pipe.llen(layout.inflight(worker_id, shim.shim_id))
    counts = iter(pipe.execute())
    queues: list[QueueStatus] = []
    for worker_id in names:
        queued, dead = next(counts), next(counts)
        live = stranded = 0
        for shim in shims:
            held = next(counts)
            if shim.live:
                live += held
            else:
                stranded += held
        queues.append(QueueStatus(worker_id, queued, live, stranded, dead, worker_id in paused_raw))
    return Status(tuple(queues), tuple(shims))


def render_status(status: Status) -> None:
    """Print ``status`` as two tables (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    queues = Table(title="queues")
    for column in ("worker", "queued", "in flight", "stranded", "dead letters", "paused"):
        queues.add_column(column, justify="left" if column == "worker" else "right")
    for q in status.queues:
        queues.add_row(q.worker_id, str(q.queued), str(q.in_flight), str(q.stranded),
                       str(q.dead_letters), "yes" if q.paused else "")  # fmt: skip
    console.print(queues)
    shims = Table(title="shims")
    for column in ("shim", "state", "lease left s", "workers", "batches", "dead-lettered",
                   "last error"):  # fmt: skip
        shims.add_column(column)
    for s in status.shims:
        state = "healthy" if s.healthy else ("unhealthy" if s.live else "expired")
        shims.add_row(s.shim_id, state, f"{s.lease_left_s:g}", ",".join(s.workers),
                      s.info.get("batches", ""), s.info.get("dead_lettered", ""),
                      s.info.get("last_error", ""))  # fmt: skip
    console.print(shims)
