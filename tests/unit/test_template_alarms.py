"""template.yaml: every alarm watches a metric that some process publishes, in every mode.

The template is expanded by aws-sam-translator per ``DeployPoller`` x ``PollerMode``;
for each alarm that exists in that mode, the publisher must exist too:

* ``AWS/Lambda`` metrics: Lambda itself, for a function of the stack that exists;
* the shim's metrics (``MetricsNamespace``): the poller when it is deployed (its
  settings, built from the template's environment by the poller's own code, switch
  EMF on with the alarm's namespace and ``service``), else the self-run shim as
  documented (infra/README.md) and as the image runs it (shim/Dockerfile's
  ENV): in both cases the EMF line the shim's publisher writes is parsed, and must
  carry the alarm's metric with exactly the alarm's dimensions.

Tracing and the dashboard are checked the same way, and cfn-lint passes with
``Tracing`` on and off.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aws_support import REPO_ROOT, iam_statements, load_template, translate

from rhailambda.settings import Env
from rhailambda.shim import poller
from rhailambda.shim import settings as shim_settings
from rhailambda.shim.metrics import METRICS, QueueSample, Sample, ShimCounters
from rhailambda.shim.metrics_emf import EmfPublisher
from rhailambda.shim.settings import ShimSettings

BASE = {"RedisUrl": "rediss://:secret@cache.example:6379/0"}
MODES = [
    {"DeployPoller": deploy, "PollerMode": mode}
    for deploy in ("true", "false")
    for mode in ("on-demand", "always-on")
]
SHIM_NAMES = {m.name for m in METRICS}


@pytest.fixture(scope="module")
def sam() -> dict[str, Any]:
    return load_template()


def parameters(sam: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, str]:
    values = {k: str(v.get("Default", "")) for k, v in sam["Parameters"].items()}
    return {**values, **BASE, **given, "AWS::Region": "us-east-1", "AWS::StackName": "stack"}


def evaluate(node: Any, params: Mapping[str, str], conditions: Mapping[str, Any]) -> Any:
    """The value of an expression of Ref, Fn::If/Equals/Not/Or/And/Join/Sub, Condition."""
    if isinstance(node, list):
        return [evaluate(n, params, conditions) for n in node]
    if not isinstance(node, dict):
        return node
    if len(node) != 1:
        return {k: evaluate(v, params, conditions) for k, v in node.items()}
    ((key, arg),) = node.items()
    ev = lambda n: evaluate(n, params, conditions)  # noqa: E731
    if key == "Ref":
        return params.get(arg, f"<{arg}>")  # a resource: its logical id stands for it
    if key == "Condition":
        return ev(conditions[arg])
    if key == "Fn::Equals":
        return ev(arg[0]) == ev(arg[1])
    if key == "Fn::Not":
        return not ev(arg[0])
    if key == "Fn::Or":
        return any(ev(a) for a in arg)
    if key == "Fn::And":
        return all(ev(a) for a in arg)
    if key == "Fn::Join":
        return arg[0].join(str(x) for x in ev(arg[1]))
    if key == "Fn::If":
        return ev(arg[1] if ev(conditions[arg[0]]) else arg[2])
    if key == "Fn::Sub":
        text, names = (arg, {}) if isinstance(arg, str) else (arg[0], ev(arg[1]))
        lookup = {**params, **names}
        return re.sub(r"\$\{([\w:]+)\}", lambda m: str(lookup.get(m[1], f"<{m[1]}>")), text)
    return {key: ev(arg)}


class Stack:
    """One expansion of the template, with its conditions evaluated."""

    def __init__(self, sam: Mapping[str, Any], given: Mapping[str, str]) -> None:
        self.params = parameters(sam, given)
        self.cfn = translate(sam, {**given, **BASE})
        self.conditions = self.cfn.get("Conditions", {})

    def exists(self, logical_id: str) -> bool:
        resource = self.cfn["Resources"].get(logical_id)
        if resource is None:
            return False
        cond = resource.get("Condition")
        return cond is None or bool(self.value({"Condition": cond}))

    def value(self, node: Any) -> Any:
        return evaluate(node, self.params, self.conditions)

    def live(self, kind: str) -> dict[str, dict[str, Any]]:
        return {
            k: self.value(r.get("Properties", {}))
            for k, r in self.cfn["Resources"].items()
            if r["Type"] == kind and self.exists(k)
        }

    def function_env(self, logical_id: str) -> dict[str, str]:
        props = self.live("AWS::Lambda::Function")[logical_id]
        env = props["Environment"]["Variables"]
        return {k: str(v) for k, v in env.items() if v != "<AWS::NoValue>"}


def emf_lines(settings: ShimSettings, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """What the shim's EMF publisher writes for ``settings`` (one queue, some traffic)."""
    capsys.readouterr()
    sample = Sample((QueueSample("w1", 4, 12.0, 1, 1, 2),), ShimCounters(3, 1, 1, 0.3))
    EmfPublisher(settings.metrics.namespace, settings.metrics.service).publish(sample)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def published(lines: list[dict[str, Any]], namespace: str, name: str) -> list[set[str]]:
    """The dimension sets under which ``name`` went out in ``namespace``."""
    found = []
    for line in lines:
        for directive in line["_aws"]["CloudWatchMetrics"]:
            if directive["Namespace"] == namespace and name in {
                m["Name"] for m in directive["Metrics"]
            }:
                found += [set(dims) for dims in directive["Dimensions"]]
    return found


def poller_settings(stack: Stack) -> ShimSettings:
    env = {**stack.function_env("PollerFunction"), "AWS_REGION": "us-east-1"}
    return poller.settings_from_env(env)


def self_run_settings() -> ShimSettings:
    """The documented self-run shim: the image's ENV (shim/Dockerfile)."""
    text = (REPO_ROOT / "shim" / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text.rsplit("\nFROM ", 1)[1]
    (env_line,) = [line for line in runtime.splitlines() if line.startswith("ENV ")]
    env = dict(kv.split("=", 1) for kv in shlex.split(env_line[4:]))
    env |= {"RHAILAMBDA_WORKERS": "w1", "RHAILAMBDA_FUNCTION_NAME": "fn", "AWS_REGION": "x"}
    parser = __import__("argparse").ArgumentParser()
    shim_settings.add_arguments(parser)
    return shim_settings.from_args(parser.parse_args([]), Env(env))


@pytest.mark.parametrize(
    "mode", MODES, ids=lambda m: f"poller-{m['DeployPoller']}-{m['PollerMode']}"
)
def test_every_alarm_has_a_publisher_in_every_mode(
    sam: dict[str, Any], mode: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    stack = Stack(sam, mode)
    alarms = stack.live("AWS::CloudWatch::Alarm")
    namespace = stack.params["MetricsNamespace"]
    with_poller = mode["DeployPoller"] == "true"
    assert stack.exists("PollerFunction") is with_poller
    assert {"DeadLetterDepthAlarm", "OldestTaskAgeAlarm", "ScriptErrorsAlarm"} <= set(alarms)
    for name, alarm in alarms.items():
        dims = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
        if alarm["Namespace"] == "AWS/Lambda":  # Lambda publishes it for an existing function
            function = re.fullmatch(r"<(\w+)>", dims["FunctionName"])
            assert function and stack.exists(function[1]), name
            continue
        assert alarm["Namespace"] == namespace, name
        assert alarm["MetricName"] in SHIM_NAMES, name
        if with_poller:
            settings = poller_settings(stack)
            assert "the poller" in alarm["AlarmDescription"]
        else:
            settings = self_run_settings()
            assert "RHAILAMBDA_METRICS_EMF=true" in alarm["AlarmDescription"]
            # The image defaults to the template's default namespace; the docs say to
            # set POWERTOOLS_METRICS_NAMESPACE when MetricsNamespace is changed.
            assert namespace == sam["Parameters"]["MetricsNamespace"]["Default"]
        assert settings.metrics.emf, name
        assert settings.metrics.namespace == namespace, name
        lines = emf_lines(settings, capsys)
        assert set(dims) in published(lines, namespace, alarm["MetricName"]), name
        assert dims["service"] == settings.metrics.service, name


def test_the_self_run_shim_is_documented_as_the_publisher_without_the_poller() -> None:
    docs = (REPO_ROOT / "infra" / "README.md").read_text()
    section = docs.split("## Running the shim yourself", 1)[1].split("\n## ", 1)[0]
    assert "RHAILAMBDA_METRICS_EMF=true" in section
    assert "POWERTOOLS_METRICS_NAMESPACE" in section
    for alarm in ("DeadLetterDepthAlarm", "OldestTaskAgeAlarm"):
        assert alarm in docs


@pytest.mark.parametrize("tracing", ["true", "false"])
def test_tracing_switches_x_ray_on_both_functions(sam: dict[str, Any], tracing: str) -> None:
    stack = Stack(sam, {"Tracing": tracing})
    functions = stack.live("AWS::Lambda::Function")
    assert set(functions) >= {"ScriptFunction", "PollerFunction"}
    for logical_id, props in functions.items():
        assert props["TracingConfig"] == {"Mode": "Active" if tracing == "true" else "PassThrough"}
        assert stack.function_env(logical_id)["RHAILAMBDA_TRACING"] == tracing
    # The two X-Ray actions, in both roles, only under UseTracing (least privilege).
    for role in ("ScriptFunctionRole", "PollerFunctionRole"):
        raw = stack.cfn["Resources"][role]["Properties"]["Policies"]
        xray = [p for p in raw if "xray" in json.dumps(p)]
        assert len(xray) == 1
        condition, policy, otherwise = xray[0]["Fn::If"]
        assert condition == "UseTracing" and otherwise == {"Ref": "AWS::NoValue"}
        (statement,) = policy["PolicyDocument"]["Statement"]
        assert sorted(statement["Action"]) == ["xray:PutTelemetryRecords", "xray:PutTraceSegments"]
        live = stack.value(stack.cfn["Resources"][role]["Properties"]["Policies"])
        names = [p["PolicyName"] for p in live if isinstance(p, dict)]
        assert ("xray" in names) is (tracing == "true")
    assert any(s.body.get("Sid") == "WriteTraces" for s in iam_statements(stack.cfn))


@pytest.mark.parametrize("tracing", ["true", "false"])
def test_the_handlers_build_a_tracer_only_with_tracing_on(tracing: str) -> None:
    """Off, neither handler module even imports aws_xray_sdk (cold starts pay nothing)."""
    code = (
        "import sys; from rhailambda.shim import poller; "
        "print(poller.tracer is not None, 'aws_xray_sdk' in sys.modules)"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT / "src"),
        "RHAILAMBDA_TRACING": tracing,
        "POWERTOOLS_TRACE_DISABLED": "true",  # not in Lambda: no daemon to send to
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
        check=True,
    ).stdout.split()  # fmt: skip
    assert out == (["True", "True"] if tracing == "true" else ["False", "False"])


def test_the_dashboard_shows_only_published_metrics(sam: dict[str, Any]) -> None:
    stack = Stack(sam, {})
    body = stack.cfn["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    text = re.sub(r"\$\{([\w:]+)\}", lambda m: stack.params.get(m[1], m[1]), body)
    widgets = json.loads(text)["widgets"]
    namespace = stack.params["MetricsNamespace"]
    seen: set[str] = set()
    for widget in widgets:
        for row in widget["properties"]["metrics"]:
            if isinstance(row[0], dict):  # SEARCH('{ns,service,worker} MetricName="X" ...')
                found = re.search(r'MetricName="(\w+)"', row[0]["expression"])
                assert found and f"{{{namespace},service,worker}}" in row[0]["expression"]
                seen.add(found[1])
            elif row[0] == namespace:
                assert row[2:4] == ["service", "rhailambda-shim"]
                seen.add(row[1])
            else:
                assert row[0] == "AWS/Lambda" and row[2:] == ["FunctionName", "ScriptFunction"]
    assert seen <= SHIM_NAMES
    assert {"OldestTaskAge", "DeadLetterDepth", "QueueDepth", "Invocations"} <= seen


@pytest.mark.parametrize("tracing", ["true", "false"])
def test_cfn_lint_passes(tracing: str) -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    done = subprocess.run(
        [str(cfn_lint), str(REPO_ROOT / "template.yaml"), "--parameters",
         f"Tracing={tracing}", f"RedisUrl={BASE['RedisUrl']}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
