"""The function's Redis client without a server: URLs, encoding, errors, import cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis.connection

from rhailambda.errors import RedisResponseError, SettingError
from rhailambda.resp import Address, encode, parse_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", Address()),
        ("redis://cache.local", Address(host="cache.local")),
        ("redis://:s3cret@h:6380/2", Address(host="h", port=6380, db=2, password="s3cret")),
        (
            "rediss://app:p%40ss@h/1",
            Address(host="h", db=1, username="app", password="p@ss", tls=True),
        ),
        (
            "rediss://h?ssl_cert_reqs=none",
            Address(host="h", tls=True, tls_verify=False),
        ),
        (
            "rediss://h?ssl_ca_certs=/ca.pem&ssl_check_hostname=false",
            Address(host="h", tls=True, tls_ca_file="/ca.pem", tls_check_hostname=False),
        ),
        ("unix:///run/redis.sock?db=3", Address(unix_path="/run/redis.sock", db=3)),
        (
            "redis://h?socket_timeout=2.5&socket_connect_timeout=1",
            Address(host="h", socket_timeout_s=2.5, connect_timeout_s=1.0),
        ),
    ],
)
def test_urls_read_as_redis_py_reads_them(url: str, expected: Address) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://h", "unsupported scheme"),
        ("redis://h/x", "invalid literal"),
        ("redis://h?retry_on_timeout=yes", "unsupported query parameter 'retry_on_timeout'"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("unix://", "socket path"),
    ],
)
def test_bad_urls_fail_with_the_setting_named(url: str, needle: str) -> None:
    with pytest.raises(SettingError, match="REDIS_URL") as info:
        parse_url(url)
    assert needle in str(info.value)


@pytest.mark.parametrize("value", ["0", "1", "true", "False", "no", "YES", "n", "f", "on", "off"])
def test_flags_read_as_redis_py_reads_them_or_fail(value: str) -> None:
    """The shim's redis-py and the function read one REDIS_URL: never two meanings."""
    url = f"rediss://h?ssl_check_hostname={value}"
    theirs = redis.connection.parse_url(url)["ssl_check_hostname"]
    try:
        ours = parse_url(url).tls_check_hostname
    except SettingError:
        return
    assert ours == theirs


def test_ipv6_hosts() -> None:
    assert parse_url("redis://[::1]:6380/2") == Address(host="::1", port=6380, db=2)


def test_password_never_shows() -> None:
    address = parse_url("redis://user:hunter2@h:6379/0")
    assert "hunter2" not in repr(address)
    with pytest.raises(SettingError) as info:
        parse_url("redis://user:hunter2@h:6379/0?bogus=1")
    assert "hunter2" not in str(info.value)


def test_commands_areencoded_as_resp_arrays() -> None:
    assert encode([["SET", "k", "é"], ["INCRBY", "n", 5]]) == (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n*3\r\n$6\r\nINCRBY\r\n$1\r\nn\r\n$1\r\n5\r\n"
    )
    with pytest.raises(TypeError, match="bool"):
        encode([["SET", "k", True]])
    with pytest.raises(TypeError, match="NoneType"):
        encode([["SET", "k", None]])  # type: ignore[list-item]


def test_error_code_is_the_first_word() -> None:
    assert RedisResponseError("NOSCRIPT No matching script").code == "NOSCRIPT"
    assert RedisResponseError("").code == ""


def test_the_function_does_not_import_redis_py_asyncio_or_ssl() -> None:
    """The cold start: redis-py's import alone is most of a 150 ms budget; OpenSSL's
    hash module (_hashlib, 6-8 ms) and the curve library wait for a signed task."""
    code = (
        "import sys, json; import rhailambda.functions.handler; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('redis', 'asyncio', 'ssl', 'boto3', '_hashlib', 'coincurve'))))"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")  # this tree, not the venv's install
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin:/bin", "PYTHONPATH": src}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
