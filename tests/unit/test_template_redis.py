"""template.yaml: the Redis deployment parameters reach every function that talks to Redis."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aws_support import load_template, translate

from rhailambda.errors import SettingError
from rhailambda.settings import RedisSettings

VPC = {
    "RedisSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:redis-AbCdEf",
    "VpcSubnetIds": "subnet-1,subnet-2",
    "VpcSecurityGroupIds": "sg-1",
}


def _functions(cfn: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: r["Properties"]
        for name, r in cfn["Resources"].items()
        if r["Type"] == "AWS::Lambda::Function"
    }


@pytest.fixture(scope="module")
def cfn() -> dict[str, Any]:
    translated: dict[str, Any] = translate(load_template(), VPC)
    return translated


def test_every_function_gets_the_cluster_mode_and_the_vpc(cfn: dict[str, Any]) -> None:
    functions = _functions(cfn)
    assert {"ScriptFunction", "PollerFunction"} <= set(functions)
    for name, props in functions.items():
        env = props["Environment"]["Variables"]
        assert env["RHAILAMBDA_REDIS_CLUSTER"] == {"Ref": "RedisCluster"}, name
        vpc = props["VpcConfig"]["Fn::If"]
        assert vpc[0] == "UseVpc", name
        assert vpc[1]["SubnetIds"] == {"Ref": "VpcSubnetIds"}, name


def test_the_cluster_parameter_allows_exactly_what_the_settings_accept() -> None:
    param = load_template()["Parameters"]["RedisCluster"]
    assert param["Default"] == "auto"
    for value in param["AllowedValues"]:
        RedisSettings(url="redis://127.0.0.1:6379/0", cluster=value).address()
    assert sorted(param["AllowedValues"]) == ["auto", "no", "yes"]
    with pytest.raises(SettingError, match="RHAILAMBDA_REDIS_CLUSTER"):
        RedisSettings(url="redis://127.0.0.1:6379/0", cluster="maybe")


IAM = {"RedisIamCache": "tasks", "RedisIamUser": "app"}
_ARN = "arn:${AWS::Partition}:elasticache:${AWS::Region}:${AWS::AccountId}:"


def _connect_grants(cfn: dict[str, Any]) -> dict[str, list[Any]]:
    """Per role: the resources of every elasticache action it is granted."""
    out: dict[str, list[Any]] = {}
    for name, r in cfn["Resources"].items():
        if r["Type"] != "AWS::IAM::Role":
            continue
        for policy in r["Properties"].get("Policies", []):
            doc = policy.get("Fn::If", [None, policy])[1]["PolicyDocument"]
            for st in doc["Statement"]:
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                if any(a.startswith("elasticache:") for a in actions):
                    assert actions == ["elasticache:Connect"], (name, actions)
                    out.setdefault(name, []).append(st["Resource"])
    return out


def test_iam_auth_grants_connect_on_the_cache_and_user_only() -> None:
    cfn = translate(load_template(), {**VPC, **IAM})
    grants = _connect_grants(cfn)
    expected = [
        [
            {"Fn::Sub": _ARN + "serverlesscache:${RedisIamCache}"},
            {"Fn::Sub": _ARN + "replicationgroup:${RedisIamCache}"},
            {"Fn::Sub": _ARN + "user:${RedisIamUser}"},
        ]
    ]
    assert grants == {"ScriptFunctionRole": expected, "PollerFunctionRole": expected}
    for name, r in cfn["Resources"].items():
        for policy in r.get("Properties", {}).get("Policies", []):
            if "Fn::If" in policy and policy["Fn::If"][1]["PolicyName"] == "redis-iam":
                assert policy["Fn::If"][0] == "UseRedisIam", name


def test_iam_parameters_accept_names_and_refuse_wildcards() -> None:
    import re

    params = load_template()["Parameters"]
    for name, value in IAM.items():
        pattern = re.compile(params[name]["AllowedPattern"])
        assert pattern.match(value) and pattern.match("")
        assert not pattern.match("*") and not pattern.match(value + "*"), name


def test_dead_letter_retention_reaches_every_function_and_the_settings(
    cfn: dict[str, Any],
) -> None:
    from rhailambda.settings import Env, ProtocolSettings

    for name, props in _functions(cfn).items():
        env = props["Environment"]["Variables"]
        assert env["RHAILAMBDA_DLQ_RETENTION_S"] == {"Ref": "DeadLetterRetentionSeconds"}, name
    default = load_template()["Parameters"]["DeadLetterRetentionSeconds"]["Default"]
    assert default == ProtocolSettings().dlq_retention_s
    given = ProtocolSettings.from_env(Env({"RHAILAMBDA_DLQ_RETENTION_S": "60"}))
    assert given.dlq_retention_s == 60
