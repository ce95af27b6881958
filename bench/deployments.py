"""The same workload on every Redis deployment we support, side by side in one run.

Standalone Redis 7 (the suite's own server) and Valkey 9, a one-node cluster of each
(all 16384 slots on one master: the shape ElastiCache Serverless shows its clients) and
a three-master Redis 7 cluster, each started from the tests' fixtures
(tests/redis_server.py, tests/redis_cluster.py). Per deployment: end-to-end throughput
(``bench.throughput.ours``: the shim on the local backend, N tasks, every reply awaited)
and warm latency (``bench.latency.warm``: one task at a time); each cluster twice,
with the ids our client makes up there (slot-tagged: a batch is one slot) and with
plain UUID ids (the Rust dispatcher's: a slot per task). The rounds interleave the
deployments (round 1: A, B, C; round 2: A, B, C; ...) so that load from elsewhere on a
shared machine falls on all of them alike; each figure is the median over the rounds,
and the ratios to standalone are taken within this one run.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

from bench import latency, throughput
from bench.config import REPO, BenchConfig
from bench.infra import Shim

sys.path.insert(0, str(REPO / "tests"))
from redis_cluster import ClusterUnderTest
from redis_server import RedisServer

__all__ = ["CLUSTERS", "PLAIN", "STANDALONE", "STANDALONE_VALKEY", "deployments"]

STANDALONE = "standalone Redis 7"
#: the same for Valkey: its clusters compare with it as Redis 7's with STANDALONE
STANDALONE_VALKEY = "standalone Valkey 9"
#: name -> (server kind, masters) of the clusters measured beside standalone
CLUSTERS: dict[str, tuple[str, int]] = {
    "one-node Redis 7 cluster": ("redis", 1),
    "one-node Valkey 9 cluster": ("valkey", 1),
    "three-master Redis 7 cluster": ("redis", 3),
}
#: a cluster's second row: plain UUID ids, as the Rust dispatcher makes them (the
#: client's own ids carry a slot tag there: a batch shares one slot)
PLAIN = ", plain ids"
Tick = Callable[[], None] | None


def _flush_standalone(url: str) -> Callable[[], None]:
    def flush() -> None:
        client = redis.Redis.from_url(url)
        client.flushall()
        client.close()

    return flush


def _warm_latency(cfg: BenchConfig, url: str, log: Path, plain: bool) -> dict[str, Any]:
    args = [*cfg.latency_shim_args, "--local-workers", str(cfg.processes)]
    from rhailambda.client import Client

    client = Client(url, slot_tagged_ids=False if plain else None)
    with Shim(url, latency.WORKER, args, log=log) as shim, client:
        out = latency.warm(client, 1, cfg.latency_samples)
        shim.check()
    return out["warm"]


def deployments(cfg: BenchConfig, url: str, logs: Path, tick: Tick = None) -> dict[str, Any]:
    """Throughput and warm latency per deployment; ratios to standalone."""
    with ExitStack() as stack:
        valkey = stack.enter_context(RedisServer(kind="valkey"))
        targets: dict[str, tuple[str, Callable[[], None], bool]] = {
            STANDALONE: (url, _flush_standalone(url), False),
            STANDALONE_VALKEY: (valkey.url, _flush_standalone(valkey.url), False),
        }
        started_s: dict[str, float] = {}
        for name, (kind, masters) in CLUSTERS.items():
            cluster = ClusterUnderTest(kind, masters)  # type: ignore[arg-type]
            stack.callback(cluster.close)
            cluster.start()
            started_s[name] = cluster.start_seconds or 0.0
            targets[name] = (cluster.url, cluster.flushall, False)
            targets[name + PLAIN] = (cluster.url, cluster.flushall, True)
        rates: dict[str, list[float]] = {n: [] for n in targets}
        lat: dict[str, list[dict[str, float]]] = {n: [] for n in targets}
        for _ in range(cfg.runs):
            for name, (target, flush, plain) in targets.items():
                slug = name.split()[0] + ("-plain" if plain else "")
                res = throughput.ours(
                    cfg, target, cfg.shim_args, logs / f"deploy-{slug}.log", runs=1,
                    plain_ids=plain,
                )  # fmt: skip
                rates[name].append(res["median"])
                flush()
                log = logs / f"deploy-{slug}-lat.log"
                lat[name].append(_warm_latency(cfg, target, log, plain))
                flush()
                if tick:
                    tick()
    base = statistics.median(rates[STANDALONE])
    base_p50 = statistics.median(r["p50_ms"] for r in lat[STANDALONE])
    out: dict[str, Any] = {}
    for name in targets:
        rate = statistics.median(rates[name])
        p50 = statistics.median(r["p50_ms"] for r in lat[name])
        out[name] = {
            "rate": rate,
            "runs": rates[name],
            "ratio": rate / base,
            "p50_ms": p50,
            "p99_ms": statistics.median(r["p99_ms"] for r in lat[name]),
            "p50_ratio": p50 / base_p50,
            "latency_runs": lat[name],
        }
        if name.removesuffix(PLAIN) in started_s:
            out[name]["cluster_start_s"] = started_s[name.removesuffix(PLAIN)]
    return out
