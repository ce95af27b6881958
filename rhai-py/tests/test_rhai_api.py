"""The public surface: __all__ matches the stubs, and stubtest agrees with the runtime."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import rhai_py
import rhai_py.errors

PACKAGE = Path(rhai_py.__file__).parent
SOURCE_PACKAGE = Path(__file__).resolve().parents[1] / "python" / "rhai_py"


def public_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_") or n == "__version__"}


def test_all_matches_the_stubs() -> None:
    stubbed = public_names(SOURCE_PACKAGE / "_rhai.pyi") | set(rhai_py.errors.__all__)
    assert set(rhai_py.__all__) == stubbed
    for name in rhai_py.__all__:
        assert hasattr(rhai_py, name), name


def test_package_is_typed() -> None:
    assert (PACKAGE / "py.typed").exists()
    assert (PACKAGE / "_rhai.pyi").exists()


def test_exception_tree() -> None:
    for cls in (rhai_py.RhaiCompileError, rhai_py.RhaiRuntimeError, rhai_py.RhaiLimitError):
        assert issubclass(cls, rhai_py.RhaiError)
    assert issubclass(rhai_py.RhaiError, Exception)


def test_stubtest_agrees_with_the_runtime(tmp_path: Path) -> None:
    allowlist = SOURCE_PACKAGE.parents[1] / "stubtest-allowlist.txt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "rhai_py",
            "--allowlist",
            str(allowlist),
            "--mypy-config-file",
            str(tmp_path / "none.ini"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "cache")},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
