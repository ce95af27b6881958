"""What ``rhailambda status`` shows: queues, in-flight ids, dead letters, live shims.

Queues are found without KEYS or SCAN: every live shim lists its worker ids in
its info hash, and ``--worker`` adds more. Three rounds of single-key reads (one
write per node each), so it works on a Redis Cluster too. A queue whose key holds
the wrong type (a hash at ``rhailib:w1``) is reported on its own row.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from rhailambda.protocol import KeyLayout
from rhailambda.resp import RespClient
from rhailambda.shim.redis_lease import WORKERS_FIELD

__all__ = [
    "QueueStatus",
    "ShimStatus",
    "Status",
    "gather_status",
    "queue_commands",
    "queue_rows",
    "render_status",
]


@dataclass(frozen=True, slots=True)
class QueueStatus:
    worker_id: str
    queued: int
    in_flight: int  # held by live shims
    stranded: int  # held by shims whose lease expired (the reaper returns them)
    dead_letters: int
    paused: bool
    error: str = ""  # a key of this queue holds the wrong type (the others still show)


@dataclass(frozen=True, slots=True)
class ShimStatus:
    shim_id: str
    live: bool
    lease_left_s: float
    healthy: bool
    workers: tuple[str, ...]
    info: dict[str, str] = field(default_factory=dict)
    problem: str = ""  # why it is not healthy, beyond its own last_error (a late heartbeat)


@dataclass(frozen=True, slots=True)
class Status:
    queues: tuple[QueueStatus, ...]
    shims: tuple[ShimStatus, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def gather_status(client: RespClient, layout: KeyLayout, workers: Sequence[str] = ()) -> Status:
    """Two rounds of single-key reads (one write per node): works on any deployment."""
    now_ms = time.time() * 1000
    flat = client.execute("ZRANGE", layout.shims(), 0, -1, "WITHSCORES", idempotent=True)
    leases = [(str(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
    infos = client.round_trip(
        [["HGETALL", layout.shim_info(shim_id)] for shim_id, _ in leases], idempotent=True
    )
    shims: list[ShimStatus] = []
    for (shim_id, score), raw in zip(leases, infos, strict=True):
        info = _as_dict(raw)
        listed = tuple(w for w in (info.get(WORKERS_FIELD) or "").split(",") if w)
        late = _heartbeat_late(info, score, now_ms)
        shims.append(
            ShimStatus(
                shim_id=shim_id,
                live=score > now_ms,
                lease_left_s=round((score - now_ms) / 1000, 1),
                healthy=info.get("healthy", "0") == "1" and score > now_ms and not late,
                workers=listed,
                info=info,
                problem=late,
            )
        )
    names = list(dict.fromkeys([*workers, *(w for s in shims for w in s.workers)]))
    held_by = [(s.shim_id, s.live) for s in shims]
    commands = queue_commands(layout, names, held_by)
    replies = client.round_trip(commands, idempotent=True) if commands else []
    queues = queue_rows(layout, names, held_by, replies)
    return Status(tuple(queues), tuple(shims))


def queue_commands(
    layout: KeyLayout, worker_ids: Sequence[str], shims: Sequence[tuple[str, bool]]
) -> list[list[str | int]]:
    """The single-key reads behind each queue's row; ``shims`` is (shim id, live)."""
    commands: list[list[str | int]] = []
    for worker_id in worker_ids:
        commands += [
            ["LLEN", layout.queue(worker_id)],
            ["LLEN", layout.dead_letter(worker_id)],
            ["EXISTS", layout.paused(worker_id)],
        ]
        commands += [["LLEN", layout.inflight(worker_id, shim_id)] for shim_id, _ in shims]
    return commands


def queue_rows(
    layout: KeyLayout,
    worker_ids: Sequence[str],
    shims: Sequence[tuple[str, bool]],
    replies: Sequence[Any],
) -> list[QueueStatus]:
    """The rows of :func:`queue_commands`' replies (in order, errors as values)."""
    counts = iter(replies)
    queues: list[QueueStatus] = []
    for worker_id in worker_ids:
        queued, dead, paused = next(counts), next(counts), next(counts)
        problems = [str(r) for r in (queued, dead) if isinstance(r, Exception)]
        live = stranded = 0
        for _, shim_live in shims:
            held = next(counts)
            if isinstance(held, Exception):
                problems.append(str(held))
            elif shim_live:
                live += held
            else:
                stranded += held
        queues.append(
            QueueStatus(
                worker_id,
                _count(queued), live, stranded, _count(dead), paused == 1,
                error=_queue_error(layout, worker_id, problems),
            )
        )  # fmt: skip
    return queues


def _heartbeat_late(info: dict[str, str], lease_until_ms: float, now_ms: float) -> str:
    """Why a shim's last heartbeat is overdue, or "".

    A shim renews its lease every ``lease_s / 3`` with a write; when Redis refuses
    writes (OOM) or the shim cannot reach it, the info hash keeps its last
    ``healthy=1``. Past one and a half periods without a heartbeat, the shim is not
    making progress, whatever its info says.
    """
    try:
        beat = datetime.fromisoformat(info["heartbeat_at"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return ""
    beat_ms = beat.timestamp() * 1000
    period_ms = (lease_until_ms - beat_ms) / 3
    age_ms = now_ms - beat_ms
    if period_ms <= 0 or age_ms <= 1.5 * period_ms + 500:
        return ""
    return (
        f"no heartbeat for {age_ms / 1000:.1f} s (due every {period_ms / 1000:.1f} s): "
        "it cannot write to Redis (out of memory, read-only, unreachable?) or is stalled"
    )


def _as_dict(raw: Any) -> dict[str, str]:
    if not isinstance(raw, list):
        return {}
    return {str(k): str(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}


def _count(reply: Any) -> int:
    return reply if isinstance(reply, int) else 0


def _queue_error(layout: KeyLayout, worker_id: str, problems: list[str]) -> str:
    if not problems:
        return ""
    return f"{layout.queue(worker_id)} or one of its keys has the wrong type: {problems[0]}"


def render_status(status: Status) -> None:
    """Print ``status`` as two tables (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    queues = Table(title="queues")
    for column in ("worker", "queued", "in flight", "stranded", "dead letters", "paused",
                   "problem"):  # fmt: skip
        queues.add_column(column, justify="left" if column in ("worker", "problem") else "right")
    for q in status.queues:
        queues.add_row(q.worker_id, str(q.queued), str(q.in_flight), str(q.stranded),
                       str(q.dead_letters), "yes" if q.paused else "", q.error)  # fmt: skip
    console.print(queues)
    shims = Table(title="shims")
    for column in ("shim", "state", "lease left s", "workers", "batches", "dead-lettered",
                   "last error"):  # fmt: skip
        shims.add_column(column)
    for s in status.shims:
        state = "healthy" if s.healthy else ("unhealthy" if s.live else "expired")
        shims.add_row(s.shim_id, state, f"{s.lease_left_s:g}", ",".join(s.workers),
                      s.info.get("batches", ""), s.info.get("dead_lettered", ""),
                      s.problem or s.info.get("last_error", ""))  # fmt: skip
    console.print(shims)
