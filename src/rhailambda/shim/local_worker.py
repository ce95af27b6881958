"""A local worker process: one warm "Lambda environment" for the local backend.

Run as ``python -m rhailambda.shim.local_worker <handler path>``. It imports the
handler once (the cold start), answers ``{"ready": true}``, then loops: read a
request frame, call ``handler(event, context)``, write the response frame.
Frames are a 4-byte big-endian length and a JSON body, on stdin / stdout; the
handler's own prints go to stderr so they cannot corrupt a frame. EOF on stdin
means "retire": the process exits 0.

Request ``{"event": {...}, "requestId": "...", "deadlineMs": <epoch ms>}``, plus
``"tenantId": <circle>`` (the raw circle id) when the pool isolates circles: the
worker then serves that circle only (:class:`CircleGuard`). The context has no
``tenant_id``: Lambda's is the circle's mapped ``TenantId`` spelling, not the raw id;
response ``{"ok": true, "result": ...}`` or
``{"ok": false, "errorType": "...", "errorMessage": "..."}`` (Lambda's FunctionError).
The same loop (:func:`serve`) runs in workers forked by the pool's template
process (:mod:`rhailambda.shim.forkserver`), on the pipes it was handed.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from rhailambda.protocol import CONTEXT_ID, KeyLayout

if TYPE_CHECKING:
    from rhailambda.resp import RespClient

__all__ = [
    "CircleGuard",
    "LocalContext",
    "circle_queries",
    "encode_frame",
    "load_handler",
    "main",
    "read_frame",
    "serve",
]

_HEADER = struct.Struct(">I")
Handler = Callable[[Any, Any], Any]


def encode_frame(payload: Any) -> bytes:
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    return _HEADER.pack(len(body)) + body


def read_frame(stream: IO[bytes]) -> Any | None:
    """The next frame's JSON, or None at EOF."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return json.loads(body)


class LocalContext:
    """The parts of Lambda's context object a handler uses."""

    def __init__(self, *, function_name: str, request_id: str, memory_mb: int, deadline_ms: int):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.aws_request_id = request_id
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"local/{os.getpid()}"
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def load_handler(path: str) -> Handler:
    """``pkg.module.func`` or ``pkg.module:func``."""
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    if not module_name:
        raise ValueError(f"handler path must be module.function, got {path!r}")
    handler = getattr(importlib.import_module(module_name), attr)
    if not callable(handler):
        raise TypeError(f"{path} is not callable")
    return handler  # type: ignore[no-any-return]


class CircleGuard:
    """A worker's pin to one circle (``--isolate-circles``): it serves no other.

    The first request that names a circle (``tenantId``) pins the worker; later
    requests must name the same one, and every task's ``contextId`` (read from its
    hash in one round trip, on a client made in this process) must be that circle.
    A task whose hash is gone has no circle and runs no script: it passes.
    """

    def __init__(self) -> None:
        self.circle: str | None = None
        self._client: RespClient | None = None
        self._layout = KeyLayout()

    def refusal(self, request: dict[str, Any]) -> str | None:
        """Why this worker must not run ``request``, or None."""
        circle = request.get("tenantId")
        if self.circle is None:
            if circle is None:
                return None
            self.circle = str(circle)
        if circle != self.circle:
            return f"this worker serves circle {self.circle!r}, the batch is for {circle!r}"
        ids = [str(t.get("taskId", "")) for t in request["event"].get("tasks", [])]
        others = sorted({c for c in self._circles(ids) if c and c != self.circle})
        if others:
            return f"this worker serves circle {self.circle!r}, the batch has tasks of {others!r}"
        return None

    def _circles(self, task_ids: list[str]) -> list[str]:
        if not task_ids:
            return []
        if self._client is None:
            from rhailambda.resp import from_url
            from rhailambda.settings import Env, ProtocolSettings, RedisSettings

            env = Env(os.environ)
            redis = RedisSettings.from_env(env)
            self._client = from_url(
                redis.url, cluster=redis.cluster, client_name="rhailambda-guard"
            )
            self._layout = ProtocolSettings.from_env(env).layout
        commands = circle_queries(self._layout, task_ids)
        replies = self._client.round_trip(commands, idempotent=True)
        return [r if isinstance(r, str) else "" for r in replies]


def circle_queries(layout: KeyLayout, task_ids: list[str]) -> list[list[str]]:
    """The commands reading each task's circle (its ``contextId``), one reply each."""
    return [["HGET", layout.task(t), CONTEXT_ID] for t in task_ids]


def serve(
    handler_path: str, inp: IO[bytes], out: IO[bytes], *, function_name: str, memory_mb: int
) -> int:
    """Import the handler, say ready, then answer requests until EOF (exit code)."""
    try:
        handler = load_handler(handler_path)
    except BaseException as exc:
        out.write(encode_frame({"ready": False, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    out.write(encode_frame({"ready": True, "pid": os.getpid()}))
    guard = CircleGuard()
    while (request := read_frame(inp)) is not None:
        context = LocalContext(
            function_name=function_name,
            request_id=str(request.get("requestId", "")),
            memory_mb=memory_mb,
            deadline_ms=int(request["deadlineMs"]),
        )
        try:
            refusal = guard.refusal(request)
            if refusal is not None:
                frame = encode_frame(
                    {"ok": False, "errorType": "CircleMismatch", "errorMessage": refusal}
                )
            else:
                response = {"ok": True, "result": handler(request["event"], context)}
                frame = encode_frame(response)
        except Exception as exc:
            traceback.print_exc()
            frame = encode_frame(
                {"ok": False, "errorType": type(exc).__name__, "errorMessage": str(exc)}
            )
        out.write(frame)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m rhailambda.shim.local_worker <handler path> [function name]",
              file=sys.stderr)  # fmt: skip
        return 2
    # Ctrl-C reaches the whole process group; the shim decides when workers stop
    # (it closes their stdin, or kills them past its deadline).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    function_name = argv[2] if len(argv) > 2 else "rhailambda"
    memory_mb = int(argv[3]) if len(argv) > 3 else 1024
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # the handler's prints go to stderr
    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    return serve(argv[1], inp, out, function_name=function_name, memory_mb=memory_mb)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
