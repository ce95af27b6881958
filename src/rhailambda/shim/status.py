"""What ``rhailambda status`` shows: queues, in-flight ids, dead letters, live shims, circles.

Queues are found without KEYS or SCAN: every live shim lists its worker ids in
its info hash, and ``--worker`` adds more. Four rounds of single-key reads (one
write per node each), so it works on a Redis Cluster too. A queue whose key holds
the wrong type (a hash at ``rhailib:w1``) is reported on its own row.

Circles per queue: each live shim publishes the busiest circles of its read-ahead
window (read ahead and running, shim.intake); what no shim has read yet is known
from a sample: the circles of the next ``circle_sample`` ids to be taken (one HMGET
each), never the whole queue. The busiest few per queue are shown.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from rhailambda.protocol import KeyLayout
from rhailambda.resp import RespClient
from rhailambda.shim.intake import CIRCLES_FIELD
from rhailambda.shim.redis_lease import WORKERS_FIELD
from rhailambda.shim.taskslot import circle_from, circle_read

__all__ = [
    "CircleStatus",
    "QueueStatus",
    "ShimStatus",
    "Status",
    "gather_status",
    "queue_commands",
    "queue_rows",
    "render_status",
]

CIRCLE_SAMPLE = 200  # queued ids per queue whose circle is read
TOP_CIRCLES = 5  # circles shown per queue


@dataclass(frozen=True, slots=True)
class CircleStatus:
    circle: str
    read_ahead: int  # queued in live shims' read-ahead windows
    running: int  # delivered to an invocation, not yet settled
    sampled: int  # of the next ``circle_sample`` ids in the queue itself


@dataclass(frozen=True, slots=True)
class QueueStatus:
    worker_id: str
    queued: int
    in_flight: int  # held by live shims
    stranded: int  # held by shims whose lease expired (the reaper returns them)
    dead_letters: int
    paused: bool
    error: str = ""  # a key of this queue holds the wrong type (the others still show)
    circles: tuple[CircleStatus, ...] = ()  # the busiest, most queued + running first


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


def gather_status(
    client: RespClient,
    layout: KeyLayout,
    workers: Sequence[str] = (),
    *,
    circle_sample: int = CIRCLE_SAMPLE,
    top_circles: int = TOP_CIRCLES,
) -> Status:
    """Rounds of single-key reads (one write per node): works on any deployment."""
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
    commands += [["LRANGE", layout.queue(w), -circle_sample, -1] for w in names]
    replies = client.round_trip(commands, idempotent=True) if commands else []
    rows = len(replies) - len(names)
    queues = queue_rows(layout, names, held_by, replies[:rows])
    samples = [[str(t) for t in s] if isinstance(s, list) else [] for s in replies[rows:]]
    sampled = _sampled_circles(client, layout, samples)
    queues = [
        dataclasses.replace(q, circles=_circles(q.worker_id, shims, found, top_circles))
        for q, found in zip(queues, sampled, strict=True)
    ]
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


def _sampled_circles(
    client: RespClient, layout: KeyLayout, samples: list[list[str]]
) -> list[Counter[str]]:
    """The circles of each queue's sampled ids (one HMGET per id, one round)."""
    reads = [circle_read(layout.task(t)) for ids in samples for t in ids]
    replies = iter(client.round_trip(reads, idempotent=True) if reads else [])
    out: list[Counter[str]] = []
    for ids in samples:
        found: Counter[str] = Counter()
        for _ in ids:
            found[circle_from(next(replies))] += 1
        out.append(found)
    return out


def _circles(
    worker_id: str, shims: list[ShimStatus], sampled: Counter[str], top: int
) -> tuple[CircleStatus, ...]:
    ahead: Counter[str] = Counter()
    running: Counter[str] = Counter()
    for shim in shims:
        if not shim.live:
            continue
        try:
            rows = json.loads(shim.info.get(CIRCLES_FIELD) or "{}").get(worker_id, [])
            for circle, queued, run in rows:
                ahead[str(circle)] += int(queued)
                running[str(circle)] += int(run)
        except (ValueError, TypeError, AttributeError):
            continue  # an older shim's info, or someone else's: no circle rows from it
    names = set(ahead) | set(running) | set(sampled)
    rows = [CircleStatus(c, ahead[c], running[c], sampled[c]) for c in names]
    rows.sort(key=lambda r: (-(r.read_ahead + r.running + r.sampled), r.circle))
    return tuple(rows[:top])


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
    circles = Table(title="busiest circles per queue (queued in the queue: of its next ids)")
    for column in ("worker", "circle", "read ahead", "running", "queued (sampled)"):
        circles.add_column(column, justify="left" if column in ("worker", "circle") else "right")
    for q in status.queues:
        for c in q.circles:
            circles.add_row(q.worker_id, c.circle or "(none)", str(c.read_ahead),
                            str(c.running), str(c.sampled))  # fmt: skip
    if any(q.circles for q in status.queues):
        console.print(circles)
