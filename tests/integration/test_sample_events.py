"""functions/events/*.json (the events `sam local invoke -e` takes) work with the handlers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from support.function_handler import fresh_handler
from support.lambda_context import FakeContext

from rhailambda.protocol import KeyLayout

EVENTS = Path(__file__).resolve().parents[2] / "functions" / "events"
LAYOUT = KeyLayout()


def _event(name: str) -> dict[str, Any]:
    return dict(json.loads((EVENTS / name).read_text()))


def test_every_sample_event_is_json_and_used_here() -> None:
    assert sorted(p.name for p in EVENTS.glob("*.json")) == [
        "poller-handover.json",
        "poller-schedule.json",
        "script-batch.json",
    ]


def test_the_script_batch_event_runs_its_tasks(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = _event("script-batch.json")
    ids = [t["taskId"] if isinstance(t, dict) else t for t in event["tasks"]]
    for task_id in ids:
        redis_client.hset(
            LAYOUT.task(task_id),
            mapping={"taskId": task_id, "script": "40 + 2", "callerId": "alice",
                     "contextId": "alice", "workerId": event["workerId"], "status": "pending",
                     "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"},
        )  # fmt: skip
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RHAILAMBDA_CIRCLE_ENABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    with fresh_handler() as handler_module:
        response = handler_module.handler(event, FakeContext(remaining_ms=300_000))
    assert response["outcomes"] == dict.fromkeys(ids, "completed")
    for task_id in ids:
        reply = json.loads(str(redis_client.lpop(LAYOUT.reply(task_id))))
        assert (reply["status"], reply["output"]) == ("completed", "42")


@pytest.mark.parametrize(
    ("name", "outcome"), [("poller-schedule.json", "idle"), ("poller-handover.json", "drained")]
)
def test_a_poller_event_on_demand_with_no_work_ends_at_once(
    name: str, outcome: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduled check finds nothing and returns idle; a hand-over run (a busy
    predecessor's successor) drains, and stops after the idle period."""
    for var, value in {
        "REDIS_URL": redis_url, "RHAILAMBDA_WORKERS": "worker1",
        "RHAILAMBDA_POLLER_MODE": "on-demand", "RHAILAMBDA_FUNCTION_NAME": "script-function",
        "RHAILAMBDA_SHUTDOWN_TIMEOUT_S": "5", "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test", "RHAILAMBDA_POLLER_IDLE_EXIT_S": "1",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }.items():  # fmt: skip
        monkeypatch.setenv(var, value)
    from rhailambda.shim.poller import handler

    result = handler(_event(name), FakeContext(remaining_ms=300_000))
    assert result["outcome"] == outcome, result
