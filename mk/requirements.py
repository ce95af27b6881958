"""Write functions/requirements.txt from pyproject.toml's [project.dependencies].

The Lambda package installs exactly the project's runtime dependencies, less the two
it gets elsewhere: rhai-py (the wheel built in dist/) and boto3/botocore (the Lambda
runtime's own). ``python mk/requirements.py`` rewrites the file; ``--check`` exits 1
when the committed file differs (a test runs the same comparison).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "functions" / "requirements.txt"
#: installed by functions/Makefile from dist/, or provided by the Lambda runtime
NOT_FROM_PYPI = {"rhai-py", "boto3", "botocore"}
HEADER = (
    "# Generated from pyproject.toml [project.dependencies] by `python mk/requirements.py`:\n"
    "# do not edit. rhai-py comes from dist/ (functions/Makefile), boto3 with the runtime.\n"
)


def render(pyproject: Path = ROOT / "pyproject.toml") -> str:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    keep = [d for d in deps if re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0] not in NOT_FROM_PYPI]
    return HEADER + "".join(f"{d}\n" for d in keep)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if TARGET.read_text() != text:
            print(f"{TARGET} is stale: run python mk/requirements.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
