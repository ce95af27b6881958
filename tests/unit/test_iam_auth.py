"""IAM tokens for ElastiCache: ours equal botocore's presigned URL, renewed in time."""

from __future__ import annotations

import datetime
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from rhailambda import iam_auth
from rhailambda.errors import SettingError
from rhailambda.iam_auth import REFRESH_S, Credentials, IamAuth, presign
from rhailambda.redis_url import parse_url

NOW = datetime.datetime(2026, 12, 2, 17, 4, 5, tzinfo=datetime.UTC)


def _botocore(cache: str, user: str, creds: Credentials, serverless: bool) -> str:
    params = {"Action": "connect", "User": user}
    if serverless:
        params["ResourceType"] = "ServerlessCache"
    request = AWSRequest(method="GET", url=f"http://{cache}/", params=params)
    boto = BotoCredentials(creds.access_key, creds.secret_key, creds.token)
    auth = SigV4QueryAuth(boto, "elasticache", "eu-west-1", expires=900)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("botocore.auth.get_current_datetime", lambda: NOW.replace(tzinfo=None))
        auth.add_auth(request)
    return str(request.url).removeprefix("http://")


def _parts(token: str) -> tuple[str, dict[str, str]]:
    split = urlsplit("http://" + token)
    return split.netloc + split.path, dict(parse_qsl(split.query))


@pytest.mark.parametrize("serverless", [True, False])
@pytest.mark.parametrize("session", [None, "FwoG+session/token=="])
def test_our_token_is_botocores_presigned_url(serverless: bool, session: str | None) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", session)
    ours = presign("my-cache", "app user", "eu-west-1", creds, NOW.timestamp(),
                   serverless=serverless)  # fmt: skip
    theirs = _botocore("my-cache", "app user", creds, serverless)
    assert _parts(ours) == _parts(theirs)
    assert _parts(ours)[1]["X-Amz-Signature"]  # the one thing that proves the key


def test_a_token_is_renewed_before_it_expires() -> None:
    clock = [NOW.timestamp()]
    made: list[int] = []

    def creds() -> Credentials:
        made.append(1)
        return Credentials("AKID", "secret")

    auth = IamAuth("c", "u", "eu-west-1", credentials=creds, clock=lambda: clock[0])
    first = auth.token()
    clock[0] += REFRESH_S - 1
    assert auth.token() == first and len(made) == 1
    clock[0] += 1
    second = auth.token()
    assert second != first and len(made) == 2
    assert REFRESH_S < iam_auth.EXPIRES_S, "renewed while the old one is still valid"


def test_the_url_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    address = parse_url("rediss://app@cache.serverless.use1.cache.amazonaws.com:6379?iam_cache=c")
    assert address.iam == IamAuth("c", "app", "us-east-1")
    assert "iam" in repr(address) and "X-Amz" not in repr(address)
    other = parse_url("rediss://app@h:6379?iam_cache=c&iam_serverless=no&iam_region=eu-west-1")
    assert other.iam == IamAuth("c", "app", "eu-west-1", serverless=False)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("rediss://app:pw@h?iam_cache=c", "takes no password"),
        ("rediss://h?iam_cache=c", "needs the IAM-enabled user"),
        ("rediss://app@h?iam_region=x", "need iam_cache"),
        ("rediss://app@h?iam_cache=c&iam_serverless=maybe", "not a boolean"),
    ],
)
def test_a_wrong_iam_url_is_a_clear_error(
    url: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    with pytest.raises(SettingError, match=says) as info:
        parse_url(url)
    assert "pw" not in str(info.value)


def test_no_region_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(SettingError, match="needs a region"):
        parse_url("rediss://app@h?iam_cache=c")
