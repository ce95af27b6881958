"""A probe extension for the fair-share tests: what ran when, per circle, in Redis.

``probe::work(ms)`` counts the task as running for its circle (``CONTEXT_ID``),
records the most that ever ran at once per circle, appends ``circle task start_s``
to an order list, sleeps ``ms``, and stops counting. Each is a one-key command (the
keys share the ``{probe}`` hash tag anyway), so it works on a cluster. Workers load
it with ``RHAILAMBDA_EXTENSIONS=circle_probe:probe`` and this directory on
``PYTHONPATH``.
"""

from __future__ import annotations

import time
from typing import Any

RUNNING = "rhailambda:test:{probe}:running"  # hash: circle -> tasks running now
MOST = "rhailambda:test:{probe}:most"  # sorted set: circle -> most running at once
ORDER = "rhailambda:test:{probe}:order"  # list: "circle task start_s", in start order


class _Session:
    def __init__(self, client: Any, ctx: Any) -> None:
        self._client = client
        self._ctx = ctx

    def _work(self, ms: int) -> bool:
        started = time.time()  # before any Redis call: a worker's first one connects
        circle = self._ctx.context_id
        now = self._client.execute("HINCRBY", RUNNING, circle, 1)
        self._client.execute("ZADD", MOST, "GT", now, circle)
        self._client.execute("RPUSH", ORDER, f"{circle} {self._ctx.task_id} {started:.6f}")
        try:
            time.sleep(ms / 1000)
        finally:
            self._client.execute("HINCRBY", RUNNING, circle, -1)
        return True

    def modules(self) -> dict[str, dict[str, Any]]:
        return {"probe": {"work": self._work}}

    def commit(self) -> None:
        pass

    def discard(self) -> None:
        pass


class CircleProbe:
    name = "probe"

    def __init__(self, redis_url: str) -> None:
        from rhailambda.resp import from_url

        self._client = from_url(redis_url, client_name="rhailambda-circle-probe")

    def open(self, ctx: Any) -> _Session:
        return _Session(self._client, ctx)


def probe(env: Any) -> CircleProbe:
    """``RHAILAMBDA_EXTENSIONS`` factory (reads REDIS_URL)."""
    from rhailambda.settings import RedisSettings

    return CircleProbe(RedisSettings.from_env(env).url)


def order(client: Any) -> list[tuple[str, str, float]]:
    """(circle, task id, start time) of every probed task, in start order."""
    rows = [str(r).split(" ") for r in client.lrange(ORDER, 0, -1)]
    return [(c, t, float(s)) for c, t, s in rows]


def most(client: Any) -> dict[str, int]:
    return {str(c): int(n) for c, n in client.zrange(MOST, 0, -1, withscores=True)}
