"""LambdaInvoker against real HTTP peers on loopback: a closed port, a crashed emulator."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import boto3
import pytest

from rhailambda.errors import InvocationError, ThrottledError
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.shim.lambda_backend import LambdaInvoker, lambda_client_config

EVENT = InvocationEvent("worker1", (TaskRef("t1", 1),))
FUNCTION = "rhailambda-script"


def _invoker(endpoint_url: str) -> LambdaInvoker:
    client = boto3.client(
        "lambda", region_name="us-east-1", endpoint_url=endpoint_url,
        aws_access_key_id="test", aws_secret_access_key="test",
        config=lambda_client_config(max_concurrency=4, read_timeout_s=5),
    )  # fmt: skip
    return LambdaInvoker(FUNCTION, client=client)


def _invoke(invoker: LambdaInvoker) -> Any:
    async def go() -> Any:
        return await invoker.invoke(EVENT, timeout_s=30)

    return asyncio.run(go())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_errors_are_retryable() -> None:
    invoker = _invoker(f"http://127.0.0.1:{_closed_port()}")
    try:
        with pytest.raises(InvocationError) as caught:
            _invoke(invoker)
    finally:
        asyncio.run(invoker.aclose())
    assert caught.value.retryable and not isinstance(caught.value, ThrottledError)
    assert "EndpointConnectionError" in str(caught.value)


def test_an_emulator_crash_keeps_the_runtime_message() -> None:
    # The RIE answers a crashed runtime with 502 and the runtime's error as the body.
    body = json.dumps(
        {"errorType": "Runtime.ExitError", "errorMessage": "Runtime exited with error: exit 70"}
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(502)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    invoker = _invoker(f"http://127.0.0.1:{server.server_port}")
    try:
        with pytest.raises(InvocationError) as caught:
            _invoke(invoker)
    finally:
        asyncio.run(invoker.aclose())
        server.shutdown()
        server.server_close()
    assert caught.value.retryable and not isinstance(caught.value, ThrottledError)
    assert "Runtime.ExitError: Runtime exited with error: exit 70" in str(caught.value)
