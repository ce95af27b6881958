"""Names a script may use, and the encoding that keeps circles apart."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhailambda.circle.errors import InvalidArgument
from rhailambda.circle.names import (
    MAX_ID_BYTES,
    check_collection,
    check_context,
    check_id,
    encode_context,
)
from rhailambda.protocol import KeyLayout


@pytest.mark.parametrize("name", ["todo", "Todo_2", "a.b-c", "_x", "9", "x" * 64])
def test_plain_collection_names_are_accepted(name: str) -> None:
    assert check_collection(name) == name


@pytest.mark.parametrize(
    "name", ["", "a:b", "a{b}", "a#b", "a b", ".x", "-x", "x" * 65, "é", None, 3, ["a"]]
)
def test_other_collection_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidArgument, match="invalid collection name"):
        check_collection(name)


@pytest.mark.parametrize("id_", ["1", "a:b", "{x}", "user@example.com", "ключ", "a b", "#"])
def test_ids_may_hold_any_printable_text(id_: str) -> None:
    assert check_id(id_) == id_


@pytest.mark.parametrize("id_", ["", "a\nb", "\x00", "\ud800", "x" * (MAX_ID_BYTES + 1), 1, None])
def test_bad_ids_are_refused(id_: object) -> None:
    with pytest.raises(InvalidArgument, match="invalid id"):
        check_id(id_)


def test_an_empty_context_is_refused_with_a_clear_message() -> None:
    with pytest.raises(InvalidArgument, match="CONTEXT_ID is empty"):
        check_context("")


@given(st.text(min_size=1), st.text(min_size=1))
def test_context_encoding_is_injective_and_key_safe(a: str, b: str) -> None:
    try:
        ea, eb = encode_context(a), encode_context(b)
    except UnicodeEncodeError:  # lone surrogates never pass check_context
        return
    for encoded in (ea, eb):
        assert not set(encoded) & set(":{}#")
    assert (ea == eb) == (a == b)
    layout = KeyLayout()
    if a != b:
        assert layout.circle(ea, "rec", "todo") != layout.circle(eb, "rec", "todo")
