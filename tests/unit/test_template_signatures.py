"""template.yaml passes the signature policy to the functions as parameters."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aws_support import load_template

from rhailambda.settings import Env, SignatureSettings


def test_the_policy_is_a_parameter_passed_to_every_function() -> None:
    template = load_template()
    params = template["Parameters"]
    assert params["Signatures"]["AllowedValues"] == ["off", "verify", "require"]
    assert params["Signatures"]["Default"] == SignatureSettings().policy
    assert params["SignatureMaxAgeSeconds"]["Default"] == SignatureSettings().max_age_s
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["RHAILAMBDA_SIGNATURES"] == {"Ref": "Signatures"}
    assert env["RHAILAMBDA_SIGNATURES_REQUIRE_WORKERS"] == {"Ref": "SignaturesRequireWorkers"}
    assert env["RHAILAMBDA_SIGNATURE_MAX_AGE_S"] == {"Ref": "SignatureMaxAgeSeconds"}
    defaults = {
        "RHAILAMBDA_SIGNATURES": params["Signatures"]["Default"],
        "RHAILAMBDA_SIGNATURES_REQUIRE_WORKERS": params["SignaturesRequireWorkers"]["Default"],
        "RHAILAMBDA_SIGNATURE_MAX_AGE_S": str(params["SignatureMaxAgeSeconds"]["Default"]),
    }
    assert SignatureSettings.from_env(Env(defaults)) == SignatureSettings()
