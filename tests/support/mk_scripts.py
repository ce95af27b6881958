"""The scripts under mk/ (not a package) loaded as modules, for their tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

MK = Path(__file__).resolve().parents[2] / "mk"


def load(name: str) -> ModuleType:
    """``mk/<name>.py`` as the module ``mk_<name>``."""
    spec = importlib.util.spec_from_file_location(f"mk_{name}", MK / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
