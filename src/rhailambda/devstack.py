"""``make run``: Redis (unless REDIS_URL names one) + the shim on the local backend.

Submits every script in ``examples/`` through the client, prints the replies, then
keeps serving until Ctrl-C, when it stops the shim gracefully and then Redis.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rhailambda.client import Client
from rhailambda.errors import ReplyTimeoutError
from rhailambda.settings import Env, redact_url

__all__ = ["main"]


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _start_redis(run_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("redis-server not found: `make setup` installs it (apt-get install redis-server)")
    port = _free_port(6379)
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(run_dir),
            "--logfile",
            str(run_dir / "redis.log"),
        ],
        start_new_session=True,  # Ctrl-C reaches the shim, not Redis: it goes last
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"redis-server did not start on port {port}: see {run_dir / 'redis.log'}")


def _cli() -> str:
    """How to call the ``rhailambda`` command from here (the venv's, if not on PATH)."""
    if shutil.which("rhailambda"):
        return "rhailambda"
    local = Path(sys.executable).parent / "rhailambda"
    try:
        return str(local.relative_to(Path.cwd()))
    except ValueError:
        return str(local)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    env = Env(os.environ)
    parser = argparse.ArgumentParser(prog="rhailambda-devstack")
    parser.add_argument("--examples", type=Path, default=Path("examples"))
    parser.add_argument("--worker", default="worker1")
    parser.add_argument("--run-dir", type=Path, default=Path(".run"))
    args = parser.parse_args(argv)
    # A process manager, `timeout` or a closed terminal stops us with SIGTERM or SIGHUP:
    # clean up as on Ctrl-C, so no redis-server, shim or worker is left behind.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)

    redis_proc = None
    url = env.optional_str("REDIS_URL")
    if url is None:
        redis_proc, url = _start_redis(args.run_dir)
        print(f"started redis-server at {url}")
    else:
        print(f"using Redis at {redact_url(url)}")
    shim_env = dict(os.environ, REDIS_URL=url, POWERTOOLS_METRICS_DISABLED="true")
    shim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rhailambda.cli",
            "shim",
            "--worker",
            args.worker,
            "--backend",
            "local",
        ],
        env=shim_env,
    )
    try:
        scripts = sorted(args.examples.glob("*.rhai"))
        with Client(url) as client:
            ids = {
                client.submit(
                    path.read_text(), worker_id=args.worker, context_id="alice", caller_id="alice"
                ): path.name
                for path in scripts
            }
            try:
                replies = client.wait_many(list(ids), timeout_s=60)
            except ReplyTimeoutError as exc:
                print(f"no reply: {exc}")
                replies = {}
            for task_id, name in ids.items():
                reply = replies.get(task_id)
                if reply is not None:
                    shown = reply.output if reply.ok else reply.error
                    print(f"{name:<24} {reply.status:<10} {shown}")
        print(
            f"\nserving worker queue {args.worker!r}; try:\n"
            f"  {_cli()} submit --redis-url {redact_url(url)} --worker {args.worker} "
            f"--context alice --caller alice --script '40 + 2' --wait\n"
            "Ctrl-C to stop."
        )
        shim.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if shim.poll() is None:
            shim.send_signal(signal.SIGTERM)
            try:
                shim.wait(timeout=30)
            except subprocess.TimeoutExpired:
                shim.kill()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
