"""Python binding of the Rhai scripting engine, built for sandboxed evaluation.

>>> import rhai_py
>>> rhai_py.Engine().eval("40 + 2")
42
"""

from __future__ import annotations

from rhai_py._rhai import AST, RHAI_VERSION, Engine, __version__, render
from rhai_py.errors import RhaiCompileError, RhaiError, RhaiLimitError, RhaiRuntimeError

__all__ = [
    "AST",
    "RHAI_VERSION",
    "Engine",
    "RhaiCompileError",
    "RhaiError",
    "RhaiLimitError",
    "RhaiRuntimeError",
    "__version__",
    "render",
]
