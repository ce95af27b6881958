"""No module in ``src/`` over 450 lines (issue 15: short modules a reader can hold)."""

from __future__ import annotations

from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
MAX_LINES = 450


def too_long(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """Each ``.py`` file under ``root`` longer than ``limit`` lines, with its length."""
    out: dict[str, int] = {}
    for path in sorted(root.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > limit:
            out[str(path.relative_to(root))] = lines
    return out


def test_no_module_in_src_is_over_450_lines() -> None:
    assert too_long(SRC) == {}


def test_the_check_names_a_long_module(tmp_path: Path) -> None:
    (tmp_path / "short.py").write_text("x = 1\n" * 450)
    (tmp_path / "long.py").write_text("x = 1\n" * 451)
    assert too_long(tmp_path) == {"long.py": 451}
