import pytest

from rhailambda.event import BatchResponse, EventError, InvocationEvent, TaskRef


def test_event_round_trip() -> None:
    event = InvocationEvent("w1", (TaskRef("a", 1), TaskRef("b", 3)))
    assert InvocationEvent.from_json(event.to_json()) == event


def test_bare_ids_are_accepted_as_first_attempts() -> None:
    assert InvocationEvent.from_json({"workerId": "w", "tasks": ["a"]}).tasks == (TaskRef("a", 1),)


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"workerId": 1, "tasks": []},
        {"workerId": "w"},
    ],
)
def test_malformed_events_are_rejected(raw: object) -> None:
    with pytest.raises(EventError):
        InvocationEvent.from_json(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [{"taskId": ""}, "", {"taskId": "a", "attempt": 0}, {"taskId": "a", "attempt": True}, 3],
)
def test_a_malformed_task_is_set_aside_alone(bad: object) -> None:
    event = InvocationEvent.from_json({"workerId": "w", "tasks": ["x", bad, {"taskId": "y"}]})
    assert event.tasks == (TaskRef("x"), TaskRef("y")), "its neighbours still run"
    assert len(event.invalid) == 1 and event.invalid[0][1]


def test_rejected_ids_carry_their_reason_through_json() -> None:
    event = InvocationEvent("w", (TaskRef("a"), TaskRef("b")))
    response = BatchResponse({"a": "completed", "b": "rejected"}, {"b": "reply key is a hash"})
    parsed = BatchResponse.from_json(response.to_json(), event)
    assert parsed.rejected == {"b": "reply key is a hash"}
    assert parsed.failed_ids == frozenset()


def test_response_uses_the_partial_batch_convention() -> None:
    event = InvocationEvent("w", (TaskRef("a"), TaskRef("b"), TaskRef("c")))
    response = BatchResponse({"a": "completed", "b": "failed", "c": "skipped"})
    raw = response.to_json()
    assert raw["batchItemFailures"] == [{"itemIdentifier": "b"}]
    assert BatchResponse.from_json(raw, event).failed_ids == {"b"}


def test_ids_a_function_does_not_mention_count_as_done() -> None:
    event = InvocationEvent("w", (TaskRef("a"), TaskRef("b")))
    parsed = BatchResponse.from_json({"batchItemFailures": [{"itemIdentifier": "b"}]}, event)
    assert parsed.outcomes == {"a": "completed", "b": "failed"}
