"""Evaluating scripts: results, scopes, ASTs, text rendering, strict variables."""

from __future__ import annotations

import pytest
import rhai_py
from rhai_py import AST, Engine, RhaiRuntimeError


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine()


def test_eval_returns_python_values(engine: Engine) -> None:
    assert engine.eval("40 + 2") == 42
    assert engine.eval("let x = 10; x * 2") == 20
    assert engine.eval('"a" + "b"') == "ab"
    assert engine.eval("()") is None


def test_eval_text_renders_like_rhailib(engine: Engine) -> None:
    assert engine.eval_text("let x = 10; x * 2") == "20"
    assert engine.eval_text('"plain"') == "plain"
    assert engine.eval_text("()") == ""
    assert engine.eval_text("let x = 1;") == ""
    assert engine.eval_text("[1, 2]") == "[1, 2]"
    assert engine.eval_text('#{a: "x"}') == '#{"a": "x"}'
    assert engine.eval_text("2.5") == "2.5"
    assert engine.eval_text("true") == "true"


def test_render_matches_eval_text(engine: Engine) -> None:
    for script, value in [("42", 42), ('"s"', "s"), ("()", None), ('[1, "a"]', [1, "a"])]:
        assert rhai_py.render(value) == engine.eval_text(script)


def test_compiled_ast_is_reusable_and_keeps_its_source(engine: Engine) -> None:
    source = "fn sq(x) { x * x } sq(n)"
    ast = engine.compile(source)
    assert isinstance(ast, AST)
    assert ast.source == source
    assert [engine.eval(ast, variables={"n": n}) for n in range(4)] == [0, 1, 4, 9]
    assert engine.eval_text(ast, variables={"n": 5}) == "25"


def test_ast_runs_on_another_engine() -> None:
    ast = Engine().compile("40 + 2")
    assert Engine().eval(ast) == 42


def test_constants_and_variables_are_pushed_into_the_scope(engine: Engine) -> None:
    assert engine.eval("a + b", constants={"a": 1}, variables={"b": 2}) == 3
    assert engine.eval("b += 1; b", variables={"b": 2}) == 3
    with pytest.raises(RhaiRuntimeError, match="constant"):
        engine.eval("a = 5", constants={"a": 1})


def test_scope_accepts_any_mapping(engine: Engine) -> None:
    from types import MappingProxyType

    assert engine.eval("x", variables=MappingProxyType({"x": [1]})) == [1]


def test_scope_names_must_be_str(engine: Engine) -> None:
    with pytest.raises(TypeError, match="str"):
        engine.eval("1", variables={1: 2})  # type: ignore[dict-item]


def test_script_must_be_str_or_ast(engine: Engine) -> None:
    with pytest.raises(TypeError, match="str or an AST"):
        engine.eval(b"1")  # type: ignore[arg-type]


def test_strict_variables_rejects_undeclared_names_at_compile_time() -> None:
    strict = Engine(strict_variables=True)
    with pytest.raises(rhai_py.RhaiCompileError, match="y"):
        strict.compile("let x = 1; x + y")
    assert strict.eval("x + 1", variables={"x": 1}) == 2
    assert Engine().compile("x + y").source == "x + y"


def test_import_is_not_available() -> None:
    """No module resolver: scripts cannot read files through `import`."""
    with pytest.raises(RhaiRuntimeError, match="Module not found"):
        Engine().eval('import "os" as os; 1')


def test_version() -> None:
    assert rhai_py.__version__ == "0.1.0"
    assert rhai_py.RHAI_VERSION == "1.27.0"
