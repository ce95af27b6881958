"""The exception tree of ``rhai_py``; every error a script causes is one of these.

::

    RhaiError (message, line, column)
    ├── RhaiCompileError        the script does not parse
    ├── RhaiRuntimeError        the script failed while running, including a Python
    │                           callback raising (chained as ``__cause__``)
    └── RhaiLimitError (limit)  a resource limit was hit, at parse or at run time

``message`` reads like Rhai's own text, e.g. ``"Variable not found: y (line 2, position 5)"``;
``line`` and ``column`` are 1-based, or ``None`` when Rhai gives no position.
"""

from __future__ import annotations

__all__ = ["RhaiCompileError", "RhaiError", "RhaiLimitError", "RhaiRuntimeError"]


class RhaiError(Exception):
    """Root of every error raised for a script."""

    message: str
    line: int | None
    column: int | None

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message, self.line, self.column))


class RhaiCompileError(RhaiError):
    """The script does not parse."""


class RhaiRuntimeError(RhaiError):
    """The script failed while running (a Python callback raising included)."""


class RhaiLimitError(RhaiError):
    """A resource limit was hit.

    ``limit`` names it: ``"operations"``, ``"timeout"``, ``"string_size"``, ``"array_size"``,
    ``"map_size"``, ``"data_size"``, ``"call_levels"``, ``"expr_depth"``, ``"variables"``,
    ``"functions"`` or ``"modules"``.
    """

    limit: str

    def __init__(
        self,
        message: str,
        line: int | None = None,
        column: int | None = None,
        limit: str = "unknown",
    ) -> None:
        super().__init__(message, line, column)
        self.limit = limit

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message, self.line, self.column, self.limit))
