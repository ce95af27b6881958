"""template.yaml: TenantIsolation on makes the script function tenant-isolated, and only then.

The template is expanded by aws-sam-translator (what the SAM transform does at
deploy time; it checks itself that a function with TenancyConfig has no event
source, SnapStart, provisioned concurrency or function URL) and linted by cfn-lint
with the parameter on and off: the SAM template itself, and the expanded one with
the TenantIsolation condition decided, so cfn-lint sees the TenancyConfig that
CloudFormation would get.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aws_support import REPO_ROOT, TEMPLATE, load_template, translate

BASE = {"RedisUrl": "rediss://:secret@cache.example:6379/0"}
CFN_LINT = REPO_ROOT / ".venv" / "bin" / "cfn-lint"
#: CloudFormation resources that would attach an event source or pre-warm the function
_FORBIDDEN_WITH_TENANCY = {
    "AWS::Lambda::EventSourceMapping",
    "AWS::Lambda::Url",
    "AWS::Lambda::Version",  # SnapStart and provisioned concurrency need a version
    "AWS::Lambda::Alias",
}


def _decide(node: Any, condition: str, value: bool) -> Any:
    """``node`` with every ``Fn::If`` on ``condition`` replaced by its branch."""
    if isinstance(node, list):
        return [_decide(item, condition, value) for item in node]
    if not isinstance(node, dict):
        return node
    if set(node) == {"Fn::If"} and node["Fn::If"][0] == condition:
        return _decide(node["Fn::If"][1 if value else 2], condition, value)
    decided = {k: _decide(v, condition, value) for k, v in node.items()}
    return {k: v for k, v in decided.items() if v != {"Ref": "AWS::NoValue"}}


def _expanded(on: bool) -> dict[str, Any]:
    params = {**BASE, "TenantIsolation": "true" if on else "false"}
    decided: dict[str, Any] = _decide(translate(load_template(), params), "IsolateTenants", on)
    del decided["Conditions"]["IsolateTenants"]  # decided: nothing refers to it any more
    return decided


def _resources_of_type(cfn: dict[str, Any], *types: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in cfn["Resources"].items() if r["Type"] in types}


def _lint(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CFN_LINT), "--format", "parseable", *args, "--", str(path)],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module", params=[False, True], ids=["off", "on"])
def mode(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_the_parameter_is_off_by_default_and_only_true_or_false() -> None:
    param = load_template()["Parameters"]["TenantIsolation"]
    assert (param["Default"], sorted(param["AllowedValues"])) == ("false", ["false", "true"])
    assert "creat" in param["Description"]  # "set only when the function is created"


def test_on_the_script_function_is_tenant_isolated_and_nothing_pre_warms_it() -> None:
    cfn = _expanded(True)
    script = cfn["Resources"]["ScriptFunction"]["Properties"]
    assert script["TenancyConfig"] == {"TenantIsolationMode": "PER_TENANT"}
    assert "SnapStart" not in script
    assert not _resources_of_type(cfn, *_FORBIDDEN_WITH_TENANCY)
    # the script function is no target of any schedule or event rule either
    triggers = _resources_of_type(cfn, "AWS::Events::Rule", "AWS::Scheduler::Schedule")
    for name, rule in triggers.items():
        assert "ScriptFunction" not in json.dumps(rule), name
    poller = cfn["Resources"]["PollerFunction"]["Properties"]["Environment"]["Variables"]
    assert poller["RHAILAMBDA_TENANT_ISOLATION"] == {"Ref": "TenantIsolation"}


def test_off_the_script_function_has_no_tenancy() -> None:
    cfn = _expanded(False)
    assert "TenancyConfig" not in cfn["Resources"]["ScriptFunction"]["Properties"]
    # and the poller is told so (the same parameter, "false")
    poller = cfn["Resources"]["PollerFunction"]["Properties"]["Environment"]["Variables"]
    assert poller["RHAILAMBDA_TENANT_ISOLATION"] == {"Ref": "TenantIsolation"}


def test_only_the_script_function_gets_tenancy() -> None:
    cfn = _expanded(True)
    for name, fn in _resources_of_type(cfn, "AWS::Lambda::Function").items():
        assert ("TenancyConfig" in fn["Properties"]) == (name == "ScriptFunction"), name


def test_sam_refuses_an_event_source_on_the_isolated_function() -> None:
    # What the template's comment promises: adding one would fail at deploy time.
    sam = load_template()
    sam["Resources"]["ScriptFunction"]["Properties"]["Events"] = {
        "Tick": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 minute)"}}
    }
    with pytest.raises(Exception, match="not supported for functions enabled with tenancy"):
        translate(sam, {**BASE, "TenantIsolation": "true"})


def test_cfn_lint_passes_on_the_sam_template(tmp_path: Path, mode: bool) -> None:
    value = "true" if mode else "false"
    variant = tmp_path / "template.yaml"
    variant.write_text(
        TEMPLATE.read_text().replace(
            'TenantIsolation:\n    Type: String\n    Default: "false"',
            f'TenantIsolation:\n    Type: String\n    Default: "{value}"',
        )
    )
    assert load_template(variant)["Parameters"]["TenantIsolation"]["Default"] == value
    done = _lint(variant, "--parameters", f"TenantIsolation={value}", *_base_args())
    assert done.returncode == 0, done.stdout + done.stderr


def test_cfn_lint_passes_on_the_expanded_template(tmp_path: Path, mode: bool) -> None:
    path = tmp_path / "expanded.json"
    path.write_text(json.dumps(_expanded(mode)))
    done = _lint(path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_cfn_lint_would_catch_a_wrong_tenancy_config(tmp_path: Path) -> None:
    # The expanded-template lint is not vacuous: it knows TenancyConfig's schema.
    cfn = _expanded(True)
    cfn["Resources"]["ScriptFunction"]["Properties"]["TenancyConfig"] = {
        "TenantIsolationMode": "PER_CIRCLE"
    }
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(cfn))
    done = _lint(path)
    assert done.returncode != 0 and "PER_CIRCLE" in done.stdout, done.stdout


def _base_args() -> list[str]:
    return [f"{k}={v}" for k, v in BASE.items()]
