"""Helpers for tests: a DynamoDB emulator (moto) in process, and the circle table.

``moto``'s in-process server handles requests on several threads without making
a transaction atomic against concurrent requests (it validates, writes, and rolls
back by restoring a copy of the whole table). Real DynamoDB serializes
transactions, so :func:`start_moto` serializes requests to keep the emulator
honest. Point tests at another emulator (LocalStack) with ``endpoint_url``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from rhailambda.circle.dynamo_store import DynamoClient

__all__ = ["DUMMY_AWS_ENV", "create_table", "dynamodb_client", "start_moto"]

#: Credentials and region an emulator accepts (never real ones).
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

_serial = threading.RLock()
_patched = False


def _serialize_moto() -> None:
    global _patched
    if _patched:
        return
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    original: Callable[..., Any] = DomainDispatcherApplication.__call__

    def serialized(self: Any, environ: Any, start_response: Any) -> Any:
        with _serial:
            return list(original(self, environ, start_response))

    DomainDispatcherApplication.__call__ = serialized  # type: ignore[method-assign]
    _patched = True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def start_moto() -> Iterator[str]:
    """A moto server on 127.0.0.1 (a free port) for the block; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    _serialize_moto()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def dynamodb_client(endpoint_url: str | None, region: str = "us-east-1") -> DynamoClient:
    """A boto3 DynamoDB client for an emulator, with dummy credentials."""
    import boto3

    client = boto3.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=DUMMY_AWS_ENV["AWS_SESSION_TOKEN"],
    )
    return cast(DynamoClient, client)


def create_table(client: Any, table: str) -> None:
    """The circle table, with the key schema the SAM template declares."""
    client.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(
        TableName=table, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50}
    )
