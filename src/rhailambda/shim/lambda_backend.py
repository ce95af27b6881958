"""The AWS Lambda backend: one synchronous ``Invoke`` (``RequestResponse``) per batch.

boto3 is synchronous, so each invocation runs in a bounded thread pool (one thread
per invocation the shim may have in flight) and the HTTP pool is as large.

**No SDK-level retries.** The client is built with ``total_max_attempts=1``: the
shim's drain loop owns every retry. It counts attempts (the fencing token in the
event), backs off, dead-letters, and halves its concurrency on throttles (AIMD).
botocore retrying underneath would hide throttles from that limiter and re-run a
batch after a 5xx or a read timeout without a new attempt number.

How failures map onto the :class:`~rhailambda.shim.invoker.Invoker` contract:

=======================================================  ==============================
Lambda says                                              raised
=======================================================  ==============================
429 ``TooManyRequestsException``, ``EC2ThrottledException``,  :class:`ThrottledError`
``ENILimitReachedException``,                               (nothing ran; ``Retry-After``
``SubnetIPAddressLimitReachedException``                    carried as ``retry_after_s``)
``RequestTooLargeException`` / event over 6 MB (checked     :class:`PayloadTooLargeError`
before sending) / ``Function.ResponseSizeTooLarge``         (not retryable)
``InvalidRequestContentException`` and other 4xx (bad      ``InvocationError``
event, function not found, access denied)                   (retryable, so a fixed
                                                            configuration recovers)
5xx, ``ServiceException``, ``ResourceNotReadyException``,  ``InvocationError(retryable=True)``
connection errors, read timeouts
``FunctionError`` (crash, "Task timed out after ...",       ``InvocationError(retryable=True)``
unhandled exception, init error)                            with the function's message
a 200 whose payload is not the batch response               ``InvocationError(retryable=True)``
=======================================================  ==============================

A 429 ``TooManyRequestsException`` is also what a tenant-isolated function answers
past its tenant environments quota (2,500 tenant-aware environments, active or idle,
per 1,000 concurrency: "Rate exceeded"): throttling, so no attempt is spent.

**Tenant isolation.** An event with ``tenant_id`` (a one-circle batch, see
:class:`~rhailambda.event.InvocationEvent`) is invoked with ``TenantId`` =
:func:`~rhailambda.tenancy.tenant_id_for` of that circle (the ``X-Amz-Tenant-Id``
header), so Lambda runs it only in execution environments of that circle. botocore
has known ``TenantId`` since 1.41.0; with an older one (the Lambda runtime's own
boto3 runs the poller) the header is added by an event hook instead.

The function is named by ``RHAILAMBDA_FUNCTION_NAME`` (name, ``name:alias`` or
ARN). The endpoint comes from boto3's own configuration, so ``AWS_ENDPOINT_URL``
points the shim at LocalStack or an emulator unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from rhailambda.errors import InvocationError, PayloadTooLargeError, ThrottledError
from rhailambda.event import BatchResponse, EventError, InvocationEvent
from rhailambda.shim.settings import ShimSettings
from rhailambda.tenancy import tenant_id_for

if TYPE_CHECKING:
    from mypy_boto3_lambda.client import LambdaClient
else:
    LambdaClient = Any

__all__ = ["MAX_PAYLOAD_BYTES", "LambdaInvoker", "lambda_client_config"]

log = logging.getLogger("rhailambda.shim.lambda")

#: Lambda's limit for a synchronous invocation's request and response (6 MB).
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024

_THROTTLE_CODES = frozenset(
    {
        "TooManyRequestsException",
        "EC2ThrottledException",
        "ENILimitReachedException",
        "SubnetIPAddressLimitReachedException",
    }
)
_TOO_LARGE_CODES = frozenset({"RequestTooLargeException", "RequestEntityTooLargeException"})
_TENANT_HEADER = "X-Amz-Tenant-Id"
_TENANT_CONTEXT_KEY = "rhailambda_tenant_id"
_CONNECT_TIMEOUT_S = 5.0
_MESSAGE_LIMIT = 500  # characters of a function's error message kept in the reply


def lambda_client_config(*, max_concurrency: int, read_timeout_s: float) -> Config:
    """The botocore config: a pool as large as the concurrency, no SDK retries."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=max(10, max_concurrency),
        connect_timeout=_CONNECT_TIMEOUT_S,
        read_timeout=read_timeout_s,
        # A synchronous invoke may sit silent for minutes: keep NATs from dropping it.
        tcp_keepalive=True,
    )


def _region_of(function_name: str) -> str | None:
    """The region inside a function ARN (``arn:aws:lambda:REGION:ACCOUNT:function:NAME``)."""
    parts = function_name.split(":")
    if len(parts) >= 7 and parts[0] == "arn" and parts[2] == "lambda":
        return parts[3] or None
    return None


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    function_error: str | None
    payload: bytes


class LambdaInvoker:
    """An :class:`~rhailambda.shim.invoker.Invoker` calling Lambda's ``Invoke`` API."""

    def __init__(
        self,
        function_name: str,
        *,
        client: LambdaClient | None = None,
        max_concurrency: int = 10,
        read_timeout_s: float = 65.0,
    ) -> None:
        if not function_name:
            raise ValueError("function_name is required")
        self.function_name = function_name
        self._own_client = client is None
        if client is None:
            config = lambda_client_config(
                max_concurrency=max_concurrency, read_timeout_s=read_timeout_s
            )
            client = boto3.client("lambda", config=config, region_name=_region_of(function_name))
        self._client = client
        client.meta.events.register("after-call.lambda.Invoke", _keep_runtime_error_message)
        if not _knows_tenant_id(client):
            client.meta.events.register("before-parameter-build.lambda.Invoke", _stash_tenant_id)
            client.meta.events.register("before-call.lambda.Invoke", _send_tenant_header)
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, max_concurrency), thread_name_prefix="lambda-invoke"
        )

    @classmethod
    def from_settings(
        cls, settings: ShimSettings, *, client: LambdaClient | None = None
    ) -> LambdaInvoker:
        fn = settings.function
        return cls(
            fn.function_name,
            client=client,
            max_concurrency=settings.flow.max_concurrency,
            read_timeout_s=fn.function_timeout_s + fn.timeout_margin_s,
        )

    async def invoke(self, event: InvocationEvent, *, timeout_s: float) -> BatchResponse:
        """Run one batch; ``timeout_s`` is informational (the function has its own timeout)."""
        body = json.dumps(event.to_json(), separators=(",", ":")).encode()
        if len(body) > MAX_PAYLOAD_BYTES:
            raise PayloadTooLargeError(
                f"event of {len(body)} bytes ({len(event.tasks)} tasks) exceeds Lambda's "
                f"{MAX_PAYLOAD_BYTES}-byte limit; lower the batch size"
            )
        loop = asyncio.get_running_loop()
        tenant = None if event.tenant_id is None else tenant_id_for(event.tenant_id)
        reply = await loop.run_in_executor(self._executor, self._invoke_sync, body, tenant)
        return self._parse(reply, event)

    async def aclose(self) -> None:
        # Threads still blocked in a call finish by their read timeout; none is waited for.
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._own_client:
            self._client.close()

    # --- the blocking part, in a pool thread ---------------------------------------
    def _invoke_sync(self, body: bytes, tenant_id: str | None) -> _Reply:
        try:
            if tenant_id is None:
                response = self._client.invoke(
                    FunctionName=self.function_name, InvocationType="RequestResponse", Payload=body
                )
            else:
                response = self._client.invoke(
                    FunctionName=self.function_name,
                    InvocationType="RequestResponse",
                    Payload=body,
                    TenantId=tenant_id,
                )
            payload = response["Payload"].read()
        except ClientError as exc:
            raise self._client_error(exc) from exc
        except BotoCoreError as exc:  # connection refused/reset, read timeout, ...
            raise InvocationError(
                f"invoking {self.function_name} failed: {type(exc).__name__}: {exc}"
            ) from exc
        return _Reply(
            status=int(response.get("StatusCode", 0)),
            function_error=response.get("FunctionError"),
            payload=payload,
        )

    def _client_error(self, exc: ClientError) -> InvocationError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or str(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        what = f"invoking {self.function_name}: {code or status}: {message}"
        if code in _THROTTLE_CODES or status == 429:
            return ThrottledError(what, retry_after_s=_retry_after(exc.response))
        if code in _TOO_LARGE_CODES or status == 413:
            return PayloadTooLargeError(what)
        return InvocationError(what, retryable=True)

    # --- reading the answer ---------------------------------------------------------
    def _parse(self, reply: _Reply, event: InvocationEvent) -> BatchResponse:
        if reply.function_error:
            error_type, message = _function_error(reply.payload)
            text = f"function error ({reply.function_error}) in {self.function_name}: "
            text += f"{error_type}: {message}" if error_type else message
            if error_type == "Function.ResponseSizeTooLarge":
                raise PayloadTooLargeError(text)
            raise InvocationError(text, retryable=True)
        try:
            raw = json.loads(reply.payload)
            return BatchResponse.from_json(raw, event)
        except (ValueError, EventError) as exc:
            # e.g. the emulator's plain-text "Task timed out after 3.00 seconds"
            excerpt = reply.payload[:_MESSAGE_LIMIT].decode("utf-8", "replace")
            raise InvocationError(
                f"{self.function_name} returned no batch response "
                f"(status {reply.status}): {excerpt!r} ({exc})",
                retryable=True,
            ) from exc


def _function_error(payload: bytes) -> tuple[str, str]:
    """(errorType, errorMessage) of a Lambda error payload; raw text when it is not JSON."""
    try:
        raw = json.loads(payload)
    except ValueError:
        return "", payload[:_MESSAGE_LIMIT].decode("utf-8", "replace")
    if not isinstance(raw, dict):
        return "", str(raw)[:_MESSAGE_LIMIT]
    error_type = str(raw.get("errorType") or "")
    message = str(raw.get("errorMessage") or "")[:_MESSAGE_LIMIT]
    return error_type, message


def _keep_runtime_error_message(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
    """Keep the runtime's ``{"errorType", "errorMessage"}`` of an error status.

    Lambda reports a crashed runtime as 200 + ``FunctionError``, but emulators (the
    RIE, LocalStack) answer 502 with that body, which botocore's error parser drops.
    """
    error = parsed.get("Error")
    if getattr(http_response, "status_code", 200) < 400 or not isinstance(error, dict):
        return
    if error.get("Message"):
        return
    try:
        body = json.loads(http_response.content)
    except (TypeError, ValueError):
        return
    if isinstance(body, dict) and body.get("errorMessage"):
        error_type = body.get("errorType") or "Unhandled"
        error["Message"] = f"{error_type}: {str(body['errorMessage'])[:_MESSAGE_LIMIT]}"


def _knows_tenant_id(client: LambdaClient) -> bool:
    """Whether the client's botocore models Invoke's ``TenantId`` (1.41.0 and later)."""
    shape = client.meta.service_model.operation_model("Invoke").input_shape
    return shape is not None and "TenantId" in shape.members


def _stash_tenant_id(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """An older botocore would refuse ``TenantId``: keep it for :func:`_send_tenant_header`."""
    tenant_id = params.pop("TenantId", None)
    if tenant_id is not None:
        context[_TENANT_CONTEXT_KEY] = tenant_id


def _send_tenant_header(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """Put the stashed ``TenantId`` where Lambda reads it (before the request is signed)."""
    tenant_id = context.get(_TENANT_CONTEXT_KEY)
    if tenant_id is not None:
        params["headers"][_TENANT_HEADER] = tenant_id


def _retry_after(response: Any) -> float | None:
    """Lambda's ``Retry-After`` (seconds), from the modeled field or the raw header."""
    raw = response.get("retryAfterSeconds")
    if raw is None:
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        raw = headers.get("retry-after")
    try:
        value = float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and value >= 0 else None
