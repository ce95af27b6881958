import json

import pytest

from rhailambda import protocol as p
from rhailambda.errors import SettingError
from rhailambda.settings import Env, ProtocolSettings, RedisSettings, redact_url


def test_default_layout_matches_protocol_md() -> None:
    layout = p.KeyLayout()
    assert layout.queue("worker1") == "rhailib:worker1"
    assert layout.task("t1") == "rhailib:t1"
    assert layout.reply("t1") == "rhailib:reply:t1"


def test_layout_is_configurable() -> None:
    layout = p.KeyLayout(prefix="app:", reply_template="{prefix}replies/{task_id}")
    assert layout.queue("w") == "app:w"
    assert layout.reply("t9") == "app:replies/t9"


@pytest.mark.parametrize("template", ["{prefix}reply", "{prefix}{nope}:{task_id}", "{task_id"])
def test_bad_reply_template_is_rejected(template: str) -> None:
    with pytest.raises(ValueError):
        p.KeyLayout(reply_template=template)


def test_bad_template_from_env_names_the_setting() -> None:
    with pytest.raises(SettingError, match="RHAILAMBDA_REPLY_KEY_TEMPLATE"):
        ProtocolSettings.from_env(Env({"RHAILAMBDA_REPLY_KEY_TEMPLATE": "reply"}))


def test_circle_keys_cannot_escape_their_context() -> None:
    layout = p.KeyLayout()
    assert layout.circle("a", "x").startswith("rhailambda:circle:{a}")


@pytest.mark.parametrize(("given", "expected"), [("Worker One", "worker_one"), ("w1", "w1")])
def test_worker_id_normalised_like_the_dispatcher(given: str, expected: str) -> None:
    assert p.normalize_worker_id(given) == expected


def test_snake_case_fields_are_accepted() -> None:
    fields = p.TaskFields.from_hash(
        "t1", {"script": "1", "caller_id": "bob", "context_id": "c1", "created_at": "then"}
    )
    assert (fields.caller_id, fields.context_id, fields.created_at) == ("bob", "c1", "then")


def test_reply_has_the_dispatcher_shape() -> None:
    fields = p.TaskFields.from_hash(
        "t1",
        {"taskId": "t1", "script": "40+2", "callerId": "a", "contextId": "b", "createdAt": "c"},
        "w",
    )
    reply = json.loads(
        p.build_reply(fields, status="completed", output="42", error=None, updated_at="u")
    )
    assert reply == {
        "taskId": "t1",
        "script": "40+2",
        "status": "completed",
        "output": "42",
        "error": None,
        "createdAt": "c",
        "updatedAt": "u",
        "callerId": "a",
        "contextId": "b",
        "workerId": "w",
    }


@pytest.mark.parametrize(
    ("text", "output", "error"),
    [
        ('say "hi"\\n\n\t\x00\x1f\x7f', "20", None),
        ("é ß 名前 😀 \u2028\u2029", None, "boom: «nope»"),
        ("\ud800 lone surrogate", "\udfff", "</script>"),
        ("", "", ""),
    ],
)
def test_reply_text_is_exactly_what_json_dumps_writes(
    text: str, output: str | None, error: str | None
) -> None:
    """The hand-written reply is byte for byte the compact, non-ASCII-escaping JSON a
    client (and the Rust dispatcher) always got."""
    fields = p.TaskFields.from_hash(
        text, {"script": text, "callerId": text, "contextId": text, "createdAt": text}, text
    )
    reply = p.build_reply(fields, status=text, output=output, error=error, updated_at=text)
    expected = {
        "taskId": text, "script": text, "status": text, "output": output, "error": error,
        "createdAt": text, "updatedAt": text, "callerId": text, "contextId": text,
        "workerId": text,
    }  # fmt: skip
    assert reply == json.dumps(expected, separators=(",", ":"), ensure_ascii=False)


def test_env_errors_name_the_variable() -> None:
    env = Env({"N": "ten", "B": "maybe", "F": "nan"})
    with pytest.raises(SettingError, match=r"^N:"):
        env.int("N", 1)
    with pytest.raises(SettingError, match=r"^B:"):
        env.bool("B", False)
    with pytest.raises(SettingError, match=r"^F:"):
        env.float("F", 1.0)
    with pytest.raises(SettingError, match="at least 1"):
        Env({"N": "0"}).int("N", 5, minimum=1)


def test_passwords_never_show() -> None:
    url = "rediss://default:s3cret@cache.example:6380/0"
    assert "s3cret" not in redact_url(url)
    assert "s3cret" not in repr(RedisSettings(url=url))
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_unsupported_redis_scheme_names_the_setting() -> None:
    with pytest.raises(SettingError, match="REDIS_URL"):
        RedisSettings(url="http://127.0.0.1")
