"""How DSL modules reach the engine the function builds for every task.

An :class:`Extension` is built once per cold start (it may hold clients). For each
task the function calls ``open(ctx)`` and gets a :class:`Session`: its ``modules()``
are registered in that task's engine (``{"db": {"save": fn, ...}}`` makes
``db::save(...)`` callable from the script). After the script succeeds the function
calls ``commit()``; after it fails, ``discard()``. A session may stage writes and
apply them only in ``commit()``, so a failed script leaves nothing half-written.
``commit()`` raises :class:`CommitConflict` when a concurrent writer won; the
function then runs the script again on fresh data (a bounded number of times).

Users add their own modules without editing the function: list factories in
``RHAILAMBDA_EXTENSIONS`` (``package.module:factory``, comma separated), each a
callable ``factory(settings) -> Extension``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["CommitConflict", "Extension", "ScriptContext", "Session"]


@dataclass(frozen=True, slots=True)
class ScriptContext:
    """Who runs what, where: the constants every script sees."""

    caller_id: str
    context_id: str
    worker_id: str
    task_id: str


class CommitConflict(Exception):
    """Staged writes could not be applied because the data changed meanwhile."""


class Session(Protocol):
    def modules(self) -> Mapping[str, Mapping[str, Callable[..., Any]]]: ...

    def commit(self) -> None: ...

    def discard(self) -> None: ...


class Extension(Protocol):
    name: str

    def open(self, ctx: ScriptContext) -> Session: ...
