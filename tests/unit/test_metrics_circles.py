"""The per-circle metrics: the top circles of each queue's window, labels any id survives.

The window is the real circle scheduler (shim.fair) the intake keeps; the output is
read as a user reads it: the Prometheus text parsed by prometheus-client's parser,
the EMF lines parsed as JSON.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rhailambda.shim.fair import CircleScheduler
from rhailambda.shim.metrics import (
    METRICS,
    TOP_CIRCLES,
    CircleSample,
    QueueSample,
    Sample,
    ShimCounters,
    top_circles,
)
from rhailambda.shim.metrics_emf import EmfPublisher
from rhailambda.shim.metrics_prom import render
from rhailambda.tenancy import MAX_TENANT_ID_CHARS, tenant_id_for

Series = dict[str, dict[tuple[str, str], float]]


def window(load: dict[str, tuple[int, int]]) -> CircleScheduler[str]:
    """A queue's window holding ``circle: (queued, running)``."""
    sched: CircleScheduler[str] = CircleScheduler()
    for circle, (queued, running) in load.items():
        for i in range(queued + running):
            sched.push(circle, f"{circle}/{i}")
    for circle, (_, running) in load.items():
        # pop_from takes this circle's oldest: they count as running until released
        assert len(sched.pop_from(circle, running)) == running
    return sched


def circle_series(sample: Sample) -> Series:
    """The circle gauges of a scrape of ``sample``: name -> (worker, circle) -> value."""
    out: Series = {}
    for family in text_string_to_metric_families(render(sample).decode()):
        for s in family.samples:
            if s.name.startswith("rhailambda_circle_"):
                key = (s.labels["worker"], s.labels["circle"])
                assert key not in out.get(s.name, {}), f"duplicate series {key}"
                out.setdefault(s.name, {})[key] = s.value
    return out


def sample_of(*circles: CircleSample) -> Sample:
    return Sample((QueueSample("w1", 0, 0.0, 0, 0, 0),), ShimCounters(), circles=circles)


def test_the_top_circles_by_queued_plus_running_busiest_first() -> None:
    load = {f"c{i:02}": (i, i % 3) for i in range(1, 16)}  # 15 circles, c15 busiest
    load["idle"] = (0, 0)
    w1 = window(load)
    w2 = window({"only": (0, 2)})  # running only: still shown
    rows = top_circles({"w1": w1, "w2": w2})
    mine = [r for r in rows if r.worker_id == "w1"]
    assert len(mine) == TOP_CIRCLES == 10
    busiest = sorted(load, key=lambda c: -sum(load[c]))[:10]
    assert [r.circle for r in mine] == busiest
    assert [r.rank for r in mine] == list(range(1, 11))
    assert all((r.queued, r.running) == load[r.circle] for r in mine)
    assert [(r.worker_id, r.rank, r.circle, r.queued, r.running) for r in rows[10:]] == [
        ("w2", 1, "only", 0, 2)
    ]


def test_ties_are_broken_by_circle_id_so_the_top_is_stable() -> None:
    w1 = window({c: (1, 0) for c in ("d", "b", "a", "c")})
    assert [r.circle for r in top_circles({"w1": w1}, top=3)] == ["a", "b", "c"]


def test_settled_and_handed_back_circles_leave_the_top() -> None:
    w1 = window({"a": (2, 1), "b": (0, 1)})
    assert {r.circle for r in top_circles({"w1": w1})} == {"a", "b"}
    w1.release("b")  # b's task settled
    w1.take_all()  # a's queued ids handed back (pause): only its running one is left
    assert [(r.circle, r.queued, r.running) for r in top_circles({"w1": w1})] == [("a", 0, 1)]
    w1.release("a")
    assert top_circles({"w1": w1}) == ()
    assert circle_series(sample_of(*top_circles({"w1": w1}))) == {}  # no series left


HOSTILE = [
    "x" * 5000,  # longer than any label should be
    "x" * 4999 + "y",  # the same prefix: must not share its label
    'quote " backslash \\ newline \n tab \t end',
    "circle=41",  # "=" starts the label's escapes: escaped itself, never read as "A"
    "circleA",
    "circle\x00A",
    "ünïcödé ☃ 租户",
    "\udc80 lone surrogate",  # not valid Unicode, but a Python str
    "",  # no circle
    " ",
    '{worker="w2"}',
]


def test_any_circle_id_gets_a_valid_distinct_bounded_label() -> None:
    load = {c: (i + 1, 0) for i, c in enumerate(HOSTILE)}
    rows = top_circles({"w1": window(load)}, top=len(HOSTILE))
    series = circle_series(sample_of(*rows))["rhailambda_circle_queued"]
    assert len(series) == len(HOSTILE)  # none lost, none merged
    by_label = {circle: value for (worker, circle), value in series.items() if worker == "w1"}
    for circle, (queued, _) in load.items():
        label = tenant_id_for(circle)
        assert by_label[label] == queued, circle
        assert 1 <= len(label) <= MAX_TENANT_ID_CHARS
        assert label.isascii() and label.isprintable()
    # A plain id is its own label: what an operator searches for.
    plain = top_circles({"w1": window({"tenant-42.eu": (1, 0)})})
    assert [r.circle for r in plain] == ["tenant-42.eu"]


def test_a_queue_with_many_circles_renders_a_bounded_number_of_series() -> None:
    """1,000 circles in one window, then 1,000 others: each scrape shows 10 per queue,
    and the circles that left the top have no series any more."""
    first = window({f"old{i}": (1 + i % 7, 0) for i in range(1000)})
    scrape1 = circle_series(sample_of(*top_circles({"w1": first, "w2": first})))
    assert all(len(s) == 2 * TOP_CIRCLES for s in scrape1.values())
    later = window({f"new{i}": (1 + i % 5, 1) for i in range(1000)})
    scrape2 = circle_series(sample_of(*top_circles({"w1": later})))
    assert all(len(s) == TOP_CIRCLES for s in scrape2.values())
    assert not any(c.startswith("old") for s in scrape2.values() for _, c in s)
    assert set(scrape2["rhailambda_circle_running"].values()) == {1.0}


def emf(sample: Sample, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    EmfPublisher("rhailambda-test", "rhailambda-shim").publish(sample)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def dimension_sets(line: dict[str, Any]) -> list[list[str]]:
    (directive,) = line["_aws"]["CloudWatchMetrics"]
    return list(directive["Dimensions"])


def test_emf_circle_lines_are_by_rank_with_the_circle_as_a_property(
    capsys: pytest.CaptureFixture[str],
) -> None:
    load = {c: (i + 1, i % 2) for i, c in enumerate(HOSTILE)}
    rows = top_circles({"w1": window(load)})
    lines = emf(sample_of(*rows), capsys)
    circle_lines = [line for line in lines if "circle_rank" in line]
    assert len(circle_lines) == TOP_CIRCLES
    for line, row in zip(circle_lines, rows, strict=True):
        assert [set(d) for d in dimension_sets(line)] == [{"service", "worker", "circle_rank"}]
        assert line["worker"] == "w1" and line["circle_rank"] == str(row.rank)
        assert line["circle"] == row.circle  # a property: searchable, not a metric
        assert line["CircleQueued"] == [row.queued] and line["CircleRunning"] == [row.running]
    # the queue's own line and the shim's line carry no circle
    others = [line for line in lines if "circle_rank" not in line]
    assert len(others) == 2 and not any("circle" in line for line in others)


def test_emf_dimension_values_stay_bounded_however_many_circles_come_and_go(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every publish has different circles; the CloudWatch metrics they make (one per
    name and dimension values) are at most queues x TOP_CIRCLES x 2, for ever."""
    seen: set[tuple[str, ...]] = set()
    circles_seen: set[str] = set()
    for publish in range(30):
        load = {f"p{publish}-{i}": (1 + i, 0) for i in range(20)}
        rows = top_circles({"w1": window(load), "w2": window(load)})
        for line in emf(sample_of(*rows), capsys):
            if "circle_rank" not in line:
                continue
            circles_seen.add(line["circle"])
            names = ("CircleQueued", "CircleRunning")
            seen |= {(n, line["worker"], line["circle_rank"]) for n in names}
    assert len(circles_seen) == 30 * TOP_CIRCLES
    assert len(seen) == 2 * 2 * TOP_CIRCLES


def test_every_circle_metric_is_in_the_table_with_both_names() -> None:
    circle = [m for m in METRICS if m.kind == "circle"]
    assert {(m.name, m.prom) for m in circle} == {
        ("CircleQueued", "rhailambda_circle_queued"),
        ("CircleRunning", "rhailambda_circle_running"),
    }
