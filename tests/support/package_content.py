"""What must never ship to Lambda: test code and the test-only dependencies.

:func:`find_test_code` looks at an unpacked function package (a ``sam build`` output,
an unpacked wheel, or ``src/`` itself): the root's top-level entries and every module
of the ``rhailambda`` package under it.
"""

from __future__ import annotations

import re
from pathlib import Path

#: Distributions only the tests use (requirements-dev.txt); none may be in the package.
TEST_DISTRIBUTIONS = frozenset({"moto", "pytest", "_pytest", "hypothesis", "pytest_timeout"})
#: Top-level names of test code (tests/, tests/support/).
TEST_TOP_LEVEL = frozenset({"tests", "support", "conftest.py"})

_TEST_IMPORT = re.compile(r"^\s*(?:import|from)\s+(?:moto|pytest|hypothesis|support)\b", re.M)


def _is_test_module(path: Path) -> bool:
    name = path.name
    return name in {"testing.py", "conftest.py"} or name.startswith("test_")


def find_test_code(root: Path, package: str = "rhailambda") -> list[str]:
    """Paths under ``root`` (relative) that are test code or a test-only distribution."""
    found = []
    for entry in sorted(root.iterdir()):
        name = entry.name
        dist = re.split(r"[-.]", name, maxsplit=1)[0].lower()
        if name in TEST_TOP_LEVEL or dist in TEST_DISTRIBUTIONS:
            found.append(name)
    for path in sorted((root / package).rglob("*.py")):
        rel = str(path.relative_to(root))
        if _is_test_module(path) or "tests" in path.relative_to(root).parts:
            found.append(rel)
        elif _TEST_IMPORT.search(path.read_text(encoding="utf-8")):
            found.append(f"{rel} (imports a test-only module)")
    return found
