"""The local pool's template process: it imports the handler once, then forks workers.

A local worker started by ``exec`` imports everything again (80-230 ms: rhai_py,
powertools, the function and its extensions); one forked from a process that has
imported them is ready in a few ms. The template (``python -m
rhailambda.shim.forkserver <control fd> <handler> [function name] [memory MB]``)
lives as long as the pool; the pool scales its workers to zero, not the template.

Why our own and not multiprocessing's ``forkserver``: that one answers a
``Process.start()`` in 13-39 ms here (median 18: it pickles the process object,
re-runs ``spawn.prepare`` and re-imports the parent's ``__main__`` in every child),
against 3 ms for a bare fork of a pre-imported process; it is one server per
interpreter, with the parent's environment at the time it started, while every
:class:`~rhailambda.shim.local_backend.LocalInvoker` has its own handler and
environment; and it ignores a preload that fails to import, where we must report
it. The measurements: ``bench/README.md`` (latency, "pool scaled to zero").

Fork safety. The template imports the handler module (and so everything it
imports: rhai_py, the extension modules), then drops that module from
``sys.modules``: the objects its body built (settings, Redis clients, the
extensions, the engine) are garbage, and each worker imports the module again
after the fork (its body alone, ~4 ms), so clients and engine state are made in
the worker and shared with nobody. Before it serves, the template checks that it
has one thread and no socket but its control socket (a handler that starts a
thread or opens a connection at import cannot be forked safely): if not, it
says why and exits, and the pool starts workers by ``exec`` as before. It never
creates an event loop; a worker closes the template's control socket and
signal plumbing first thing. The template's stdin is a pipe the pool never writes
(a handler that reads stdin at import waits there, as it did in an exec'd worker,
whose stdin was its request pipe); a forked worker's stdin is its request pipe.

Control channel: a ``SOCK_SEQPACKET`` socket pair, one JSON object per message.
The pool sends ``{"op": "fork"}`` with two file descriptors (the worker's request
pipe's read end and its response pipe's write end, ``SCM_RIGHTS``); the template
forks and answers ``{"forked": pid}`` (or ``{"error": ...}``); it reaps its
children and reports ``{"exited": pid, "code": c}`` (negative: killed by that
signal). At start it sends ``{"ready": true, "pid": p}``, ``{"ready": false,
"error": ...}`` (the handler does not import) or ``{"ready": false, "unsafe":
...}``. EOF on the control socket: the pool is gone, the template exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import selectors
import signal
import socket
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from rhailambda.errors import InvocationError
from rhailambda.shim.local_worker import load_handler, serve

__all__ = ["ForkServer", "ForkedProcess", "main"]

log = logging.getLogger("rhailambda.shim.local")
_MAX_MESSAGE = 65536
_KILLED = -signal.SIGKILL


# --- the template process ------------------------------------------------------------
def _unsafe(control_fd: int) -> str | None:
    """Why forking this process would share state with the workers, or None."""
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:
        return f"the handler's import left {threads - 1} thread(s) running"
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError, ValueError):
            target = os.readlink(f"/proc/self/fd/{name}")
            if int(name) != control_fd and (
                target.startswith("socket:") or target == "anon_inode:[eventpoll]"
            ):
                return f"the handler's import left a socket or event loop open (fd {name})"
    return None


def _send(sock: socket.socket, message: Mapping[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def _child(
    closing: Sequence[socket.socket | selectors.BaseSelector],
    wake: tuple[int, int],
    fds: Sequence[int],
    argv: Sequence[str],
) -> None:
    """The forked worker: drop the template's plumbing, then serve like local_worker."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for plumbing in closing:
            plumbing.close()
        for fd in wake:
            os.close(fd)
        os.dup2(fds[0], 0)  # stdin is the request pipe, as in an exec'd worker
        inp = os.fdopen(fds[0], "rb", buffering=0)
        out = os.fdopen(fds[1], "wb", buffering=0)
        name = argv[1] if len(argv) > 1 else "rhailambda"
        memory_mb = int(argv[2]) if len(argv) > 2 else 1024
        code = serve(argv[0], inp, out, function_name=name, memory_mb=memory_mb)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)  # never return into the template's loop


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m rhailambda.shim.forkserver <control fd> <handler path> "
              "[function name] [memory MB]", file=sys.stderr)  # fmt: skip
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool decides when we stop
    os.dup2(2, 1)  # prints (ours, the handler's at import, the workers') go to stderr
    control_fd = int(argv[1])
    sock = socket.socket(fileno=control_fd)
    module = argv[2].replace(":", ".").rpartition(".")[0]
    try:
        load_handler(argv[2])
    except BaseException as exc:
        _send(sock, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    sys.modules.pop(module, None)  # each worker runs its body again, after the fork
    gc.collect()
    # What is left (the imported modules) moves out of the collector's reach: a
    # worker's collections then do not touch it, so its pages stay shared.
    gc.freeze()
    unsafe = _unsafe(control_fd)
    if unsafe is not None:
        _send(sock, {"ready": False, "unsafe": unsafe})
        return 1
    wake = os.pipe()
    os.set_blocking(wake[1], False)
    signal.set_wakeup_fd(wake[1])
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the select below
    _send(sock, {"ready": True, "pid": os.getpid()})
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake[0], selectors.EVENT_READ)
    try:
        return _serve(sock, selector, wake, argv)
    except ConnectionError:  # the pool is gone (its end reset)
        return 0


def _serve(
    sock: socket.socket, selector: selectors.BaseSelector, wake: tuple[int, int], argv: list[str]
) -> int:
    while True:
        for key, _ in selector.select():
            if key.fileobj != sock:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake[0], 4096)
                _reap(sock)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 2)
            except InterruptedError:
                continue
            if not data:
                return 0  # the pool is gone; the workers stop at EOF on their pipes
            try:
                pid = os.fork() if len(fds) == 2 else -1
                if pid == 0:
                    _child((selector, sock), wake, fds, argv[2:])
                _send(sock, {"forked": pid} if pid > 0 else {"error": "expected two fds"})
            except OSError as exc:
                _send(sock, {"error": f"fork failed: {exc}"})
            finally:
                for fd in fds:
                    os.close(fd)


# --- the pool's side -----------------------------------------------------------------
class ForkedProcess:
    """A worker forked by the template: the parts of ``asyncio.subprocess.Process``
    the pool uses. Its exit code comes from the template, which reaps it."""

    def __init__(
        self,
        pid: int,
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        exit_code: asyncio.Future[int],
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self._exit = exit_code
        exit_code.add_done_callback(lambda _: stdin.close())

    @property
    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    def kill(self) -> None:
        # Not reaped while its exit is unreported (the template reaps, then reports),
        # so the pid is still this process.
        if not self._exit.done():
            os.kill(self.pid, signal.SIGKILL)

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)


class ForkServer:
    """The pool's handle on its template process."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket, pid: int) -> None:
        self.proc = proc
        self.pid = pid
        self._sock = sock
        self._replies: deque[asyncio.Future[dict[str, Any]]] = deque()
        self._children: dict[int, asyncio.Future[int]] = {}
        self._lock = asyncio.Lock()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, argv: Sequence[str], env: Mapping[str, str], *, timeout_s: float
    ) -> ForkServer | None:
        """Start a template for ``argv`` (handler, function name, memory MB).

        None when the handler cannot be forked safely (logged: the pool then starts
        workers by exec); InvocationError when the handler does not import."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rhailambda.shim.forkserver", str(theirs.fileno()), *argv,
                stdin=asyncio.subprocess.PIPE, pass_fds=(theirs.fileno(),), env=dict(env),
            )  # fmt: skip
        finally:
            theirs.close()
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(ours, _MAX_MESSAGE), timeout_s)
            ready = json.loads(data) if data else {"error": "it exited before it was ready"}
        except BaseException:
            ours.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if ready.get("ready"):
            return cls(proc, ours, int(ready["pid"]))
        ours.close()
        await proc.wait()
        if "unsafe" in ready:
            log.warning("local workers start by exec, not from a template: %s", ready["unsafe"])
            return None
        raise InvocationError(f"local worker failed to import the handler: {ready.get('error')}")

    @property
    def alive(self) -> bool:
        return not self._reader.done()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(self._sock, _MAX_MESSAGE):
                message = json.loads(data)
                if "exited" in message:
                    done = self._children.pop(int(message["exited"]), None)
                    if done is not None and not done.done():
                        done.set_result(int(message["code"]))
                    continue
                if "forked" in message:
                    self._children[int(message["forked"])] = loop.create_future()
                if self._replies:
                    reply = self._replies.popleft()
                    if not reply.done():
                        reply.set_result(message)
        except (OSError, ValueError) as exc:
            log.warning("the local pool's template is unreadable: %s", exc)
        finally:
            self._lost()

    def _lost(self) -> None:
        """The template is gone: its orphans (reparented, unreported) are killed."""
        for reply in self._replies:
            if not reply.done():
                reply.set_exception(InvocationError("the local pool's template exited"))
        for pid, done in self._children.items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not done.done():
                done.set_result(_KILLED)
        self._children.clear()

    async def fork(self, *, timeout_s: float) -> ForkedProcess:
        """A new worker, its pipes connected to this process; it still has to say ready."""
        loop = asyncio.get_running_loop()
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        # File objects own our ends: closing one twice is harmless, unlike an fd.
        ours = (os.fdopen(req_w, "wb", 0), os.fdopen(resp_r, "rb", 0))
        transports: list[asyncio.BaseTransport] = []
        try:
            async with self._lock:
                if not self.alive:
                    raise InvocationError("the local pool's template exited")
                reply: asyncio.Future[dict[str, Any]] = loop.create_future()
                self._replies.append(reply)
                socket.send_fds(self._sock, [b'{"op":"fork"}'], [req_r, resp_w])
                got = await asyncio.wait_for(asyncio.shield(reply), timeout_s)
            if "forked" not in got:
                raise InvocationError(f"the local pool's template: {got.get('error')}")
            pid = int(got["forked"])
            exit_code = self._children.get(pid)
            if exit_code is None:  # already reported gone
                exit_code = loop.create_future()
                exit_code.set_result(_KILLED)
            reader = asyncio.StreamReader()
            read_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), ours[1]
            )
            transports.append(read_transport)
            transport, protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, ours[0]
            )
            transports.append(transport)
            writer = asyncio.StreamWriter(transport, protocol, None, loop)
            return ForkedProcess(pid, writer, reader, exit_code)
        except BaseException:
            # A worker forked for us sees EOF on its request pipe and exits by itself.
            for t in transports:
                t.close()
            for f in ours:
                f.close()
            raise
        finally:
            os.close(req_r)  # the worker's ends: the template passed them on
            os.close(resp_w)

    def idle_memory_kb(self) -> dict[str, int]:
        """The template's RSS and PSS in kB (``/proc/<pid>/smaps_rollup``)."""
        out: dict[str, int] = {}
        with open(f"/proc/{self.pid}/smaps_rollup") as rollup:
            for line in rollup:
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss"):
                    out[key.lower() + "_kb"] = int(value.split()[0])
        return out

    async def aclose(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._sock.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=2)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
