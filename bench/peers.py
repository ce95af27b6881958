"""The peers' side of the throughput comparison: start their workers, run their clients.

Every peer runs in ``.venv-bench`` (see bench/peers/requirements.txt) against the
same redis-server as ours, with the same number of worker processes, one
thread each where the peer has threads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import REPO, BenchConfig
from bench.infra import run_json

__all__ = ["PEER_NOTES", "PeerWorkers", "peer_settings"]

PEER_DIR = REPO / "bench" / "peers"


def python(cfg: BenchConfig, peer: str) -> str:
    """arq has a venv of its own: arq 0.26 pins redis<6, kombu needs redis>=6.4."""
    if peer == "arq":
        return str(cfg.peer_python.parent.parent.with_name(".venv-bench-arq") / "bin/python")
    return str(cfg.peer_python)


def _bin(cfg: BenchConfig, name: str) -> str:
    return str(cfg.peer_python.parent / name)


def peer_settings(cfg: BenchConfig, peer: str) -> list[list[str]]:
    """The worker command lines of ``peer`` (one per process for peers without a pool)."""
    p = str(cfg.processes)
    if peer in ("dramatiq", "dramatiq-1t"):
        threads = "1" if peer == "dramatiq-1t" else "8"  # 8: dramatiq's default
        return [[_bin(cfg, "dramatiq"), "peer_dramatiq", "--processes", p, "--threads", threads]]
    if peer == "celery":
        return [
            [
                _bin(cfg, "celery"),
                "-A",
                "peer_celery",
                "worker",
                "-P",
                "prefork",
                "-c",
                p,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ]
        ]
    if peer == "arq":
        return [[python(cfg, peer), "peer_arq.py", "worker"] for _ in range(cfg.processes)]
    if peer == "rq":
        return [
            [
                _bin(cfg, "rq"),
                "worker-pool",
                "-n",
                p,
                "-w",
                "rq.worker.SimpleWorker",
                "-l",
                "WARNING",
                "--url",
                "{url}",
                "default",
            ]
        ]
    raise ValueError(peer)


PEER_NOTES = {
    "dramatiq": "RedisBroker + Results(RedisBackend), `--processes P --threads 8` (its default); "
    "client: `actor.send` per task, `message.get_result(block=True)`",
    "dramatiq-1t": "as dramatiq but `--threads 1` (one thread per process, like our workers)",
    "celery": "Redis broker + Redis result backend, prefork `-c P`, prefetch multiplier 16, "
    "no gossip/mingle/heartbeat; client: `task.delay` per task, `ResultSet.get` (native join)",
    "arq": "P worker processes (`arq.run_worker`, logging at WARNING), max_jobs 100, "
    "poll_delay 10 ms, keep_result 1 h; "
    "client: `enqueue_job` 200 at a time (asyncio.gather), `job.result(poll_delay=5 ms)`",
    "rq": "`rq worker-pool -n P -w rq.worker.SimpleWorker` (no fork per job); "
    "client: `Queue.enqueue_many` (pipelined, 1,000 a call), `job.latest_result(timeout)`",
}


@dataclass
class PeerWorkers:
    """The worker processes of one peer, in their own process groups."""

    cfg: BenchConfig
    peer: str
    url: str
    log: Path
    procs: list[subprocess.Popen[bytes]] | None = None

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BENCH_REDIS_URL": self.url,
            "PYTHONPATH": str(PEER_DIR),
            "PYTHONUNBUFFERED": "1",
        }

    def start(self) -> PeerWorkers:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.procs = []
        with self.log.open("ab") as log:
            for cmd in peer_settings(self.cfg, self.peer):
                cmd = [c.replace("{url}", self.url) for c in cmd]
                self.procs.append(
                    subprocess.Popen(
                        cmd,
                        cwd=PEER_DIR,
                        env=self._env(),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        start_new_session=True,
                    )
                )
        return self

    def check(self) -> None:
        for proc in self.procs or []:
            if proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.peer} worker exited {proc.returncode}: {tail}")

    def client(self, n: int, timeout_s: float = 900.0) -> dict[str, Any]:
        self.check()
        return run_json(
            [python(self.cfg, self.peer), f"peer_{self.peer.split('-')[0]}.py", "client", str(n)],
            env=self._env(),
            timeout_s=timeout_s,
            cwd=PEER_DIR,
        )

    def burst(self, n: int, timeout_s: float = 900.0) -> dict[str, Any]:
        """``n`` tasks enqueued while no worker runs, then the workers started: the
        client's ``burst`` JSON plus ``elapsed_s``, from the workers' start to the last
        result (wall clock, one machine). Leaves the workers running (``stop`` them)."""
        if self.procs:
            raise RuntimeError(f"{self.peer}: a burst needs its workers not started yet")
        cmd = [python(self.cfg, self.peer), f"peer_{self.peer.split('-')[0]}.py"]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            client = subprocess.Popen(
                [*cmd, "client", "burst", str(n)],
                cwd=PEER_DIR,
                env=self._env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        killer = threading.Timer(timeout_s, client.kill)
        killer.start()
        try:
            assert client.stdin is not None and client.stdout is not None
            enqueued = _json_line(client.stdout.readline(), f"{self.peer} client (enqueue)")
            started_at = time.time()
            self.start()
            client.stdin.write("go\n")
            client.stdin.flush()
            while True:
                try:
                    out, _ = client.communicate(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    self.check()  # a worker that died: fail now, not at the timeout
        finally:
            killer.cancel()
            if client.poll() is None:
                client.kill()
                client.wait(timeout=5)
        if client.returncode != 0:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.peer} burst client exited {client.returncode}: {tail}")
        done = _json_line(out.strip().splitlines()[-1] if out.strip() else "", self.peer)
        return {**enqueued, **done, "elapsed_s": done["done_at"] - started_at}

    def stop(self) -> None:
        procs, self.procs = self.procs or [], None
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the pool's children too
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def __enter__(self) -> PeerWorkers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _json_line(line: str, who: str) -> dict[str, Any]:
    if not line.startswith("{"):
        raise RuntimeError(f"{who} printed no JSON line: {line[-500:]!r}")
    result: dict[str, Any] = json.loads(line)
    return result


def commands(cfg: BenchConfig, peer: str) -> Sequence[str]:
    return [" ".join(c) for c in peer_settings(cfg, peer)]
