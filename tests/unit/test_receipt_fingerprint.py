"""Receipt fingerprints are stored beside a circle's writes: they must not change."""

from __future__ import annotations

import pytest

from rhailambda.extension import Receipt, task_fingerprint


@pytest.mark.parametrize(
    ("fields", "fingerprint"),
    [
        (("let x = 10; x * 2", "bench", "bench", "1"), "22209b35a9bce5d2a8e0fe816b4d85e4"),
        (("é\ud800", "", "x", "2026"), "79d51a14e4920ca509cd0f899d43ac94"),
    ],
)
def test_a_fingerprint_is_what_earlier_releases_stored(
    fields: tuple[str, str, str, str], fingerprint: str
) -> None:
    """A receipt written before an upgrade still covers its task after it (the values were
    computed by the release that first stored receipts); a lone surrogate is encoded."""
    assert task_fingerprint(*fields) == fingerprint


def test_fields_are_delimited_by_length_not_by_joining() -> None:
    """Moving text from one field to the next makes another task."""
    assert task_fingerprint("ab", "c", "d", "e") != task_fingerprint("a", "bc", "d", "e")
    stored = Receipt("t", "out", 1, task_fingerprint("ab", "c", "d", "e"))
    assert not stored.covers(Receipt("t", None, 2, task_fingerprint("a", "bc", "d", "e")))
