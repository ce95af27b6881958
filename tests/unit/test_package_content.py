"""The shipped package holds no test code: what ``sam build`` copies is ``src/rhailambda``.

The built packages themselves are checked too: the wheel in
tests/integration/test_packaging.py, the ``sam build`` output in tests/e2e/test_aws_stack.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from support.package_content import find_test_code

SRC = Path(__file__).resolve().parents[2] / "src"


def test_the_source_package_holds_no_test_code() -> None:
    assert find_test_code(SRC) == []


def test_the_check_finds_test_modules_and_test_dependencies(tmp_path: Path) -> None:
    shutil.copytree(SRC / "rhailambda", tmp_path / "rhailambda")
    (tmp_path / "rhailambda" / "shim" / "testing.py").write_text("x = 1\n")
    (tmp_path / "rhailambda" / "doubles.py").write_text("from moto.server import X\n")
    (tmp_path / "moto").mkdir()
    (tmp_path / "moto-5.1.0.dist-info").mkdir()
    (tmp_path / "hiredis").mkdir()  # a runtime dependency: fine
    assert find_test_code(tmp_path) == [
        "moto",
        "moto-5.1.0.dist-info",
        "rhailambda/doubles.py (imports a test-only module)",
        "rhailambda/shim/testing.py",
    ]
