"""The Prometheus text format of a :class:`~rhailambda.shim.metrics.Sample` (prometheus-client).

Names and help come from :data:`~rhailambda.shim.metrics.METRICS`: queue metrics are
gauges labelled ``worker``, circle metrics gauges labelled ``worker`` and ``circle``
(the top circles of each queue), the shim's are counters (``_total``) and a summary
of the batch duration (``_count``, ``_sum``). Each scrape reads a fresh sample, so the
values are Redis's (and the read-ahead window's) at that moment, not a cache: a circle
that left the top has no series in the next scrape (Prometheus marks it stale).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from rhailambda.shim.metrics import METRICS, Sample

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _SampleCollector(Collector):
    def __init__(self, sample: Sample) -> None:
        self._sample = sample

    def collect(self) -> Iterator[Metric]:
        c = self._sample.counters
        counters = {
            "Invocations": c.invocations,
            "InvocationErrors": c.invocation_errors,
            "Throttles": c.throttles,
        }
        for m in METRICS:
            if m.kind == "queue":
                gauge = GaugeMetricFamily(m.prom, m.help, labels=["worker"])
                for q in self._sample.queues:
                    value = q.values().get(m.name)
                    if value is not None:
                        gauge.add_metric([q.worker_id], value)
                yield gauge
            elif m.kind == "circle":
                gauge = GaugeMetricFamily(m.prom, m.help, labels=["worker", "circle"])
                for row in self._sample.circles:
                    gauge.add_metric([row.worker_id, row.circle], row.values()[m.name])
                yield gauge
            elif m.kind == "counter":
                yield CounterMetricFamily(m.prom, m.help, value=counters[m.name])
            else:
                yield SummaryMetricFamily(
                    m.prom, m.help, count_value=c.invocations, sum_value=c.batch_s
                )


def render(sample: Sample) -> bytes:
    """The exposition text of ``sample`` (its own registry: no process-wide state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SampleCollector(sample))
    return generate_latest(registry)
