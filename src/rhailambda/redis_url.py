"""Redis URLs as redis-py reads them, for :mod:`rhailambda.resp` (function, client, shim takers).

``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) and
``unix:///path/to.sock?db=N``; query: ``db``, ``ssl_cert_reqs``, ``ssl_ca_certs``,
``ssl_check_hostname``, ``socket_timeout``, ``socket_connect_timeout``, and for IAM
authentication on ElastiCache ``iam_cache`` (with ``iam_serverless``, ``iam_region``:
see :mod:`rhailambda.iam_auth`). Anything
else is refused by name, and so is any spelling redis-py would read differently:
one URL never means two things to the shim (redis-py) and the function.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from rhailambda.errors import SettingError
from rhailambda.redaction import redact_url

if TYPE_CHECKING:
    from rhailambda.iam_auth import IamAuth

__all__ = ["Address", "parse_url"]

_DEFAULT_PORT = 6379
# What redis-py's to_bool reads alike (it takes any other string as true, "off" too):
# anything else is refused, so one URL never means two things to the shim and function.
_TRUE = {"1", "t", "true", "y", "yes"}
_FALSE = {"0", "f", "false", "n", "no"}


@dataclass(frozen=True, slots=True)
class Address:
    """Where Redis is and how to log in. ``password`` is never shown by ``repr``."""

    host: str = "127.0.0.1"
    port: int = _DEFAULT_PORT
    unix_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_verify: bool = True
    tls_check_hostname: bool = True
    tls_ca_file: str | None = None
    socket_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    cluster: str = "auto"  # auto | yes | no (RHAILAMBDA_REDIS_CLUSTER), not part of the URL
    #: the AUTH password is an IAM token made for each new connection (``iam_cache``)
    iam: IamAuth | None = None

    def __repr__(self) -> str:
        where = self.unix_path or f"{self.host}:{self.port}"
        auth = ", auth" if self.password is not None else ", iam" if self.iam else ""
        return f"Address({where}, db={self.db}, tls={self.tls}{auth})"


def _flag(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{name}={value!r} is not a boolean")


def parse_url(url: str, *, setting: str = "REDIS_URL") -> Address:
    """The :class:`Address` of a redis://, rediss:// or unix:// URL (SettingError if bad)."""
    try:
        return _parse_url(url)
    except ValueError as exc:
        raise SettingError(setting, f"{_scrubbed(str(exc), url)} in {redact_url(url)!r}") from None


def _scrubbed(message: str, url: str) -> str:
    """``message`` unless it quotes a piece of the URL's user-info (a password)."""
    userinfo, at, _ = url.partition("://")[2].rpartition("@")
    if not at:
        return message
    pieces = [p for p in re.split(r"[:/?#@&=]", userinfo) if len(p) >= 2]
    if not any(piece in message for piece in pieces) and userinfo not in message:
        return message
    return (
        "the URL does not parse (a '#', '?', '/' or '@' in a user name or password "
        "must be percent-encoded: %23, %3F, %2F, %40)"
    )


def _parse_url(url: str) -> Address:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"unsupported scheme {parts.scheme!r} (redis, rediss, unix)")
    fields: dict[str, Any] = {"tls": parts.scheme == "rediss"}
    iam: dict[str, str] = {}
    if parts.username:
        fields["username"] = unquote(parts.username)
    if parts.password is not None:
        fields["password"] = unquote(parts.password)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs a socket path")
        fields["unix_path"] = unquote(parts.path)
    else:
        fields["host"] = parts.hostname or "127.0.0.1"
        fields["port"] = parts.port or _DEFAULT_PORT
        path = parts.path.strip("/")
        if path:
            fields["db"] = int(path)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "db":
            fields["db"] = int(value)
        elif name == "ssl_cert_reqs":
            if value.lower() not in ("none", "optional", "required"):
                raise ValueError(f"ssl_cert_reqs={value!r} (none, optional, required)")
            fields["tls_verify"] = value.lower() != "none"
        elif name == "ssl_check_hostname":
            fields["tls_check_hostname"] = _flag(name, value)
        elif name == "ssl_ca_certs":
            fields["tls_ca_file"] = value
        elif name == "socket_timeout":
            fields["socket_timeout_s"] = float(value)
        elif name == "socket_connect_timeout":
            fields["connect_timeout_s"] = float(value)
        elif name in ("iam_cache", "iam_serverless", "iam_region"):
            iam[name] = value
        else:
            raise ValueError(
                f"unsupported query parameter {name!r} (db, ssl_cert_reqs, ssl_ca_certs, "
                "ssl_check_hostname, socket_timeout, socket_connect_timeout, iam_cache, "
                "iam_serverless, iam_region)"
            )
    if fields.get("db", 0) < 0:
        raise ValueError("the database number must be >= 0")
    if iam:
        fields["iam"] = _iam(iam, fields)
    return Address(**fields)


def _iam(params: dict[str, str], fields: dict[str, Any]) -> IamAuth:
    import os

    from rhailambda.iam_auth import IamAuth  # hashlib/hmac only when IAM is used

    if "iam_cache" not in params:
        raise ValueError("iam_serverless and iam_region need iam_cache (the cache's name)")
    if "password" in fields:
        raise ValueError("a URL with iam_cache takes no password: the token is the password")
    if not fields.get("username"):
        raise ValueError("iam_cache needs the IAM-enabled user in the URL: rediss://user@host")
    region = params.get("iam_region") or os.environ.get(
        "AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "")
    )
    if not region:
        raise ValueError("iam_cache needs a region: set AWS_REGION or iam_region")
    serverless = _flag("iam_serverless", params.get("iam_serverless", "yes"))
    return IamAuth(params["iam_cache"], fields["username"], region, serverless=serverless)
