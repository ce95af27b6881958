"""Conversions between Python values and Rhai values, both ways."""

from __future__ import annotations

import enum
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rhai_py import Engine

ENGINE = Engine()
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
scalars = st.none() | st.booleans() | I64 | st.floats(allow_nan=False) | st.text() | st.binary()
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


def round_trip(value: object) -> object:
    return ENGINE.eval("v", variables={"v": value})


@settings(max_examples=200, deadline=None)
@given(values)
def test_values_round_trip(value: object) -> None:
    assert round_trip(value) == value


@settings(max_examples=50, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_round_trip(value: float) -> None:
    result = round_trip(value)
    assert isinstance(result, float)
    assert (math.isnan(result) and math.isnan(value)) or result == value


def test_types_from_rhai() -> None:
    assert ENGINE.eval("42") == 42 and type(ENGINE.eval("42")) is int
    assert type(ENGINE.eval("4.5")) is float
    assert ENGINE.eval("true") is True
    assert ENGINE.eval("'c'") == "c"
    assert ENGINE.eval("[1, [2, #{a: ()}]]") == [1, [2, {"a": None}]]
    assert ENGINE.eval("let b = blob(3, 7); b") == b"\x07\x07\x07"
    assert ENGINE.eval("1..3") == "1..3"  # anything else: its text
    assert ENGINE.eval('Fn("f")') == "Fn(f)"
    assert ENGINE.eval("let t = timestamp(); type_of(t)") == "timestamp"


def test_types_to_rhai() -> None:
    def type_of(value: object) -> object:
        return ENGINE.eval("type_of(v)", variables={"v": value})

    assert type_of(None) == "()"
    assert type_of(True) == "bool"
    assert type_of(1) == "i64"
    assert type_of(1.0) == "f64"
    assert type_of("s") == "string"
    assert type_of(b"b") == "blob"
    assert type_of(bytearray(b"b")) == "blob"
    assert type_of([1]) == "array"
    assert type_of((1, 2)) == "array"
    assert type_of({"a": 1}) == "map"


def test_bool_is_not_an_int() -> None:
    assert ENGINE.eval("v == true", variables={"v": True}) is True
    assert round_trip(False) is False


def test_subclasses_of_scalars_convert() -> None:
    class Color(enum.IntEnum):
        RED = 3

    class Name(str):
        pass

    assert round_trip(Color.RED) == 3
    assert round_trip(Name("x")) == "x"
    assert round_trip((1, (2,))) == [1, [2]]


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_int_out_of_range_is_an_overflow_error(value: int) -> None:
    with pytest.raises(OverflowError, match="out of range for a Rhai integer"):
        round_trip(value)


@pytest.mark.parametrize("value", [object(), {1, 2}, 1j, {1: "a"}])
def test_unsupported_types_raise_type_error_naming_the_type(value: object) -> None:
    with pytest.raises(TypeError) as info:
        round_trip(value)
    assert type(value).__name__ in str(info.value) or "int" in str(info.value)


def test_self_referencing_list_is_rejected() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="nested"):
        round_trip(loop)


def test_unicode_strings() -> None:
    text = "héllo wörld ✓ 🎉"
    assert round_trip(text) == text
    assert ENGINE.eval("v.len()", variables={"v": text}) == len(text)
