"""template.yaml: least-privilege IAM, and the parameters, alarms and outputs users rely on.

The template is expanded offline by aws-sam-translator (what the SAM transform does
at deploy time) and checked in every combination of its conditions that changes
IAM: a wildcard action, or a wildcard resource where a narrower one exists, fails.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aws_support import (
    REPO_ROOT,
    Statement,
    iam_statements,
    load_template,
    managed_policy_arns,
    translate,
)

#: ("*" resource, actions) allowed, each with the reason and whether the statement must
#: carry an IAM condition. Nothing else may use "*".
WILDCARD_RESOURCE_ALLOWED: dict[frozenset[str], tuple[str, bool]] = {
    frozenset({"cloudwatch:PutMetricData"}): (
        "no resource-level permissions; must carry a cloudwatch:namespace condition",
        True,
    ),
    frozenset({"xray:PutTraceSegments", "xray:PutTelemetryRecords"}): (
        "no resource-level permissions and no condition keys; only with Tracing=true "
        "(tests/unit/test_template_alarms.py checks the UseTracing condition)",
        False,
    ),
}
#: Managed policies a role may attach, with the reason and the condition it must sit under.
MANAGED_POLICIES_ALLOWED: dict[str, tuple[str, str]] = {
    "AWSLambdaVPCAccessExecutionRole": (
        "ENI actions for the VPC attachment have no resource-level permissions",
        "UseVpc",
    ),
}

BASE = {"RedisUrl": "rediss://:secret@cache.example:6379/0"}
SCENARIOS: dict[str, dict[str, str]] = {
    "defaults": BASE,
    "secret-vpc": {
        "RedisSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:redis-AbCdEf",
        "VpcSubnetIds": "subnet-1,subnet-2",
        "VpcSecurityGroupIds": "sg-1",
        "FunctionReservedConcurrency": "50",
    },
    "redis-circle-no-poller": {**BASE, "CircleBackend": "redis", "DeployPoller": "false"},
}


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def cfn(request: pytest.FixtureRequest, sam: dict[str, Any]) -> dict[str, Any]:
    return translate(sam, SCENARIOS[request.param])


def _strings(node: Any) -> list[str]:
    """Every literal string in a node (Fn::Sub templates included)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    return []


def iam_violations(cfn: dict[str, Any]) -> list[str]:
    """What a least-privilege review would reject, one line each."""
    problems: list[str] = []
    statements: list[Statement] = iam_statements(cfn)
    for st in statements:
        where = f"{st.role}/{st.policy}/{st.body.get('Sid', '?')}"
        if st.body.get("Effect") != "Allow":
            continue
        if "NotAction" in st.body or "NotResource" in st.body:
            problems.append(f"{where}: NotAction/NotResource")
        actions = [a for a in st.values("Action") if isinstance(a, str)]
        problems += [f"{where}: wildcard action {a!r}" for a in actions if "*" in a]
        for resource in st.values("Resource"):
            wild = [s for s in _strings(resource) if "*" in s]
            if not wild:
                continue
            allowed = WILDCARD_RESOURCE_ALLOWED.get(frozenset(actions))
            if resource == "*" and allowed and (st.body.get("Condition") or not allowed[1]):
                continue
            problems.append(f"{where}: wildcard resource {wild} for {actions}")
    for role, arns in managed_policy_arns(cfn).items():
        for arn in arns:
            text = " ".join(_strings(arn))
            name = text.rsplit("/", 1)[-1]
            if name not in MANAGED_POLICIES_ALLOWED:
                problems.append(f"{role}: managed policy {text!r}")
    return problems


def test_no_wildcard_action_or_resource(cfn: dict[str, Any]) -> None:
    assert iam_violations(cfn) == []


def test_the_checker_rejects_wildcards(sam: dict[str, Any]) -> None:
    cfn = translate(sam, BASE)
    policies = cfn["Resources"]["ScriptFunctionRole"]["Properties"]["Policies"]
    policies.append(
        {
            "PolicyName": "bad",
            "PolicyDocument": {
                "Statement": [
                    {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"},
                    {"Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": "*"},
                ]
            },
        }
    )
    cfn["Resources"]["ScriptFunctionRole"]["Properties"]["ManagedPolicyArns"] = [
        "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
    ]
    problems = "\n".join(iam_violations(cfn))
    assert "wildcard action 's3:*'" in problems
    assert "wildcard resource ['arn:aws:s3:::b/*']" in problems
    assert "wildcard resource ['*'] for ['dynamodb:GetItem']" in problems
    assert "AWSLambdaBasicExecutionRole" in problems


def test_functions_use_the_written_out_roles(sam: dict[str, Any]) -> None:
    # SAM's generated roles attach AWSLambdaBasicExecutionRole (logs:* on "*").
    for name in ("ScriptFunction", "PollerFunction"):
        props = sam["Resources"][name]["Properties"]
        assert props["Role"] == {"Fn::GetAtt": ["".join([name, "Role"]), "Arn"]}
        assert "Policies" not in props


def test_the_vpc_policy_is_attached_only_with_a_vpc(sam: dict[str, Any]) -> None:
    for role in ("ScriptFunctionRole", "PollerFunctionRole"):
        arns = sam["Resources"][role]["Properties"]["ManagedPolicyArns"]
        condition, with_vpc, without = arns["Fn::If"]
        assert condition == MANAGED_POLICIES_ALLOWED["AWSLambdaVPCAccessExecutionRole"][1]
        assert "AWSLambdaVPCAccessExecutionRole" in str(with_vpc)
        assert without == {"Ref": "AWS::NoValue"}


def _statement(cfn: dict[str, Any], role: str, sid: str) -> Statement:
    matches = [s for s in iam_statements(cfn) if s.role == role and s.body.get("Sid") == sid]
    assert matches, f"no statement {sid} in {role}"
    return matches[0]


def test_each_permission_names_its_own_resource() -> None:
    cfn = translate(load_template(), SCENARIOS["secret-vpc"])
    invoke = _statement(cfn, "PollerFunctionRole", "InvokeScriptFunction")
    assert invoke.body["Action"] == "lambda:InvokeFunction"
    assert invoke.body["Resource"] == {"Fn::GetAtt": ["ScriptFunction", "Arn"]}
    secret = _statement(cfn, "ScriptFunctionRole", "ReadRedisUrl")
    assert secret.body["Action"] == "secretsmanager:GetSecretValue"
    assert secret.body["Resource"] == {"Ref": "RedisSecretArn"}
    table = _statement(cfn, "ScriptFunctionRole", "CircleData")
    assert table.body["Resource"] == {"Fn::GetAtt": ["CircleTable", "Arn"]}
    assert "dynamodb:Scan" not in table.body["Action"]
    logs = _statement(cfn, "ScriptFunctionRole", "WriteOwnLogGroup")
    assert logs.body["Resource"] == {"Fn::GetAtt": ["ScriptLogGroup", "Arn"]}
    assert "logs:CreateLogGroup" not in logs.values("Action")


def test_the_poller_role_cannot_touch_the_circle_table() -> None:
    cfn = translate(load_template(), BASE)
    poller = [s for s in iam_statements(cfn) if s.role == "PollerFunctionRole"]
    assert not any(a.startswith("dynamodb:") for s in poller for a in s.values("Action"))


EXPECTED_PARAMETERS = {
    "RedisUrl", "RedisSecretArn", "KeyPrefix", "ReplyTtlSeconds", "PreserveTasks",
    "VpcSubnetIds", "VpcSecurityGroupIds", "FunctionMemorySize", "FunctionTimeout",
    "FunctionReservedConcurrency", "CircleBackend", "EnablePointInTimeRecovery",
    "LogLevel", "LogRetentionDays", "DeployPoller", "WorkerIds", "BatchSize",
    "ShimConcurrency", "MaxAttempts", "PollerTimeout", "PollerMemorySize",
    "PollerMode", "PollerIdleExit", "MetricsNamespace", "ErrorAlarmThreshold",
    "DeadLetterAlarmThreshold", "AlarmTopicArn",
}  # fmt: skip


def test_parameters(sam: dict[str, Any]) -> None:
    assert set(sam["Parameters"]) >= EXPECTED_PARAMETERS
    assert sam["Parameters"]["RedisUrl"].get("NoEcho") is True


def test_alarms(sam: dict[str, Any]) -> None:
    alarms = {
        k: v["Properties"]
        for k, v in sam["Resources"].items()
        if v["Type"] == "AWS::CloudWatch::Alarm"
    }
    assert alarms["ScriptErrorsAlarm"]["MetricName"] == "Errors"
    assert alarms["ScriptErrorsAlarm"]["Dimensions"][0]["Value"] == {"Ref": "ScriptFunction"}
    assert alarms["PollerErrorsAlarm"]["Dimensions"][0]["Value"] == {"Ref": "PollerFunction"}
    dlq = alarms["DeadLetterDepthAlarm"]
    assert dlq["MetricName"] == "DeadLetterDepth"
    assert dlq["Namespace"] == {"Ref": "MetricsNamespace"}
    # The poller publishes it with Powertools' `service` dimension = its service name.
    poller_env = sam["Resources"]["PollerFunction"]["Properties"]["Environment"]["Variables"]
    assert dlq["Dimensions"] == [
        {"Name": "service", "Value": poller_env["POWERTOOLS_SERVICE_NAME"]}
    ]
    for props in alarms.values():
        assert props["TreatMissingData"] == "notBreaching"


def test_outputs(sam: dict[str, Any]) -> None:
    assert {
        "ScriptFunctionName",
        "ScriptFunctionArn",
        "CircleTableName",
        "PollerFunctionName",
    } <= set(sam["Outputs"])


def test_script_function_and_table(sam: dict[str, Any]) -> None:
    fn = sam["Resources"]["ScriptFunction"]
    glob = sam["Globals"]["Function"]
    assert fn["Properties"]["Handler"] == "rhailambda.functions.handler.handler"
    assert glob["Runtime"] in ("python3.12", "python3.13")
    assert glob["Architectures"] == ["x86_64"]
    assert fn["Metadata"]["BuildMethod"] == "makefile"
    table = sam["Resources"]["CircleTable"]["Properties"]
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    # the attribute the store writes on task receipts ("expires", epoch seconds)
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires", "Enabled": True}


def test_poller_is_a_singleton_on_a_schedule(sam: dict[str, Any]) -> None:
    props = sam["Resources"]["PollerFunction"]["Properties"]
    # the ending run and its successor overlap at a hand-over (both modes)
    assert props["ReservedConcurrentExecutions"] == 2
    assert sam["Parameters"]["PollerMode"]["Default"] == "on-demand"
    assert props["Events"]["EveryMinute"]["Properties"]["Schedule"] == "rate(1 minute)"
    # A busy poller's throttled trigger is dropped, not retried for hours.
    assert props["EventInvokeConfig"] == {"MaximumEventAgeInSeconds": 60, "MaximumRetryAttempts": 0}
    assert props["Timeout"] == {"Ref": "PollerTimeout"}


def test_every_variable_the_template_sets_is_read_by_the_code(sam: dict[str, Any]) -> None:
    names = set(sam["Globals"]["Function"]["Environment"]["Variables"])
    for fn in ("ScriptFunction", "PollerFunction"):
        names |= set(sam["Resources"][fn]["Properties"]["Environment"]["Variables"])
    source = "\n".join(p.read_text() for p in (REPO_ROOT / "src").rglob("*.py"))
    powertools = {n for n in names if n.startswith("POWERTOOLS_")} | {"LOG_LEVEL"}
    unread = sorted(n for n in names - powertools if not re.search(rf"\b{n}\b", source))
    assert unread == []
