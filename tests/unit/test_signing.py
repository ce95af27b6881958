"""Signed tasks: the PROTOCOL.md test vector, the policy's decisions, key files (no network)."""

from __future__ import annotations

import hashlib
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rhailambda import protocol as p
from rhailambda.errors import SettingError
from rhailambda.settings import Env, ProtocolSettings, SignatureSettings
from rhailambda.signing import (
    KeyFileError,
    SigningKey,
    canonical_message,
    check_task,
    public_key_from_hex,
    task_digest,
    verify_digest,
)

PROTOCOL_MD = (Path(__file__).resolve().parents[2] / "PROTOCOL.md").read_text()
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# The test vector, as PROTOCOL.md gives it (test_the_vector_is_the_one_in_protocol_md).
SECRET = "2126a36cd80b93c84d1ae877f7c212689396b302d67801b40568e569c0b5846f"
PUBLIC = "03b0aa8125995f85a60468a3637bcb6de614fe9cf85cc9998d590c081935eef5e9"
TASK_ID = "0b9d5b3e-5f43-4a1c-9d6e-2f1a8c7e4b10"
SCRIPT = 'let who = "wörld ✓";\nprint("a\\\\b");\n`héllo ${who}`'
CREATED_AT = "2026-01-01T00:00:00+00:00"
DIGEST = "e3e59fcfc5f99b19c8950a6dc20cbc7c8982d4165ff7636ae8a7f5c570249ab6"
SIGNATURE = (
    "db0082e6f109beede51a4e6ba66dc3b728b46a91834552347f8343b4e6f28481"
    "56788d4f8a3cea0ef9bf5aee11f9768da2ac16fc138d144f73db21a7d7059589"
)
NOW = datetime.fromisoformat(CREATED_AT).timestamp() + 10  # the vector is 10 s old


def _section(title: str) -> str:
    return PROTOCOL_MD.split(f"### {title}", 1)[1].split("\n### ", 1)[0]


def _fields(**changes: str) -> p.TaskFields:
    raw = {
        "taskId": TASK_ID,
        "contextId": PUBLIC,
        "callerId": PUBLIC,
        "script": SCRIPT,
        "createdAt": CREATED_AT,
        "status": "pending",
        "signature": SIGNATURE,
        **changes,
    }
    return p.TaskFields.from_hash(TASK_ID, raw)


# --- the test vector -----------------------------------------------------------------
def test_the_vector_is_the_one_in_protocol_md() -> None:
    vector = _section("Test vector")
    for value in (SECRET, PUBLIC, TASK_ID, CREATED_AT, DIGEST, SIGNATURE):
        assert f"`{value}`" in vector, value
    script = re.search(r"The script:\n\n```\n(.*?)\n```", vector, re.S)
    assert script is not None and script.group(1) == SCRIPT
    message = re.search(r"The canonical message \(one line\):\n\n```\n(.*?)\n```", vector, re.S)
    assert message is not None
    assert message.group(1).encode() == canonical_message(
        TASK_ID, PUBLIC, PUBLIC, SCRIPT, CREATED_AT
    )
    assert hashlib.sha256(b"rhailib-task-v1 test key").hexdigest() == SECRET


def test_digest_of_the_canonical_message() -> None:
    message = canonical_message(TASK_ID, PUBLIC, PUBLIC, SCRIPT, CREATED_AT)
    assert len(message) == 289
    assert b" " not in message.split(b'"let')[0], "no whitespace between tokens"
    assert "wörld ✓".encode() in message, "non-ASCII kept as is"
    assert task_digest(TASK_ID, PUBLIC, PUBLIC, SCRIPT, CREATED_AT).hex() == DIGEST


def test_the_signature_verifies_and_rfc6979_signing_gives_it_again() -> None:
    key = SigningKey.from_hex(SECRET)
    assert key.public_key == PUBLIC
    public = public_key_from_hex(PUBLIC)
    assert public is not None
    assert verify_digest(public, bytes.fromhex(DIGEST), bytes.fromhex(SIGNATURE)) is None
    assert key.sign_task(TASK_ID, PUBLIC, PUBLIC, SCRIPT, CREATED_AT) == SIGNATURE


def test_an_independent_implementation_agrees() -> None:
    """OpenSSL (through ``cryptography``) derives the same key, signature and verdict."""
    ec = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ec")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import utils
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    secret = ec.derive_private_key(int(SECRET, 16), ec.SECP256K1())
    compressed = secret.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    assert compressed.hex() == PUBLIC
    prehashed = utils.Prehashed(hashes.SHA256())
    try:
        der = secret.sign(bytes.fromhex(DIGEST), ec.ECDSA(prehashed, deterministic_signing=True))
    except TypeError:  # cryptography < 44: no RFC 6979; the verify below still counts
        pass
    else:
        r, s = utils.decode_dss_signature(der)
        s = min(s, _N - s)
        assert f"{r:064x}{s:064x}" == SIGNATURE
    sig = bytes.fromhex(SIGNATURE)
    der = utils.encode_dss_signature(int.from_bytes(sig[:32]), int.from_bytes(sig[32:]))
    secret.public_key().verify(der, bytes.fromhex(DIGEST), ec.ECDSA(prehashed))


def test_the_snippet_in_protocol_md_runs() -> None:
    snippet = re.search(r"```python\n(.*?)```", _section("Test vector"), re.S)
    assert snippet is not None
    exec(compile(snippet.group(1), "PROTOCOL.md", "exec"), {})


def test_json_escapes_are_the_documented_ones() -> None:
    message = canonical_message("t", "c", "k", 'q" b\\ \x08\x0c\n\r\t \x01\x1f / \x7f \u2028', "x")
    assert message.decode().split(",")[4] == (
        '"q\\" b\\\\ \\b\\f\\n\\r\\t \\u0001\\u001f / \x7f \u2028"'
    )


# --- the policy ----------------------------------------------------------------------
VERIFY = SignatureSettings()
REQUIRE = SignatureSettings(policy="require")


def test_a_correct_signature_is_verified() -> None:
    verdict = check_task(VERIFY, "w", TASK_ID, _fields(), NOW)
    assert (verdict.verified, verdict.error) == (True, None)


@pytest.mark.parametrize("field", ["taskId", "contextId", "callerId", "script", "createdAt"])
def test_one_flipped_bit_in_any_signed_field_is_refused(field: str) -> None:
    value = _fields().raw[field]
    flipped = chr(ord(value[-1]) ^ 1)
    if field == "taskId":  # the queued id is what is signed: the hash moved to another id
        changed = p.TaskFields.from_hash(value[:-1] + flipped, {**_fields().raw, field: ""})
        verdict = check_task(VERIFY, "w", changed.task_id, changed, NOW)
    else:
        verdict = check_task(VERIFY, "w", TASK_ID, _fields(**{field: value[:-1] + flipped}), NOW)
    assert not verdict.verified
    assert verdict.error is not None and verdict.error.startswith("invalid signature")


@pytest.mark.parametrize("bit", [0, 255, 256, 511])
def test_one_flipped_bit_in_the_signature_is_refused(bit: int) -> None:
    sig = bytearray(bytes.fromhex(SIGNATURE))
    sig[bit // 8] ^= 1 << (bit % 8)
    verdict = check_task(VERIFY, "w", TASK_ID, _fields(signature=sig.hex()), NOW)
    assert verdict.error is not None and verdict.error.startswith("invalid signature")


def test_a_hash_copied_under_a_new_id_is_refused() -> None:
    verdict = check_task(VERIFY, "w", "another-id", _fields(), NOW)
    assert verdict.error is not None and "taskId" in verdict.error


def test_a_signature_by_another_key_is_refused() -> None:
    other = SigningKey.generate()
    signature = other.sign_task(TASK_ID, PUBLIC, PUBLIC, SCRIPT, CREATED_AT)
    verdict = check_task(VERIFY, "w", TASK_ID, _fields(signature=signature), NOW)
    assert verdict.error == "invalid signature: it does not match the task's fields and callerId"


def test_a_high_s_signature_is_refused() -> None:
    sig = bytes.fromhex(SIGNATURE)
    high = sig[:32] + (_N - int.from_bytes(sig[32:])).to_bytes(32)
    verdict = check_task(VERIFY, "w", TASK_ID, _fields(signature=high.hex()), NOW)
    assert verdict.error is not None and "s is high" in verdict.error


@pytest.mark.parametrize(
    ("caller", "signature"),
    [("alice", SIGNATURE), ("02" + "00" * 32, SIGNATURE), (PUBLIC, "zz"), (PUBLIC, "00" * 64)],
)
def test_malformed_keys_and_signatures_are_refused(caller: str, signature: str) -> None:
    verdict = check_task(VERIFY, "w", TASK_ID, _fields(callerId=caller, signature=signature), NOW)
    assert verdict.error is not None and verdict.error.startswith("invalid signature")


@pytest.mark.parametrize(
    ("offset_s", "valid"), [(-3600 - 60, True), (-3600 - 61, False), (60, True), (61, False)]
)
def test_created_at_must_be_within_max_age_and_skew(offset_s: int, valid: bool) -> None:
    key = SigningKey.from_hex(SECRET)
    created = (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=offset_s)).isoformat()
    signature = key.sign_task(TASK_ID, PUBLIC, PUBLIC, SCRIPT, created)
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    verdict = check_task(VERIFY, "w", TASK_ID, _fields(createdAt=created, signature=signature), now)
    assert verdict.verified is valid
    if not valid:
        assert verdict.error is not None and verdict.error.startswith("invalid signature")
        assert "expired" in verdict.error or "future" in verdict.error


def test_a_created_at_without_offset_is_refused() -> None:
    key = SigningKey.from_hex(SECRET)
    signature = key.sign_task(TASK_ID, PUBLIC, PUBLIC, SCRIPT, "2026-01-01T00:00:00")
    fields = _fields(createdAt="2026-01-01T00:00:00", signature=signature)
    verdict = check_task(VERIFY, "w", TASK_ID, fields, NOW)
    assert verdict.error is not None and "RFC 3339" in verdict.error


def test_unsigned_tasks_run_unverified_under_verify_and_are_refused_under_require() -> None:
    unsigned = _fields(signature="")
    assert check_task(VERIFY, "w", TASK_ID, unsigned, NOW) == check_task(
        VERIFY, "w", TASK_ID, p.TaskFields.from_hash(TASK_ID, {"callerId": "alice"}), NOW
    )
    assert check_task(VERIFY, "w", TASK_ID, unsigned, NOW).error is None
    error = check_task(REQUIRE, "w", TASK_ID, unsigned, NOW).error
    assert error is not None and error.startswith("signature required")
    assert check_task(REQUIRE, "w", TASK_ID, _fields(), NOW).verified


def test_off_ignores_signatures() -> None:
    off = SignatureSettings(policy="off")
    assert check_task(off, "w", TASK_ID, _fields(signature="00" * 64), NOW).error is None
    assert not check_task(off, "w", TASK_ID, _fields(), NOW).verified


def test_listed_workers_require_signatures_whatever_the_policy() -> None:
    env = {"RHAILAMBDA_SIGNATURES": "off", "RHAILAMBDA_SIGNATURES_REQUIRE_WORKERS": "Pay Ments,b"}
    settings = SignatureSettings.from_env(Env(env))
    unsigned = _fields(signature="")
    assert check_task(settings, "pay_ments", TASK_ID, unsigned, NOW).error is not None
    assert check_task(settings, "b", TASK_ID, _fields(), NOW).verified
    assert check_task(settings, "other", TASK_ID, unsigned, NOW).error is None


def test_settings_from_env() -> None:
    assert SignatureSettings.from_env(Env({})) == SignatureSettings(
        policy="verify", require_workers=frozenset(), max_age_s=3600, clock_skew_s=60
    )
    with pytest.raises(SettingError, match="RHAILAMBDA_SIGNATURES"):
        SignatureSettings.from_env(Env({"RHAILAMBDA_SIGNATURES": "maybe"}))
    with pytest.raises(SettingError, match="RHAILAMBDA_SIGNATURE_MAX_AGE_S"):
        SignatureSettings.from_env(Env({"RHAILAMBDA_SIGNATURE_MAX_AGE_S": "0"}))


def test_done_markers_outlive_the_signature_window() -> None:
    """Function and shim both read it from their environment: every finish agrees."""
    assert ProtocolSettings.from_env(Env({})).done_ttl_s == 3600 + 2 * 60
    long_replies = Env({"RHAILAMBDA_REPLY_TTL_S": "86400"})
    assert ProtocolSettings.from_env(long_replies).done_ttl_s == 86400
    assert ProtocolSettings.from_env(Env({"RHAILAMBDA_SIGNATURES": "off"})).done_ttl_s == 3600
    required = Env({"RHAILAMBDA_SIGNATURES": "off", "RHAILAMBDA_SIGNATURES_REQUIRE_WORKERS": "w1"})
    assert ProtocolSettings.from_env(required).done_ttl_s == 3600 + 2 * 60


# --- keys ----------------------------------------------------------------------------
def test_key_file_round_trip_mode_0600_and_no_overwrite(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "caller.key"
    key.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", path.read_text())
    assert SigningKey.read(path).public_key == key.public_key
    with pytest.raises(KeyFileError, match="exists already"):
        SigningKey.generate().write(path)
    path.chmod(0o644)
    SigningKey.generate().write(path, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SigningKey.read(path).public_key != key.public_key


@pytest.mark.parametrize("text", ["", "abc", "zz" * 32, "00" * 32, "ff" * 32])
def test_bad_key_files_name_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(text)
    with pytest.raises(KeyFileError, match=r"bad\.key"):
        SigningKey.read(path)


def test_a_key_never_shows_its_secret() -> None:
    key = SigningKey.from_hex(SECRET)
    assert SECRET not in repr(key) and PUBLIC in repr(key)
