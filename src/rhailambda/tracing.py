"""X-Ray tracing of the Lambda handlers (Powertools ``Tracer``), only when asked for.

``RHAILAMBDA_TRACING=true`` (the template's ``Tracing`` parameter) makes
:func:`lambda_tracer` build a Tracer (it patches boto3, so the poller's invokes and
the circle store's DynamoDB calls show as subsegments); otherwise nothing is built
and ``aws_xray_sdk`` is not even imported: a cold start, or a local worker, pays
nothing for it. Responses are never recorded (they carry task ids and errors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from rhailambda.settings import Env

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

__all__ = ["lambda_tracer", "traced"]

H = TypeVar("H", bound=Callable[..., Any])


def lambda_tracer(env: Env, service: str) -> Tracer | None:
    """A Tracer for ``service`` when ``RHAILAMBDA_TRACING`` is true, else None."""
    if not env.bool("RHAILAMBDA_TRACING", False):
        return None
    from aws_lambda_powertools import Tracer

    return Tracer(service=service)


def traced(tracer: Tracer | None) -> Callable[[H], H]:
    """A decorator: the handler as a traced segment (cold start annotated), or as it is
    without a tracer."""

    def wrap(handler: H) -> H:
        if tracer is None:
            return handler
        return cast(H, tracer.capture_lambda_handler(handler, capture_response=False))

    return wrap
