"""Python functions called from scripts, modules, print and debug routing."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
from rhai_py import Engine, RhaiRuntimeError


def test_register_fn_converts_arguments_and_result() -> None:
    engine = Engine()
    engine.register_fn("shout", lambda s, n: s.upper() * n)
    engine.register_fn("pairs", lambda m: sorted(m.items()))
    assert engine.eval('shout("ab", 2)') == "ABAB"
    assert engine.eval("pairs(#{b: 2, a: [1]})") == [["a", [1]], ["b", 2]]


def test_register_fn_after_first_eval() -> None:
    engine = Engine()
    assert engine.eval("1") == 1
    engine.register_fn("later", lambda: 7)
    assert engine.eval("later()") == 7


def test_module_functions_accept_every_arity_from_required_to_total() -> None:
    def listing(collection: str, offset: int = 0, limit: int = 100) -> list[object]:
        return [collection, offset, limit]

    engine = Engine()
    engine.register_module("api", {"list": listing})
    assert engine.eval('api::list("c")') == ["c", 0, 100]
    assert engine.eval('api::list("c", 5)') == ["c", 5, 100]
    assert engine.eval('api::list("c", 5, 10)') == ["c", 5, 10]
    with pytest.raises(RhaiRuntimeError, match="Function not found"):
        engine.eval("api::list()")
    with pytest.raises(RhaiRuntimeError, match="Function not found"):
        engine.eval('api::list("c", 1, 2, 3)')


def test_variadic_functions_take_up_to_16_arguments() -> None:
    engine = Engine()
    engine.register_fn("total", lambda *xs: sum(xs))
    engine.register_module("m", {"count": lambda first, *rest: 1 + len(rest)})
    assert engine.eval("total()") == 0
    assert engine.eval("total(1, 2, 3)") == 6
    assert engine.eval("m::count(1, 2)") == 2
    args = ", ".join(["1"] * 16)
    assert engine.eval(f"total({args})") == 16
    with pytest.raises(RhaiRuntimeError, match="Function not found"):
        engine.eval(f"total({args}, 1)")


def test_keyword_only_parameters_need_defaults() -> None:
    def needs_kw(a: int, *, b: int) -> int:
        return a + b

    def has_kw(a: int, *, b: int = 1) -> int:
        return a + b

    engine = Engine()
    with pytest.raises(ValueError, match="keyword-only"):
        engine.register_fn("f", needs_kw)
    engine.register_fn("g", has_kw)
    assert engine.eval("g(1)") == 2


def test_registering_a_non_callable_or_a_bad_name_fails() -> None:
    engine = Engine()
    with pytest.raises(TypeError, match="callable"):
        engine.register_fn("f", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="identifier"):
        engine.register_fn("not valid", print)
    with pytest.raises(ValueError, match="identifier"):
        engine.register_module("a::b", {})


def test_python_exception_becomes_a_runtime_error_with_its_text_and_cause() -> None:
    def deny(user: str) -> None:
        raise PermissionError("Insufficient authorization")

    engine = Engine()
    engine.register_module("auth", {"check": deny})
    with pytest.raises(RhaiRuntimeError) as info:
        engine.eval('let u = "bob";\nauth::check(u)')
    err = info.value
    assert "Insufficient authorization" in err.message
    assert "PermissionError" in err.message
    assert (err.line, err.column) == (2, 7)
    assert isinstance(err.__cause__, PermissionError)


def test_python_exception_inside_a_script_function_reports_the_call_site() -> None:
    engine = Engine()
    engine.register_fn("fail", lambda: 1 / 0)
    with pytest.raises(RhaiRuntimeError) as info:
        engine.eval("fn g() {\n fail()\n}\n\n  g()")
    assert "ZeroDivisionError" in info.value.message
    assert info.value.line == 5
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_scripts_can_catch_python_exceptions() -> None:
    engine = Engine()
    engine.register_fn("fail", lambda: int("x"))
    caught = engine.eval_text("let r = (); try { fail() } catch (e) { r = e } r")
    assert "ValueError: invalid literal" in caught


def test_unconvertible_return_value_is_a_runtime_error() -> None:
    engine = Engine()
    engine.register_fn("obj", object)
    with pytest.raises(RhaiRuntimeError, match="cannot convert") as info:
        engine.eval("obj()")
    assert isinstance(info.value.__cause__, TypeError)


def test_callback_can_evaluate_another_script() -> None:
    inner = Engine()
    outer = Engine()
    outer.register_fn("nested", lambda x: inner.eval("x * 2", variables={"x": x}))
    assert outer.eval("nested(21)") == 42


def test_print_and_debug_go_to_the_callbacks() -> None:
    printed: list[str] = []
    debugged: list[tuple[Any, ...]] = []
    engine = Engine(
        on_print=printed.append,
        on_debug=lambda *args: debugged.append(args),
    )
    engine.eval('print("hello");\nprint(42);\n  debug("dbg");')
    assert printed == ["hello", "42"]
    assert debugged == [('"dbg"', None, 3, 3)]


def test_print_and_debug_default_to_the_rhai_py_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="rhai_py"):
        Engine().eval('print("to info"); debug("to debug");')
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "rhai_py"]
    assert records[0] == (logging.INFO, "to info")
    assert records[1][0] == logging.DEBUG and '"to debug"' in records[1][1]


def test_a_failing_print_callback_does_not_fail_the_script() -> None:
    def broken(text: str) -> None:
        raise RuntimeError("sink down")

    seen: list[BaseException | None] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: seen.append(unraisable.exc_value)
    try:
        assert Engine(on_print=broken).eval('print("x"); 5') == 5
    finally:
        sys.unraisablehook = old_hook
    assert len(seen) == 1 and "sink down" in str(seen[0])


def test_callbacks_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_print"):
        Engine(on_print="nope")  # type: ignore[arg-type]


def test_arity_cache_follows_defaults_and_binding() -> None:
    """Arities are cached per code object; defaults and bound methods still count."""

    def make(offset: int):  # type: ignore[no-untyped-def]
        def add(a: int, b: int = 1) -> int:
            return a + b + offset

        return add

    class Box:
        def get(self, a: int) -> int:
            return a * 10

    for offset in range(3):  # fresh closures over one code object
        engine = Engine()
        engine.register_module("m", {"add": make(offset), "get": Box().get})
        assert engine.eval("m::add(1) + m::add(1, 2) + m::get(2)") == 2 + 3 + 20 + 2 * offset
    no_default = make(0)
    no_default.__defaults__ = None
    engine = Engine()
    engine.register_module("m", {"add": no_default})
    with pytest.raises(RhaiRuntimeError, match="Function not found"):
        engine.eval("m::add(1)")
