"""The Lambda handler: thin. Parse the event, run the batch, shape the response.

Everything expensive (settings, the Redis client, the engine's compile cache, the
extensions' clients, the logger) is built once per cold start, at import.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from rhailambda.event import InvocationEvent
from rhailambda.extension import ScriptContext
from rhailambda.functions.bootstrap import build_runner
from rhailambda.functions.runner import TaskResult
from rhailambda.functions.settings import FunctionSettings
from rhailambda.settings import Env
from rhailambda.tracing import lambda_tracer, traced

__all__ = ["handler"]

# The edge: the only place the function reads its environment.
ENV = Env(os.environ)
SETTINGS = FunctionSettings.from_env(ENV)

# stderr: stdout may be a transport (local backend); Lambda ships both to CloudWatch.
logger = Logger(service="rhailambda", logger_handler=logging.StreamHandler(sys.stderr))
metrics = Metrics(namespace=ENV.str("POWERTOOLS_METRICS_NAMESPACE", "rhailambda"))
tracer = lambda_tracer(ENV, "rhailambda")  # None unless RHAILAMBDA_TRACING (template: Tracing)


def _task_keys(ctx: ScriptContext) -> dict[str, object]:
    return {"task_id": ctx.task_id, "caller_id": ctx.caller_id, "context_id": ctx.context_id}


def _on_print(ctx: ScriptContext, text: str) -> None:
    logger.info(text, extra={"script_output": "print", **_task_keys(ctx)})


def _on_debug(
    ctx: ScriptContext, text: str, source: str | None, line: int | None, column: int | None
) -> None:
    extra = {"script_output": "debug", "script_line": line, "script_column": column}
    logger.debug(text, extra={**extra, **_task_keys(ctx)})


RUNNER = build_runner(SETTINGS, ENV, on_print=_on_print, on_debug=_on_debug)


class _Observer:
    """Logs each task with its ids and counts outcomes for the batch's metrics."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.script_s = 0.0

    def task_done(self, result: TaskResult) -> None:
        self.counts[result.outcome] = self.counts.get(result.outcome, 0) + 1
        self.script_s += result.duration_s
        if result.outcome == "completed" and logger.log_level > logging.DEBUG:
            return  # the hot path: nothing to log per successful task at INFO
        f = result.fields
        keys: dict[str, object] = {"task_id": result.task_id}
        if f is not None:
            keys |= {"caller_id": f.caller_id, "context_id": f.context_id}
        if result.outcome == "completed":
            keys["duration_ms"] = round(result.duration_s * 1e3, 3)
            logger.debug("task completed", extra=keys)
        else:
            keys |= {"error": result.error, "runs": result.runs}
            logger.info(f"task {result.outcome}", extra=keys)


@traced(tracer)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    parsed = InvocationEvent.from_json(event)
    budget_s = context.get_remaining_time_in_millis() / 1000.0
    observer = _Observer()
    # None unless the function runs in tenant isolation mode (then it is the TenantId)
    tenant_id = getattr(context, "tenant_id", None)
    response = RUNNER.run(parsed, budget_s, observer, tenant_id=tenant_id)
    metrics.add_metric(name="Tasks", unit=MetricUnit.Count, value=len(parsed.tasks))
    for outcome, count in observer.counts.items():
        metrics.add_metric(name=f"Tasks{outcome.capitalize()}", unit=MetricUnit.Count, value=count)
    metrics.add_metric(
        name="ScriptTime", unit=MetricUnit.Milliseconds, value=observer.script_s * 1e3
    )
    logger.info(
        "batch done",
        extra={
            "worker_id": parsed.worker_id,
            "tasks": len(parsed.tasks),
            "outcomes": observer.counts,
            "request_id": getattr(context, "aws_request_id", None),
            **({"tenant_id": tenant_id} if tenant_id is not None else {}),
        },
    )
    return response.to_json()
