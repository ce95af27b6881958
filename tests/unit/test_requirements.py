"""functions/requirements.txt is what pyproject.toml says the runtime needs, nothing else."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from support.mk_scripts import load

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    return load("requirements")


def test_the_lambda_requirements_are_generated_from_pyproject() -> None:
    gen = _generator()
    assert (ROOT / "functions" / "requirements.txt").read_text() == gen.render()
    assert gen.main(["--check"]) == 0


def test_the_check_fails_when_pyproject_gains_a_dependency(tmp_path: Path) -> None:
    gen = _generator()
    text = (ROOT / "pyproject.toml").read_text()
    changed = tmp_path / "pyproject.toml"
    changed.write_text(
        text.replace("dependencies = [\n", 'dependencies = [\n    "attrs>=23",\n', 1)
    )
    rendered = gen.render(changed)
    assert "attrs>=23\n" in rendered
    assert rendered != (ROOT / "functions" / "requirements.txt").read_text()


def test_rhai_py_and_boto3_stay_out_of_the_lambda_requirements() -> None:
    lines = _generator().render().splitlines()
    names = [line for line in lines if line and not line.startswith("#")]
    assert names and not any(n.startswith(("rhai-py", "boto3", "botocore")) for n in names)
