"""The shim's HTTP port (``--metrics-port``): ``/metrics``, ``/healthz``, ``/readyz``.

A small HTTP/1.1 responder on the shim's own event loop (one request per
connection, GET or HEAD), so an answer at all proves the loop runs:

* ``/healthz`` (liveness): 200 while :func:`~rhailambda.shim.app.serve` runs, also
  while it waits for Redis at start; 503 once it has stopped.
* ``/readyz`` (readiness): 200 when Redis answers a PING within a second and the
  shim's lease is held (its last heartbeat is younger than ``--lease-s``); else 503
  with the reason.
* ``/metrics``: the Prometheus text format of a fresh sample.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from rhailambda.errors import RhailambdaError
from rhailambda.shim.metrics import Sampler
from rhailambda.shim.metrics_prom import CONTENT_TYPE, render

__all__ = ["HealthServer"]

log = logging.getLogger("rhailambda.shim")

_REQUEST_TIMEOUT_S = 5.0
_MAX_HEADER_LINES = 100
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}

#: "" when fine, else why not (the body of the 503)
Check = Callable[[], Awaitable[str]]


class HealthServer:
    def __init__(
        self, host: str, port: int, sampler: Sampler, *, live: Check, ready: Check
    ) -> None:
        self._host, self._port = host, port
        self._sampler = sampler
        self._routes: dict[str, Callable[[], Awaitable[tuple[int, str, bytes]]]] = {
            "/metrics": self._metrics,
            "/healthz": lambda: self._check(live),
            "/readyz": lambda: self._check(ready),
        }
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self._host, self._port)
        except OSError as exc:
            raise RhailambdaError(
                f"--metrics-port {self._port}: cannot listen on {self._host}: {exc}"
            ) from None
        log.info("metrics and health on http://%s:%d/metrics", self._host, self._port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _metrics(self) -> tuple[int, str, bytes]:
        sample = await self._sampler.sample()
        if sample.error:
            log.warning("metrics: queues not read (%s)", sample.error)
        return 200, CONTENT_TYPE, render(sample)

    @staticmethod
    async def _check(check: Check) -> tuple[int, str, bytes]:
        problem = await check()
        return (
            (503, "text/plain", f"{problem}\n".encode())
            if problem
            else (200, "text/plain", b"ok\n")
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                request = (await reader.readline()).decode("latin-1").split()
                for _ in range(_MAX_HEADER_LINES):
                    if (await reader.readline()) in (b"\r\n", b"\n", b""):
                        break
            method, path = (
                (request[0], request[1].split("?", 1)[0]) if len(request) >= 2 else ("", "")
            )
            route = self._routes.get(path)
            if route is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            elif method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"GET or HEAD\n"
            else:
                status, ctype, body = await route()
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # a client that sent nothing, or left: nothing to answer
        except Exception:
            log.exception("metrics port: request failed")
        finally:
            writer.close()
