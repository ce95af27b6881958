"""Redis client libraries side by side: ours, redis-py, valkey-glide (sync and asyncio).

``python -m bench.clients [--quick] [--no-safety] [--no-write]``, run with a Python
that has the candidates installed (any missing one gets "not installed" rows)::

    python3 -m venv /work/scratch/venv-clients
    /work/scratch/venv-clients/bin/pip install 'redis[hiredis]' valkey-glide valkey-glide-sync
    PYTHONPATH=src:. /work/scratch/venv-clients/bin/python -m bench.clients

It starts a standalone redis-server and a one-node cluster (all 16384 slots) on
loopback ports it picks, and stops them at the end. For each candidate:

* **import**: wall time of a fresh ``python -c 'import X'`` minus ``python -c pass``,
  median of 7, bytecode compiled first and ``PYTHONDONTWRITEBYTECODE`` unset;
* **cold**: a fresh process imports the library, connects and runs one ``EVAL``
  (``INCR`` of one key); the time inside the process from before the import to the
  reply, and the whole process's wall time from outside; medians of 7;
* **EVALSHA**: p50 / p99 of 2,000 sequential calls of a script writing 2 keys in one
  slot (``HSET`` + ``INCR``; the library's script API where it has one), after 200
  warm-up calls; **pipeline**: p50 / p99 of 2,000 non-transactional batches of 10 ``HSET``;
* **8 tasks** (asyncio candidates): 8 concurrent tasks, each calling the script
  sequentially for 2 s; calls per second. Ours: one connection per task (as the shim's
  takers); redis-py: one client (its pool grows to 8 connections); glide: one client
  (one multiplexed connection, its design).

Every measurement runs in a subprocess of its own (glide starts a runtime with threads).

**Safety** (``--no-safety`` skips it): each client talks to Redis through a TCP proxy
that, once armed, forwards the next ``EVALSHA`` to Redis, drops Redis's reply and
closes both sockets: the write script ran, the client sees a broken connection. The
script's counter then says whether the library re-sent it (default settings, then with
retries turned off where the library has the setting). For the asyncio clients, a
``BLPOP`` is cancelled after 50 ms, an element is pushed from another connection, and
the next command on the client must get its own reply (not the popped element), while
the element must still be in the list (not taken by an abandoned ``BLPOP``).

``bench/CLIENTS.md`` gets the tables between its ``<!-- clients:begin -->`` and
``<!-- clients:end -->`` markers (not with ``--quick`` unless ``--write``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MD = REPO / "bench" / "CLIENTS.md"
BEGIN, END = "<!-- clients:begin -->", "<!-- clients:end -->"

SCRIPT = "redis.call('HSET', KEYS[1], 'f', ARGV[1]) return redis.call('INCR', KEYS[2])"
KEYS = ["{b}:h", "{b}:n"]
COLD_SCRIPT = "return redis.call('INCR', KEYS[1])"
WRITE_SCRIPT = "return redis.call('INCR', KEYS[1])"  # the safety probe's "claim"
SAFETY_KEY = "{s}:n"
LIST_KEY = "{s}:list"
FRESH_KEY = "{s}:fresh"

# name -> label per mode, module imported, package top level, sync or async
CANDIDATES: dict[str, dict[str, Any]] = {
    "ours-sync": {
        "labels": {"standalone": "ours `resp.RespClient`", "cluster": "ours `resp.RespClient`"},
        "module": "rhailambda.resp",
        "top": "hiredis",
        "kind": "sync",
    },
    "ours-async": {
        "labels": {
            "standalone": "ours `resp_async.AsyncRespClient`",
            "cluster": "ours `resp_async.AsyncRespClient`",
        },
        "module": "rhailambda.resp_async",
        "top": "hiredis",
        "kind": "async",
    },
    "redis-sync": {
        "labels": {"standalone": "redis-py `Redis`", "cluster": "redis-py `RedisCluster`"},
        "module": "redis",
        "top": "redis",
        "kind": "sync",
    },
    "redis-async": {
        "labels": {
            "standalone": "redis-py `asyncio.Redis`",
            "cluster": "redis-py `asyncio.RedisCluster`",
        },
        "module": "redis.asyncio",
        "top": "redis",
        "kind": "async",
    },
    "glide-sync": {
        "labels": {
            "standalone": "glide-sync `GlideClient`",
            "cluster": "glide-sync `GlideClusterClient`",
        },
        "module": "glide_sync",
        "top": "glide_sync",
        "kind": "sync",
    },
    "glide-async": {
        "labels": {
            "standalone": "glide (asyncio) `GlideClient`",
            "cluster": "glide (asyncio) `GlideClusterClient`",
        },
        "module": "glide",
        "top": "glide",
        "kind": "async",
    },
}
ROW_ORDER = [
    ("ours-sync", "standalone"),
    ("ours-sync", "cluster"),
    ("ours-async", "standalone"),
    ("ours-async", "cluster"),
    ("redis-sync", "standalone"),
    ("redis-sync", "cluster"),
    ("redis-async", "standalone"),
    ("redis-async", "cluster"),
    ("glide-sync", "standalone"),
    ("glide-sync", "cluster"),
    ("glide-async", "standalone"),
    ("glide-async", "cluster"),
]


# --- the candidates: cold-start snippets and warm adapters ----------------------------
COLD: dict[str, dict[str, str]] = {
    "ours-sync": dict.fromkeys(
        ("standalone", "cluster"),  # the same code: cluster mode is found at connect
        """
from rhailambda.resp import from_url
c = from_url("redis://127.0.0.1:{port}")
r = c.execute("EVAL", S, 1, "cold")
""",
    ),
    "ours-async": dict.fromkeys(
        ("standalone", "cluster"),
        """
import asyncio
from rhailambda.redis_url import parse_url
from rhailambda.resp_async import AsyncRespClient
async def main():
    c = AsyncRespClient(parse_url("redis://127.0.0.1:{port}"))
    r = await c.execute("EVAL", S, 1, "cold")
    c.close()
    return r
r = asyncio.run(main())
""",
    ),
    "redis-sync": {
        "standalone": """
import redis
c = redis.Redis(host="127.0.0.1", port={port})
r = c.eval(S, 1, "cold")
""",
        "cluster": """
import redis
c = redis.RedisCluster(host="127.0.0.1", port={port})
r = c.eval(S, 1, "cold")
""",
    },
    "redis-async": {
        "standalone": """
import asyncio
import redis.asyncio
async def main():
    c = redis.asyncio.Redis(host="127.0.0.1", port={port})
    r = await c.eval(S, 1, "cold")
    await c.aclose()
    return r
r = asyncio.run(main())
""",
        "cluster": """
import asyncio
import redis.asyncio
async def main():
    c = redis.asyncio.RedisCluster(host="127.0.0.1", port={port})
    r = await c.eval(S, 1, "cold")
    await c.aclose()
    return r
r = asyncio.run(main())
""",
    },
    "glide-sync": {
        "standalone": """
from glide_sync import GlideClient, GlideClientConfiguration, NodeAddress
c = GlideClient.create(GlideClientConfiguration([NodeAddress("127.0.0.1", {port})]))
r = c.custom_command(["EVAL", S, "1", "cold"])
""",
        "cluster": """
from glide_sync import GlideClusterClient, GlideClusterClientConfiguration, NodeAddress
c = GlideClusterClient.create(
    GlideClusterClientConfiguration([NodeAddress("127.0.0.1", {port})]))
r = c.custom_command(["EVAL", S, "1", "cold"])
""",
    },
    "glide-async": {
        "standalone": """
import asyncio
from glide import GlideClient, GlideClientConfiguration, NodeAddress
async def main():
    c = await GlideClient.create(GlideClientConfiguration([NodeAddress("127.0.0.1", {port})]))
    r = await c.custom_command(["EVAL", S, "1", "cold"])
    await c.close()
    return r
r = asyncio.run(main())
""",
        "cluster": """
import asyncio
from glide import GlideClusterClient, GlideClusterClientConfiguration, NodeAddress
async def main():
    c = await GlideClusterClient.create(
        GlideClusterClientConfiguration([NodeAddress("127.0.0.1", {port})]))
    r = await c.custom_command(["EVAL", S, "1", "cold"])
    await c.close()
    return r
r = asyncio.run(main())
""",
    },
}

COLD_WRAPPER = """
import time
_t0 = time.perf_counter()
S = {script!r}
{body}
_t1 = time.perf_counter()
assert int(r) > 0, r
print((_t1 - _t0) * 1000)
"""


def _pipeline_commands(i: int) -> list[list[Any]]:
    return [["HSET", f"{{b}}:p{j}", "f", i] for j in range(10)]


def sync_adapter(name: str, mode: str, port: int, **opts: Any) -> dict[str, Callable[[], Any]]:
    """call (the write script), pipe (10 HSET), close; ``opts``: the safety probe's knobs."""
    script = opts.get("script", SCRIPT)
    keys = opts.get("keys", KEYS)
    if name == "ours-sync":
        from rhailambda.resp import from_url

        c = from_url(f"redis://127.0.0.1:{port}")
        scr = c.script(script)
        return {
            "call": lambda: scr(keys, ["v"]),
            "pipe": lambda: c.pipeline(_pipeline_commands(1)),
            "close": c.close,
        }
    if name == "redis-sync":
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kw: dict[str, Any] = {}
        if opts.get("no_retry"):
            kw["retry"] = Retry(NoBackoff(), 0)
        cls = redis.Redis if mode == "standalone" else redis.RedisCluster
        rc = cls(host="127.0.0.1", port=port, **kw)
        sha = rc.script_load(script)

        def pipe() -> Any:
            p = rc.pipeline(transaction=False) if mode == "standalone" else rc.pipeline()
            for cmd in _pipeline_commands(1):
                p.hset(cmd[1], cmd[2], cmd[3])
            return p.execute()

        return {
            "call": lambda: rc.evalsha(sha, len(keys), *keys, "v"),
            "pipe": pipe,
            "close": rc.close,
        }
    if name == "glide-sync":
        import glide_sync as g

        addr = [g.NodeAddress("127.0.0.1", port)]
        if mode == "standalone":
            gc: Any = g.GlideClient.create(g.GlideClientConfiguration(addr))
            batch_cls: Any = g.Batch
        else:
            gc = g.GlideClusterClient.create(g.GlideClusterClientConfiguration(addr))
            batch_cls = g.ClusterBatch
        gscr = g.Script(script)

        def gpipe() -> Any:
            b = batch_cls(is_atomic=False)
            for cmd in _pipeline_commands(1):
                b.hset(cmd[1], {cmd[2]: str(cmd[3])})
            return gc.exec(b, raise_on_error=True)

        return {
            "call": lambda: gc.invoke_script(gscr, keys=keys, args=["v"]),
            "pipe": gpipe,
            "close": gc.close,
        }
    raise ValueError(name)


async def async_adapter(
    name: str, mode: str, port: int, **opts: Any
) -> dict[str, Callable[[], Any]]:
    """call / pipe coroutines, ``task_call()`` -> a call for one of the 8 tasks, close."""
    script = opts.get("script", SCRIPT)
    keys = opts.get("keys", KEYS)
    if name == "ours-async":  # as the shim uses it: shared connections, a channel per taker
        from rhailambda.redis_url import parse_url
        from rhailambda.resp_async import AsyncRespClient, AsyncScript

        client = AsyncRespClient(parse_url(f"redis://127.0.0.1:{port}"))
        scr = AsyncScript(script)
        blocking = client.channel()  # BLPOP on its own connection, as the takers' BLMOVE

        async def task_call() -> Callable[[], Any]:
            return lambda: scr(client, keys, ["v"])

        async def oclose() -> None:
            client.close()

        return {
            "call": lambda: scr(client, keys, ["v"]),
            "pipe": lambda: client.round_trip(_pipeline_commands(1)),
            "task_call": task_call,
            "close": oclose,
            "blpop": lambda: blocking.execute("BLPOP", LIST_KEY, 1),
            "get": lambda: client.execute("GET", FRESH_KEY),
        }
    if name == "redis-async":
        import redis.asyncio as ra
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        kw: dict[str, Any] = {}
        if opts.get("no_retry"):
            kw["retry"] = Retry(NoBackoff(), 0)
        cls = ra.Redis if mode == "standalone" else ra.RedisCluster
        rc = cls(host="127.0.0.1", port=port, **kw)
        sha = await rc.script_load(script)

        async def pipe() -> Any:
            p = rc.pipeline(transaction=False) if mode == "standalone" else rc.pipeline()
            for cmd in _pipeline_commands(1):
                p.hset(cmd[1], cmd[2], cmd[3])
            return await p.execute()

        async def rtask_call() -> Callable[[], Any]:
            return lambda: rc.evalsha(sha, len(keys), *keys, "v")

        return {
            "call": lambda: rc.evalsha(sha, len(keys), *keys, "v"),
            "pipe": pipe,
            "task_call": rtask_call,
            "close": rc.aclose,
            "blpop": lambda: rc.blpop([LIST_KEY], timeout=1),
            "get": lambda: rc.get(FRESH_KEY),
        }
    if name == "glide-async":
        import glide as g

        addr = [g.NodeAddress("127.0.0.1", port)]
        if mode == "standalone":
            gc: Any = await g.GlideClient.create(g.GlideClientConfiguration(addr))
            batch_cls: Any = g.Batch
        else:
            gc = await g.GlideClusterClient.create(g.GlideClusterClientConfiguration(addr))
            batch_cls = g.ClusterBatch
        gscr = g.Script(script)

        async def gpipe() -> Any:
            b = batch_cls(is_atomic=False)
            for cmd in _pipeline_commands(1):
                b.hset(cmd[1], {cmd[2]: str(cmd[3])})
            return await gc.exec(b, raise_on_error=True)

        async def gtask_call() -> Callable[[], Any]:
            return lambda: gc.invoke_script(gscr, keys=keys, args=["v"])

        return {
            "call": lambda: gc.invoke_script(gscr, keys=keys, args=["v"]),
            "pipe": gpipe,
            "task_call": gtask_call,
            "close": gc.close,
            "blpop": lambda: gc.blpop([LIST_KEY], 1.0),
            "get": lambda: gc.get(FRESH_KEY),
        }
    raise ValueError(name)


# --- measurements (inside a worker process) --------------------------------------------
def _percentiles(samples_ns: list[int]) -> dict[str, float]:
    s = sorted(samples_ns)
    return {
        "p50_us": s[len(s) // 2] / 1000,
        "p99_us": s[min(len(s) - 1, len(s) * 99 // 100)] / 1000,
    }


def warm_sync(name: str, mode: str, port: int, n: int) -> dict[str, Any]:
    a = sync_adapter(name, mode, port)
    out: dict[str, Any] = {}
    for what in ("call", "pipe"):
        f = a[what]
        for _ in range(max(20, n // 10)):
            f()
        samples = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t = clock()
            f()
            samples.append(clock() - t)
        out[what] = _percentiles(samples)
    a["close"]()
    return out


async def warm_async(name: str, mode: str, port: int, n: int, seconds: float) -> dict[str, Any]:
    a = await async_adapter(name, mode, port)
    out: dict[str, Any] = {}
    for what in ("call", "pipe"):
        f = a[what]
        for _ in range(max(20, n // 10)):
            await f()
        samples = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t = clock()
            await f()
            samples.append(clock() - t)
        out[what] = _percentiles(samples)
    calls = [await a["task_call"]() for _ in range(8)]
    for c in calls:  # connections open, scripts known
        await c()
    stop = time.perf_counter() + seconds
    counts = [0] * 8

    async def run(i: int) -> None:
        call = calls[i]
        while time.perf_counter() < stop:
            await call()
            counts[i] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(8)))
    out["tasks8_per_s"] = sum(counts) / (time.perf_counter() - t0)
    await a["close"]()
    return out


# --- the safety probes ----------------------------------------------------------------
class KillProxy:
    """TCP proxy to Redis; ``arm()``: the next client write holding EVALSHA is forwarded,
    Redis's reply dropped and both sockets closed (the script ran, the reply is lost)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.kills = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self) -> None:
        self.armed.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            dropping = threading.Event()
            threading.Thread(target=self._up, args=(client, server, dropping), daemon=True).start()
            threading.Thread(
                target=self._down, args=(server, client, dropping), daemon=True
            ).start()

    def _up(self, client: socket.socket, server: socket.socket, dropping: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.armed.is_set() and b"EVALSHA" in data.upper():
                    self.armed.clear()
                    dropping.set()
                    server.sendall(data)
                    time.sleep(0.05)  # Redis runs the script; its reply is dropped
                    self.kills += 1
                    for s in (client, server):
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_RDWR)
                        s.close()
                    return
                server.sendall(data)

    def _down(
        self, server: socket.socket, client: socket.socket, dropping: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if dropping.is_set():
                    continue
                client.sendall(data)

    def close(self) -> None:
        self.listener.close()


def _admin(port: int) -> Any:
    from rhailambda.resp import from_url

    return from_url(f"redis://127.0.0.1:{port}")


def _outcome(exc: BaseException | None, value: Any) -> str:
    if exc is None:
        return f"returned {value!r}"
    return f"raised {type(exc).__name__}"


def safety_resend(name: str, mode: str, port: int, no_retry: bool) -> dict[str, Any]:
    """Run the write script once through the kill proxy; how many times did it run?"""
    admin = _admin(port)
    proxy = KillProxy(port)
    if mode == "cluster":  # the slot map must name the proxy, or the client bypasses it
        admin.execute("CONFIG", "SET", "cluster-announce-port", proxy.port)
    admin.execute("SET", SAFETY_KEY, 0)
    opts = {"script": WRITE_SCRIPT, "keys": [SAFETY_KEY], "no_retry": no_retry}
    exc: BaseException | None = None
    value: Any = None
    try:
        if CANDIDATES[name]["kind"] == "sync":
            a = sync_adapter(name, mode, proxy.port, **opts)
            a["call"]()  # connected, script cached: counter 1
            proxy.arm()
            t0 = time.perf_counter()
            try:
                value = a["call"]()
            except Exception as e:
                exc = e
            elapsed = time.perf_counter() - t0
        else:

            async def go() -> float:
                nonlocal exc, value
                a = await async_adapter(name, mode, proxy.port, **opts)
                await a["call"]()
                proxy.arm()
                t0 = time.perf_counter()
                try:
                    value = await a["call"]()
                except Exception as e:
                    exc = e
                elapsed = time.perf_counter() - t0
                await asyncio.sleep(0.5)  # a retry in the background would show by now
                with contextlib.suppress(Exception):
                    await a["close"]()
                return elapsed

            elapsed = asyncio.run(go())
        time.sleep(0.5)
        runs = int(admin.execute("GET", SAFETY_KEY)) - 1
    finally:
        if mode == "cluster":
            admin.execute("CONFIG", "SET", "cluster-announce-port", 0)
        proxy.close()
    return {
        "killed": proxy.kills,
        "runs": runs,
        "outcome": _outcome(exc, value),
        "error": "" if exc is None else str(exc)[:160],
        "ms": elapsed * 1000,
    }


async def safety_cancel(name: str, mode: str, port: int, rounds: int = 5) -> dict[str, Any]:
    """Cancel a BLPOP after 50 ms, push an element, then GET: its own reply? element kept?"""
    admin = _admin(port)
    admin.execute("SET", FRESH_KEY, "fresh")
    a = await async_adapter(name, mode, port)
    await a["get"]()
    admin.execute("DEL", LIST_KEY)
    pending = asyncio.ensure_future(a["blpop"]())  # not cancelled: times out after 1 s
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    try:
        await a["get"]()
        during = f"{(time.perf_counter() - t0) * 1000:.0f}"
    except Exception as e:
        during = f"{type(e).__name__} after {(time.perf_counter() - t0) * 1000:.0f}"
    with contextlib.suppress(BaseException):
        await pending
    wrong, lost, waits = 0, 0, []
    for i in range(rounds):
        admin.execute("DEL", LIST_KEY)
        task = asyncio.ensure_future(a["blpop"]())
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        admin.execute("LPUSH", LIST_KEY, f"stale-{i}")
        t0 = time.perf_counter()
        reply = await a["get"]()
        waits.append((time.perf_counter() - t0) * 1000)
        if isinstance(reply, bytes):
            reply = reply.decode()
        if reply != "fresh":
            wrong += 1
        await asyncio.sleep(0.05)
        if admin.execute("LLEN", LIST_KEY) != 1:
            lost += 1
        await asyncio.sleep(1.1)  # any abandoned BLPOP has timed out
    await a["close"]()
    return {
        "rounds": rounds,
        "wrong_reply": wrong,
        "element_lost": lost,
        "next_cmd_ms": statistics.median(waits),
        "during_blpop": during,
    }


# --- the harness ----------------------------------------------------------------------
def _servers() -> dict[str, Any]:
    """A standalone redis-server and a one-node cluster (the tests' fixtures, ports <= 55535)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from redis_cluster import ClusterUnderTest
    from redis_server import RedisServer

    return {
        "standalone": RedisServer().start(),
        "cluster": ClusterUnderTest("redis", masters=1, replicas_per_master=0).start(),
    }


def _port(server: Any) -> int:
    return int(server.seed.port if hasattr(server, "seed") else server.port)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    paths = [str(REPO / "src"), str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _wall(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(args, env=_env(), capture_output=True, text=True, check=False)
    wall = (time.perf_counter() - t0) * 1000
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed")
    return wall, p.stdout


def installed(name: str) -> bool:
    return importlib.util.find_spec(CANDIDATES[name]["top"]) is not None


def compile_bytecode() -> None:
    import compileall

    dirs = [REPO / "src" / "rhailambda"]
    for top in ("redis", "glide", "glide_sync", "glide_shared", "hiredis", "google"):
        spec = importlib.util.find_spec(top)
        if spec and spec.submodule_search_locations:
            dirs += [Path(p) for p in spec.submodule_search_locations]
    for d in dirs:
        compileall.compile_dir(str(d), quiet=1)


def measure_import(module: str, runs: int) -> float:
    _wall([sys.executable, "-c", f"import {module}"])  # caches warm
    base = statistics.median(_wall([sys.executable, "-c", "pass"])[0] for _ in range(runs))
    full = statistics.median(
        _wall([sys.executable, "-c", f"import {module}"])[0] for _ in range(runs)
    )
    return full - base


def measure_cold(name: str, mode: str, port: int, runs: int) -> dict[str, float]:
    body = COLD[name][mode].format(port=port)
    code = COLD_WRAPPER.format(script=COLD_SCRIPT, body=body)
    _wall([sys.executable, "-c", code])
    inner, wall = [], []
    for _ in range(runs):
        w, out = _wall([sys.executable, "-c", code])
        wall.append(w)
        inner.append(float(out.strip().splitlines()[-1]))
    return {"in_process_ms": statistics.median(inner), "wall_ms": statistics.median(wall)}


def run_worker(args: list[str]) -> Any:
    _, out = _wall([sys.executable, "-m", "bench.clients", "--worker", *args])
    return json.loads(out.strip().splitlines()[-1])


def worker_main(ns: argparse.Namespace) -> None:
    name, mode, port, task = ns.worker
    port = int(port)
    kind = CANDIDATES[name]["kind"]
    if task == "warm":
        if kind == "sync":
            result = warm_sync(name, mode, port, ns.n)
        else:
            result = asyncio.run(warm_async(name, mode, port, ns.n, ns.seconds))
    elif task in ("resend", "resend-noretry"):
        result = safety_resend(name, mode, port, no_retry=task == "resend-noretry")
    elif task == "cancel":
        result = asyncio.run(safety_cancel(name, mode, port))
    else:
        raise ValueError(task)
    print(json.dumps(result))


def _fmt(x: float | None, digits: int = 0) -> str:
    return "" if x is None else f"{x:,.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| client | server | import ms | cold: import+connect+EVAL ms (process wall) "
        "| EVALSHA p50 / p99 µs | 10 HSET pipelined p50 / p99 µs | 8 tasks, EVALSHA/s |"
    )
    lines = [head, "|---|---|--:|--:|--:|--:|--:|"]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['label']} | {r['mode']} | {r['note']} | | | | |")
            continue
        w = r["warm"]
        lines.append(
            f"| {r['label']} | {r['mode']} | {_fmt(r['import_ms'])} "
            f"| {_fmt(r['cold']['in_process_ms'])} ({_fmt(r['cold']['wall_ms'])}) "
            f"| {_fmt(w['call']['p50_us'])} / {_fmt(w['call']['p99_us'])} "
            f"| {_fmt(w['pipe']['p50_us'])} / {_fmt(w['pipe']['p99_us'])} "
            f"| {_fmt(w.get('tasks8_per_s'))} |"
        )
    return "\n".join(lines)


def safety_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| client | server | claim re-sent? default | with retries off | "
        "cancelled BLPOP: wrong replies / elements lost / next command ms "
        "| GET while a BLPOP waits, ms |",
        "|---|---|---|---|---|--:|",
    ]
    for r in rows:

        def one(x: dict[str, Any] | None) -> str:
            if x is None:
                return "n/a"
            if "failed" in x:
                return f"probe failed: {x['failed']}"
            return f"ran {x['runs']}x ({x['outcome']}, {x['ms']:.0f} ms)"

        c = r.get("cancel")
        during = "" if c is None or "failed" in c else c["during_blpop"]
        cancel = (
            "n/a (sync)"
            if c is None
            else (
                f"probe failed: {c['failed']}"
                if "failed" in c
                else f"{c['wrong_reply']}/{c['rounds']} / {c['element_lost']}/{c['rounds']} "
                f"/ {c['next_cmd_ms']:.0f}"
            )
        )
        lines.append(
            f"| {r['label']} | {r['mode']} | {one(r['default'])} "
            f"| {one(r.get('noretry'))} | {cancel} | {during} |"
        )
    return "\n".join(lines)


def _try(f: Callable[[list[str]], Any], args: list[str]) -> Any:
    try:
        return f(args)
    except Exception as e:
        return {"failed": str(e)[:200]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1/4 of the samples, 3 runs, 0.5 s")
    ap.add_argument("--no-safety", action="store_true")
    ap.add_argument("--write", action="store_true", help="update CLIENTS.md even if --quick")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=2000, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=2.0, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.worker:
        worker_main(ns)
        return
    runs, n, seconds = (3, 500, 0.5) if ns.quick else (7, 2000, 2.0)
    compile_bytecode()
    servers = _servers()
    rows: list[dict[str, Any]] = []
    safety: list[dict[str, Any]] = []
    imports: dict[str, float] = {}
    try:
        for name, mode in ROW_ORDER:
            cand = CANDIDATES[name]
            label = cand["labels"].get(mode, cand["labels"]["standalone"])
            if not installed(name):
                rows.append({"label": label, "mode": mode, "note": "not installed"})
                continue
            port = _port(servers[mode])
            print(f"# {label}, {mode}", file=sys.stderr, flush=True)
            row: dict[str, Any] = {"label": label, "mode": mode}
            try:
                if cand["module"] not in imports:
                    imports[cand["module"]] = measure_import(cand["module"], runs)
                row["import_ms"] = imports[cand["module"]]
                row["cold"] = measure_cold(name, mode, port, runs)
                row["warm"] = run_worker(
                    [name, mode, str(port), "warm", "--n", str(n), "--seconds", str(seconds)]
                )
            except Exception as e:
                row = {"label": label, "mode": mode, "note": f"failed: {e}"[:120]}
            rows.append(row)
            if ns.no_safety or "note" in row:
                continue
            s: dict[str, Any] = {"label": label, "mode": mode}
            s["default"] = _try(run_worker, [name, mode, str(port), "resend"])
            if name.startswith("redis"):
                s["noretry"] = _try(run_worker, [name, mode, str(port), "resend-noretry"])
            if cand["kind"] == "async":
                s["cancel"] = _try(run_worker, [name, mode, str(port), "cancel"])
            safety.append(s)
        package_ms = measure_import("rhailambda", runs)
    finally:
        for server in servers.values():
            server.close()
    import platform

    versions = []
    for dist in ("redis", "valkey-glide", "valkey-glide-sync", "hiredis"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions.append(f"{dist} {version(dist)}")
    redis_v = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2]
    meta = (
        f"Python {platform.python_version()}, redis-server {redis_v.removeprefix('v=')}, "
        f"{', '.join(versions)}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} "
        f"at the end; {'--quick' if ns.quick else 'full run'} "
        f"({runs} process runs, {n} samples, {seconds:g} s per throughput run)."
    )
    out = f"{meta}\n\n{table(rows)}\n"
    if "rhailambda.resp" in imports:
        out += (
            f"\nOf ours' import, `import rhailambda` alone (the package: protocol, json, "
            f"dataclasses; the function imports it whatever the client) is "
            f"{package_ms:.0f} ms.\n"
        )
    if safety:
        out += f"\n{safety_table(safety)}\n"
    print(out)
    if (not ns.quick or ns.write) and not ns.no_write:
        text = MD.read_text() if MD.exists() else f"{BEGIN}\n{END}\n"
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        MD.write_text(f"{head}{BEGIN}\n{out}{END}{tail}")


if __name__ == "__main__":
    main()
