"""Embedded Metric Format lines on stdout (Powertools' CloudWatch EMF provider).

CloudWatch Logs turns each line into metrics, in Lambda (the poller) as from ECS
``awslogs`` or the CloudWatch agent (a self-run shim): no ``PutMetricData`` call,
no IAM for it. One publish writes one line per queue (dimensions ``service``,
``worker``) and then one line for the shim (dimension ``service`` only) with the
queue totals (``OldestTaskAge``: the oldest of them) and the counters as deltas
since the last publish: the alarms watch that last line.

The busiest circles of each queue go out one line each, with dimensions ``service``,
``worker`` and ``circle_rank`` (1 for the busiest, up to
:data:`~rhailambda.shim.metrics.TOP_CIRCLES`) and the circle itself as the property
``circle``, not a dimension: every dimension value is a CloudWatch metric of its
own, and circles come and go, so a ``circle`` dimension would make one metric per
circle ever seen. By rank the metrics stay bounded; Logs Insights finds the circle
(``filter circle_rank = "1" | stats max(CircleQueued) by circle``).
"""

from __future__ import annotations

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
    AmazonCloudWatchEMFProvider,
)

from rhailambda.shim.metrics import METRICS, Sample, ShimCounters

__all__ = ["EmfPublisher"]

_UNITS = {m.name: MetricUnit(m.unit) for m in METRICS}


class EmfPublisher:
    """Writes a :class:`Sample` as EMF lines; counters go out as deltas."""

    def __init__(self, namespace: str, service: str) -> None:
        self._provider = AmazonCloudWatchEMFProvider(namespace=namespace, service=service)
        self._last = ShimCounters()

    def publish(self, sample: Sample) -> None:
        for q in sample.queues:
            self._line(q.values(), worker=q.worker_id)
        for c in sample.circles:
            self._provider.add_metadata("circle", c.circle)
            self._line(c.values(), worker=c.worker_id, circle_rank=str(c.rank))
        now, last = sample.counters, self._last
        batches = now.invocations - last.invocations
        totals: dict[str, float] = {
            "Invocations": batches,
            "InvocationErrors": now.invocation_errors - last.invocation_errors,
            "Throttles": now.throttles - last.throttles,
        }
        if batches > 0:
            totals["BatchDuration"] = round((now.batch_s - last.batch_s) / batches * 1000, 3)
        if sample.queues:
            values = [q.values() for q in sample.queues]
            for name in ("QueueDepth", "InFlight", "RetriesWaiting", "DeadLetterDepth"):
                totals[name] = sum(v[name] for v in values)
            ages = [v["OldestTaskAge"] for v in values if "OldestTaskAge" in v]
            if ages:
                totals["OldestTaskAge"] = max(ages)
        self._line(totals)
        self._last = now

    def _line(self, values: dict[str, float], **dimensions: str) -> None:
        for dimension, label in dimensions.items():
            self._provider.add_dimension(dimension, label)
        for name, value in values.items():
            self._provider.add_metric(name=name, unit=_UNITS[name], value=value)
        self._provider.flush_metrics()
