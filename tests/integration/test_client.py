"""The client against a real redis-server, with nobody serving the queue."""

import json
import threading
from typing import Any

import pytest
import redis

from rhailambda.client import Client, Submission
from rhailambda.errors import ReplyTimeoutError


def test_submit_writes_what_the_dispatcher_writes(
    redis_url: str, redis_client: redis.Redis
) -> None:
    with Client(redis_url) as client:
        task_id = client.submit("40 + 2", worker_id="Worker One", context_id="c1", caller_id="a1")
    assert redis_client.lrange("rhailib:worker_one", 0, -1) == [task_id]
    task: dict[Any, Any] = redis_client.hgetall(f"rhailib:{task_id}")
    assert task["script"] == "40 + 2"
    assert (task["callerId"], task["contextId"], task["status"]) == ("a1", "c1", "pending")
    assert task["taskId"] == task_id and task["createdAt"].endswith("+00:00")


def test_queue_order_is_oldest_first_from_the_right(
    redis_url: str, redis_client: redis.Redis
) -> None:
    with Client(redis_url) as client:
        ids = client.submit_many([Submission("1", "w", "c", "a") for _ in range(3)])
    assert [redis_client.rpop("rhailib:w") for _ in ids] == ids


def test_wait_times_out_when_no_shim_runs(redis_url: str) -> None:
    with Client(redis_url) as client:
        task_id = client.submit("1", worker_id="w", context_id="c", caller_id="a")
        with pytest.raises(ReplyTimeoutError) as info:
            client.wait(task_id, timeout_s=0.3)
    assert info.value.task_id == task_id


def test_status_reads_the_hash(redis_url: str) -> None:
    with Client(redis_url) as client:
        task_id = client.submit("1", worker_id="w", context_id="c", caller_id="a")
        assert client.status(task_id) == "pending"
        assert client.status("nope") is None


def test_wait_many_collects_replies_in_any_order(redis_url: str, redis_client: redis.Redis) -> None:
    with Client(redis_url) as client:
        ids = [f"t{i}" for i in range(300)]

        def reply_later() -> None:
            for task_id in reversed(ids):
                body = {"taskId": task_id, "status": "completed", "output": task_id, "error": None}
                redis_client.lpush(f"rhailib:reply:{task_id}", json.dumps(body))

        thread = threading.Thread(target=reply_later)
        thread.start()
        replies = client.wait_many(ids, timeout_s=10)
        thread.join()
    assert {t: r.output for t, r in replies.items()} == {t: t for t in ids}
    assert all(r.ok for r in replies.values())
