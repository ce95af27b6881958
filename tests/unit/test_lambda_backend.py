"""LambdaInvoker: every answer Lambda can give, mapped onto the Invoker contract.

boto3 calls are answered by botocore's Stubber (no network). The answers that need a
real HTTP peer are in tests/integration/test_lambda_backend_http.py.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from rhailambda.errors import InvocationError, PayloadTooLargeError, ThrottledError
from rhailambda.event import InvocationEvent, TaskRef
from rhailambda.settings import Env
from rhailambda.shim import settings as shim_settings
from rhailambda.shim.lambda_backend import (
    MAX_PAYLOAD_BYTES,
    LambdaInvoker,
    lambda_client_config,
)

EVENT = InvocationEvent("worker1", (TaskRef("t1", 1), TaskRef("t2", 2)))
FUNCTION = "rhailambda-script"


def _client(endpoint_url: str | None = None) -> Any:
    return boto3.client(
        "lambda",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        endpoint_url=endpoint_url,
        config=lambda_client_config(max_concurrency=4, read_timeout_s=5),
    )


def _body(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


@pytest.fixture
def stubbed() -> Iterator[tuple[LambdaInvoker, Stubber]]:
    client = _client()
    stubber = Stubber(client)
    invoker = LambdaInvoker(FUNCTION, client=client, max_concurrency=2)
    with stubber:
        yield invoker, stubber
    asyncio.run(invoker.aclose())
    stubber.assert_no_pending_responses()


def _invoke(invoker: LambdaInvoker, event: InvocationEvent = EVENT) -> Any:
    async def go() -> Any:
        return await invoker.invoke(event, timeout_s=30)

    return asyncio.run(go())


def _expected_params(event: InvocationEvent = EVENT) -> dict[str, Any]:
    return {
        "FunctionName": FUNCTION,
        "InvocationType": "RequestResponse",
        "Payload": json.dumps(event.to_json(), separators=(",", ":")).encode(),
    }


def test_a_batch_response_is_parsed(stubbed: tuple[LambdaInvoker, Stubber]) -> None:
    invoker, stubber = stubbed
    answer = {
        "batchItemFailures": [{"itemIdentifier": "t2"}],
        "outcomes": {"t1": "completed", "t2": "failed"},
    }
    stubber.add_response(
        "invoke",
        {"StatusCode": 200, "Payload": _body(json.dumps(answer).encode())},
        _expected_params(),
    )
    response = _invoke(invoker)
    assert response.failed_ids == {"t2"}
    assert response.outcomes["t1"] == "completed"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("TooManyRequestsException", 429),
        ("EC2ThrottledException", 502),
        ("ENILimitReachedException", 502),
        ("SubnetIPAddressLimitReachedException", 502),
    ],
)
def test_throttles_mean_nothing_ran(
    stubbed: tuple[LambdaInvoker, Stubber], code: str, status: int
) -> None:
    invoker, stubber = stubbed
    stubber.add_client_error("invoke", code, "slow down", status)
    with pytest.raises(ThrottledError) as caught:
        _invoke(invoker)
    assert caught.value.retryable
    assert code in str(caught.value)


def test_a_throttle_carries_retry_after(stubbed: tuple[LambdaInvoker, Stubber]) -> None:
    invoker, stubber = stubbed
    stubber.add_client_error(
        "invoke",
        "TooManyRequestsException",
        "Rate exceeded",
        429,
        modeled_fields={"retryAfterSeconds": "3", "Reason": "ConcurrentInvocationLimitExceeded"},
    )
    with pytest.raises(ThrottledError) as caught:
        _invoke(invoker)
    assert caught.value.retry_after_s == 3.0


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("ServiceException", 500),
        ("ResourceNotReadyException", 502),
        ("EC2UnexpectedException", 502),
        ("ResourceNotFoundException", 404),
    ],
)
def test_service_errors_are_retryable(
    stubbed: tuple[LambdaInvoker, Stubber], code: str, status: int
) -> None:
    invoker, stubber = stubbed
    stubber.add_client_error("invoke", code, "boom", status)
    with pytest.raises(InvocationError) as caught:
        _invoke(invoker)
    assert not isinstance(caught.value, ThrottledError)
    assert caught.value.retryable
    assert code in str(caught.value) and FUNCTION in str(caught.value)


def test_request_too_large_is_not_retryable(stubbed: tuple[LambdaInvoker, Stubber]) -> None:
    invoker, stubber = stubbed
    stubber.add_client_error("invoke", "RequestTooLargeException", "too big", 413)
    with pytest.raises(PayloadTooLargeError) as caught:
        _invoke(invoker)
    assert not caught.value.retryable


def test_an_oversized_event_is_refused_before_sending(
    stubbed: tuple[LambdaInvoker, Stubber],
) -> None:
    invoker, _ = stubbed  # no stubbed response: a call would fail the test
    huge = InvocationEvent("worker1", (TaskRef("x" * MAX_PAYLOAD_BYTES, 1),))
    with pytest.raises(PayloadTooLargeError, match="lower the batch size"):
        _invoke(invoker, huge)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {
                "errorType": "Sandbox.Timedout",
                "errorMessage": "RequestId: r1 Error: Task timed out after 3.00 seconds",
            },
            "Task timed out after 3.00 seconds",
        ),
        (
            {
                "errorType": "Runtime.ExitError",
                "errorMessage": "RequestId: r2 Error: Runtime exited with error: exit status 3",
            },
            "Runtime exited with error",
        ),
        ({"errorType": "KeyError", "errorMessage": "'tasks'"}, "KeyError: 'tasks'"),
    ],
)
def test_function_errors_are_retryable_with_the_message(
    stubbed: tuple[LambdaInvoker, Stubber], payload: dict[str, str], expected: str
) -> None:
    invoker, stubber = stubbed
    stubber.add_response(
        "invoke",
        {
            "StatusCode": 200,
            "FunctionError": "Unhandled",
            "Payload": _body(json.dumps(payload).encode()),
        },
    )
    with pytest.raises(InvocationError) as caught:
        _invoke(invoker)
    assert caught.value.retryable and not isinstance(caught.value, ThrottledError)
    assert expected in str(caught.value)


def test_a_response_over_the_limit_is_payload_too_large(
    stubbed: tuple[LambdaInvoker, Stubber],
) -> None:
    invoker, stubber = stubbed
    payload = {
        "errorType": "Function.ResponseSizeTooLarge",
        "errorMessage": "Response payload size exceeded maximum allowed payload size",
    }
    stubber.add_response(
        "invoke",
        {
            "StatusCode": 200,
            "FunctionError": "Unhandled",
            "Payload": _body(json.dumps(payload).encode()),
        },
    )
    with pytest.raises(PayloadTooLargeError):
        _invoke(invoker)


def test_a_payload_that_is_no_batch_response_is_retryable(
    stubbed: tuple[LambdaInvoker, Stubber],
) -> None:
    invoker, stubber = stubbed
    # What the Runtime Interface Emulator answers on a timeout: 200, plain text.
    stubber.add_response(
        "invoke", {"StatusCode": 200, "Payload": _body(b"Task timed out after 3.00 seconds")}
    )
    with pytest.raises(InvocationError, match="Task timed out") as caught:
        _invoke(invoker)
    assert caught.value.retryable


def test_the_sdk_does_not_retry() -> None:
    config: Any = lambda_client_config(max_concurrency=32, read_timeout_s=65)
    assert config.retries == {"mode": "standard", "total_max_attempts": 1}
    assert config.max_pool_connections == 32
    assert config.read_timeout == 65


def test_from_settings_uses_the_function_name_and_timeouts() -> None:
    parser = argparse.ArgumentParser()
    shim_settings.add_arguments(parser)
    env = {
        "RHAILAMBDA_WORKERS": "worker1",
        "RHAILAMBDA_BACKEND": "lambda",
        "RHAILAMBDA_FUNCTION_NAME": "arn:aws:lambda:eu-west-1:123456789012:function:fn",
        "RHAILAMBDA_FUNCTION_TIMEOUT_S": "60",
        "RHAILAMBDA_MAX_CONCURRENCY": "16",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    settings = shim_settings.from_args(parser.parse_args([]), Env(env))
    invoker = LambdaInvoker.from_settings(settings)
    try:
        assert invoker.function_name.endswith(":function:fn")
        client = invoker._client
        assert client.meta.region_name == "eu-west-1"  # taken from the ARN
        config: Any = client.meta.config
        assert config.read_timeout == 60 + settings.function.timeout_margin_s
        assert config.max_pool_connections == 16
    finally:
        asyncio.run(invoker.aclose())
