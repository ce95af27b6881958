"""An example user extension: gives scripts ``greet::hello(name)``.

Enable it without touching the function::

    RHAILAMBDA_EXTENSIONS=ext_hello:extension      # ext_hello.py importable (PYTHONPATH)

then a script may say ``greet::hello("world")`` -> ``"Hello, world! (from circle alice)"``
or ``greet::hello("world", "Hi")``: a default argument gives a second arity.

The function calls ``extension(env)`` once per cold start, ``open(ctx)`` once per
task, and ``commit()`` or ``discard()`` after the script. An extension that
writes somewhere should stage its writes and apply them in ``commit()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rhailambda.extension import ScriptContext
from rhailambda.settings import Env


class HelloSession:
    def __init__(self, ctx: ScriptContext, greeting: str) -> None:
        self._ctx = ctx
        self._greeting = greeting

    def hello(self, name: str, greeting: str | None = None) -> str:
        if not isinstance(name, str) or not name:
            raise ValueError("greet::hello needs a non-empty name")  # a Rhai runtime error
        return f"{greeting or self._greeting}, {name}! (from circle {self._ctx.context_id})"

    def modules(self) -> Mapping[str, Mapping[str, Callable[..., Any]]]:
        return {"greet": {"hello": self.hello}}

    def commit(self) -> None:
        pass  # nothing staged: this extension only computes

    def discard(self) -> None:
        pass


class HelloExtension:
    name = "greet"

    def __init__(self, greeting: str) -> None:
        self._greeting = greeting  # built once per cold start: clients would go here

    def open(self, ctx: ScriptContext) -> HelloSession:
        return HelloSession(ctx, self._greeting)


def extension(env: Env) -> HelloExtension:
    """The ``RHAILAMBDA_EXTENSIONS`` factory: reads its own settings from ``env``."""
    return HelloExtension(env.str("HELLO_GREETING", "Hello"))
