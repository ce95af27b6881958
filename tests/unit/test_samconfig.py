"""samconfig.toml: what `make deploy` hands sam deploy (issue 12, SAM conventions)."""

from __future__ import annotations

import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aws_support import REPO_ROOT, load_template


def _deploy() -> dict[str, Any]:
    with (REPO_ROOT / "samconfig.toml").open("rb") as f:
        config: dict[str, Any] = tomllib.load(f)
    params: dict[str, Any] = config["default"]["deploy"]["parameters"]
    return params


def test_deploy_settings_cover_the_template() -> None:
    deploy = _deploy()
    assert deploy["resolve_s3"] is True
    # The template creates IAM roles: a deploy without the capability is refused.
    assert "CAPABILITY_IAM" in deploy["capabilities"].split()
    parameters = load_template()["Parameters"]
    overrides = dict(item.split("=", 1) for item in shlex.split(deploy["parameter_overrides"]))
    assert overrides, "the parameters a first deploy asks for"
    assert set(overrides) <= set(parameters), "overrides name template parameters"
    assert {"RedisUrl", "RedisSecretArn"} <= set(overrides)
