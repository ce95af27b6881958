"""The poller (the shim as a scheduled Lambda): its settings and its time budget.

The whole run (drain, hand-back, DeadLetterDepth) is exercised on the built package
under the Runtime Interface Emulator in tests/e2e/test_aws_stack.py.
"""

from __future__ import annotations

import pytest
from support.lambda_context import FakeContext

from rhailambda.shim import poller

ENV = {
    "RHAILAMBDA_WORKERS": "w1,w2",
    "RHAILAMBDA_FUNCTION_NAME": "stack-ScriptFunction-ABC",
    "RHAILAMBDA_FUNCTION_TIMEOUT_S": "60",
    "RHAILAMBDA_SHUTDOWN_TIMEOUT_S": "60",
    "REDIS_URL": "redis://127.0.0.1:1/0",
    "AWS_REGION": "us-east-1",  # Lambda always sets it
}


def test_settings_default_to_the_lambda_backend() -> None:
    settings = poller.settings_from_env(ENV)
    assert settings.function.backend == "lambda"
    assert settings.queues.worker_ids == ("w1", "w2")
    assert settings.function.function_name == "stack-ScriptFunction-ABC"


def test_the_secret_replaces_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_secret(arn: str) -> str:
        seen.append(arn)
        return "rediss://:token@cache.example:6379/0"

    monkeypatch.setattr(poller, "_secret_url", fake_secret)
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:redis-AbCdEf"
    settings = poller.settings_from_env({**ENV, "REDIS_SECRET_ARN": arn})
    assert seen == [arn]
    assert settings.redis.url == "rediss://:token@cache.example:6379/0"
    assert "token" not in repr(settings.redis)


def test_a_run_drains_all_but_the_hand_back_time() -> None:
    settings = poller.settings_from_env(ENV)
    # 900 s timeout, 60 s function timeout: stop taking 75 s before the end.
    assert poller.drain_budget_s(settings, 900.0) == 900.0 - 60.0 - poller.HAND_BACK_RESERVE_S


def test_a_run_too_short_to_drain_returns_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RHAILAMBDA_SHIM_ID", "stack-poller")
    result = poller.handler({}, FakeContext(remaining_ms=30_000, function_name="poller"))
    assert result["outcome"] == "skipped" and result["drainedS"] == 0.0
    assert result["shimId"].startswith("stack-poller-")  # always on: one id per run
