"""CircleSettings and the extension factory the function calls once per cold start."""

from __future__ import annotations

import pytest

import rhailambda.circle as circle
from rhailambda.circle import CircleExtension, CircleSettings, Limits
from rhailambda.circle.dynamo_store import DynamoCircleStore
from rhailambda.circle.memory_store import MemoryCircleStore
from rhailambda.circle.redis_store import RedisCircleStore
from rhailambda.errors import SettingError
from rhailambda.extension import ScriptContext
from rhailambda.settings import Env, ProtocolSettings


def test_defaults_use_the_tasks_redis() -> None:
    settings = CircleSettings.from_env(Env({"REDIS_URL": "redis://h:1/2"}))
    assert settings.backend == "redis"
    assert settings.redis_url == "redis://h:1/2"
    assert settings.limits == Limits()


def test_a_separate_redis_and_limits_can_be_given() -> None:
    env = Env(
        {
            "REDIS_URL": "redis://tasks:6379/0",
            "RHAILAMBDA_CIRCLE_REDIS_URL": "redis://:secret@data:6379/1",
            "RHAILAMBDA_CIRCLE_MAX_LIST": "50",
            "RHAILAMBDA_CIRCLE_MAX_WRITES": "10",
        }
    )
    settings = CircleSettings.from_env(env)
    assert settings.redis_url == "redis://:secret@data:6379/1"
    assert settings.limits.max_list == 50 and settings.limits.max_writes == 10
    assert "secret" not in repr(settings)


def test_dynamodb_needs_a_table() -> None:
    with pytest.raises(SettingError, match="RHAILAMBDA_CIRCLE_TABLE"):
        CircleSettings.from_env(Env({"RHAILAMBDA_CIRCLE_BACKEND": "dynamodb"}))
    settings = CircleSettings.from_env(
        Env(
            {
                "RHAILAMBDA_CIRCLE_BACKEND": "DynamoDB",
                "RHAILAMBDA_CIRCLE_TABLE": "circles",
                "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
                "AWS_DEFAULT_REGION": "eu-west-1",
            }
        )
    )
    assert (settings.backend, settings.table) == ("dynamodb", "circles")
    assert (settings.endpoint_url, settings.region) == ("http://127.0.0.1:4566", "eu-west-1")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RHAILAMBDA_CIRCLE_BACKEND", "postgres"),
        ("RHAILAMBDA_CIRCLE_MAX_LIST", "0"),
        ("RHAILAMBDA_CIRCLE_MAX_RECORD_BYTES", "lots"),
        ("RHAILAMBDA_CIRCLE_REDIS_URL", "http://x"),
    ],
)
def test_bad_settings_fail_at_start_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingError, match=name):
        CircleSettings.from_env(Env({name: value}))


def test_factories_build_the_configured_store_without_io(monkeypatch: pytest.MonkeyPatch) -> None:
    # boto3 resolves credentials when it builds a client: without any it asks the
    # instance metadata service over the network (the unit tests' guard refuses it)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    ext = circle.extension_from_env(Env({"REDIS_URL": "redis://127.0.0.1:1/0"}))
    assert isinstance(ext.store, RedisCircleStore) and ext.name == "circle"
    env = {
        "RHAILAMBDA_CIRCLE_BACKEND": "dynamodb",
        "RHAILAMBDA_CIRCLE_TABLE": "t",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    assert isinstance(CircleExtension.from_env(Env(env)).store, DynamoCircleStore)


def test_a_session_offers_the_documented_functions() -> None:
    ext = CircleExtension(MemoryCircleStore())
    modules = ext.open(ScriptContext("a", "a", "w", "t")).modules()
    assert sorted(modules["db"]) == ["delete", "find", "get", "list", "save"]
    assert sorted(modules["circle"]) == ["add_member", "members", "remove_member"]


def test_all_names_are_exported() -> None:
    for name in circle.__all__:
        assert hasattr(circle, name)


def test_receipts_are_kept_as_long_as_replies() -> None:
    assert CircleSettings().receipt_ttl_s == ProtocolSettings().reply_ttl_s
    settings = CircleSettings.from_env(Env({"RHAILAMBDA_REPLY_TTL_S": "600"}))
    assert settings.receipt_ttl_s == 600
