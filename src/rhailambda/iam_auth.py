"""IAM authentication for ElastiCache: a SigV4-presigned token as the AUTH password.

ElastiCache (Valkey or Redis OSS, serverless or node-based) accepts, for a user with
IAM authentication, a token that is a presigned ``GET http://<cache>/?Action=connect
&User=<user>`` of the service ``elasticache`` (``&ResourceType=ServerlessCache`` for a
serverless cache), valid for 15 minutes, sent as ``AUTH <user> <token>`` when a
connection opens. A connection stays logged in after the token expires (ElastiCache
closes it after 12 hours; it is opened again with a new token).

Turned on from the URL, so every process and the circle store read it the same way
(see :mod:`rhailambda.redis_url`)::

    rediss://my-user@my-cache-abc123.serverless.use1.cache.amazonaws.com:6379?iam_cache=my-cache

``iam_serverless=no`` for a node-based cluster or replication group, ``iam_region``
when ``AWS_REGION`` is not the cache's region. The token is made here with ``hmac``
(no botocore import on the function's cold start) and is renewed when it is
:data:`REFRESH_S` old, well before its expiry. Credentials come from the
environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``:
what Lambda gives a function), else from botocore's own chain (ECS task role,
instance profile, SSO...). Neither the token nor the keys are ever logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from rhailambda.errors import SettingError

__all__ = ["EXPIRES_S", "REFRESH_S", "Credentials", "IamAuth", "presign"]

#: how long a token is valid (ElastiCache's maximum)
EXPIRES_S = 900
#: a token this old is replaced by a new one for the next connection
REFRESH_S = 600
_SERVICE = "elasticache"


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(access_key={self.access_key[:4]}...)"


def _q(value: str) -> str:
    return quote(value, safe="-_.~")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def presign(
    cache_name: str,
    user: str,
    region: str,
    credentials: Credentials,
    now: float,
    *,
    serverless: bool = True,
) -> str:
    """The token for ``user`` on ``cache_name``: the presigned URL without ``http://``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    scope = f"{stamp[:8]}/{region}/{_SERVICE}/aws4_request"
    params = {"Action": "connect", "User": user}
    if serverless:
        params["ResourceType"] = "ServerlessCache"
    params |= {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{credentials.access_key}/{scope}",
        "X-Amz-Date": stamp,
        "X-Amz-Expires": str(EXPIRES_S),
        "X-Amz-SignedHeaders": "host",
    }
    if credentials.token:
        params["X-Amz-Security-Token"] = credentials.token
    query = "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(params.items()))
    empty = hashlib.sha256(b"").hexdigest()
    canonical = f"GET\n/\n{query}\nhost:{cache_name}\n\nhost\n{empty}"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + credentials.secret_key).encode(), stamp[:8])
    for part in (region, _SERVICE, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{cache_name}/?{query}&X-Amz-Signature={signature}"


def credentials_from(env: Mapping[str, str]) -> Credentials:
    """The environment's keys, else botocore's credential chain (imported only then)."""
    access, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
    if access and secret:
        return Credentials(access, secret, env.get("AWS_SESSION_TOKEN") or None)
    try:
        import botocore.session
    except ImportError:  # pragma: no cover - botocore ships with boto3, a dependency
        raise SettingError("REDIS_URL", "iam_cache needs AWS credentials") from None
    found = botocore.session.get_session().get_credentials()
    if found is None:
        raise SettingError("REDIS_URL", "iam_cache is set but no AWS credentials were found")
    frozen = found.get_frozen_credentials()
    return Credentials(str(frozen.access_key), str(frozen.secret_key), frozen.token or None)


class IamAuth:
    """The AUTH password of an IAM user: a token, renewed when :data:`REFRESH_S` old."""

    def __init__(
        self,
        cache_name: str,
        user: str,
        region: str,
        *,
        serverless: bool = True,
        credentials: Callable[[], Credentials] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not cache_name or not user or not region:
            raise SettingError(
                "REDIS_URL",
                "iam_cache needs the cache name, a user in the URL (rediss://user@host) "
                "and a region (AWS_REGION or iam_region)",
            )
        self.cache_name, self.user, self.region = cache_name, user, region
        self.serverless = serverless
        self._credentials = credentials or (lambda: credentials_from(os.environ))
        self._clock = clock
        self._lock = threading.Lock()
        self._token: tuple[float, str] | None = None

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now - self._token[0] >= REFRESH_S:
                made = presign(
                    self.cache_name,
                    self.user,
                    self.region,
                    self._credentials(),
                    now,
                    serverless=self.serverless,
                )
                self._token = (now, made)
            return self._token[1]

    def __repr__(self) -> str:
        kind = "serverless" if self.serverless else "cluster"
        return f"IamAuth({self.user}@{self.cache_name}, {self.region}, {kind})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IamAuth) and (
            self.cache_name,
            self.user,
            self.region,
            self.serverless,
        ) == (other.cache_name, other.user, other.region, other.serverless)

    def __hash__(self) -> int:
        return hash((self.cache_name, self.user, self.region, self.serverless))
