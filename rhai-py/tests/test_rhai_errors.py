"""Errors: the exception tree, Rhai-like messages, line and column."""

from __future__ import annotations

import pickle

import pytest
from rhai_py import (
    Engine,
    RhaiCompileError,
    RhaiError,
    RhaiLimitError,
    RhaiRuntimeError,
)


def test_runtime_error_carries_message_line_and_column() -> None:
    with pytest.raises(RhaiRuntimeError) as info:
        Engine().eval("let x = 1;\nx + y")
    err = info.value
    assert err.message == "Variable not found: y (line 2, position 5)"
    assert str(err) == err.message
    assert (err.line, err.column) == (2, 5)
    assert isinstance(err, RhaiError)


def test_compile_error_carries_position() -> None:
    with pytest.raises(RhaiCompileError) as info:
        Engine().compile("let x = 1;\nlet = 2;")
    assert info.value.line == 2
    assert info.value.column is not None
    assert "line 2" in info.value.message


def test_compile_errors_from_eval_of_text() -> None:
    with pytest.raises(RhaiCompileError):
        Engine().eval("1 +")


def test_error_in_function_reports_the_call_site_and_the_inner_message() -> None:
    script = "fn f(a) {\n  a + missing\n}\n\nlet r = f(1);"
    with pytest.raises(RhaiRuntimeError) as info:
        Engine().eval(script)
    err = info.value
    assert "Variable not found: missing" in err.message
    assert "in call to function 'f'" in err.message
    assert (err.line, err.column) == (5, 9)


def test_thrown_values_are_runtime_errors() -> None:
    with pytest.raises(RhaiRuntimeError, match="boom") as info:
        Engine().eval('\n  throw "boom";')
    assert info.value.line == 2


def test_function_not_found() -> None:
    with pytest.raises(RhaiRuntimeError, match="Function not found: nope"):
        Engine().eval("nope(1)")


def test_errors_pickle_with_their_data() -> None:
    with pytest.raises(RhaiLimitError) as info:
        Engine(max_operations=10).eval("loop {}")
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.message, copy.line, copy.column, copy.limit) == (
        info.value.message,
        info.value.line,
        info.value.column,
        "operations",
    )
    runtime = RhaiRuntimeError("m", 1, 2)
    assert pickle.loads(pickle.dumps(runtime)).column == 2
