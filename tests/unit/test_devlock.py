"""requirements-dev.lock matches requirements-dev.txt and pyproject.toml (mk/devlock.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

from support.mk_scripts import load

ROOT = Path(__file__).resolve().parents[2]


def _devlock() -> ModuleType:
    return load("devlock")


def test_the_lock_matches_its_inputs() -> None:
    lock = _devlock()
    assert lock.problems() == []
    assert lock.main(["--check"]) == 0


def test_every_pin_carries_hashes_and_rhai_py_is_not_from_pypi() -> None:
    text = (ROOT / "requirements-dev.lock").read_text()
    pins = [line for line in text.splitlines() if "==" in line and not line.startswith(" ")]
    assert pins and all(line.endswith("\\") for line in pins), "pip --require-hashes needs them"
    assert not any(line.startswith("rhai-py==") for line in pins)


def test_the_check_fails_when_an_input_changes(tmp_path: Path) -> None:
    lock = _devlock()
    for name in ("requirements-dev.txt", "pyproject.toml", "requirements-dev.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    paths = tmp_path / "requirements-dev.lock", tmp_path / "requirements-dev.txt"
    dev = paths[1]
    dev.write_text(dev.read_text() + "attrs>=99\n")
    assert lock.problems(*paths, tmp_path / "pyproject.toml") == [
        "its inputs changed since it was written",
        "no pin satisfies 'attrs>=99'",
    ]


def test_the_check_fails_when_a_pin_is_edited_by_hand(tmp_path: Path) -> None:
    lock = _devlock()
    text = (ROOT / "requirements-dev.lock").read_text()
    edited = tmp_path / "requirements-dev.lock"
    edited.write_text(text.replace("\nredis==", "\nredis==4.0.0\nredis-was==", 1))
    assert lock.problems(edited) == ["no pin satisfies 'redis[hiredis]>=5.0'"]
