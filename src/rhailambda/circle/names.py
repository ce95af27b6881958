"""What a script may name, and how names become storage keys.

A script names a *collection* and a record *id* (or a member id); the circle is
always the task's ``CONTEXT_ID``, never an argument. Collection names are plain
(``[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}``); ids are any printable text up to
:data:`MAX_ID_BYTES` UTF-8 bytes, so public keys, emails and ``user:1`` all work.

Ids never become part of a key name: in Redis they are hash fields and sorted-set
members, in DynamoDB they follow a collection name that cannot contain ``#``. The
context id does become part of keys, so it is percent-encoded first
(:func:`encode_context`): the result has no ``:``, ``{``, ``}`` or ``#``, and
distinct context ids give distinct encodings. Whatever a script passes, a key of
circle A can never equal a key of circle B.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote

from rhailambda.circle.errors import InvalidArgument

__all__ = [
    "MAX_CONTEXT_BYTES",
    "MAX_ID_BYTES",
    "check_collection",
    "check_context",
    "check_id",
    "encode_context",
]

MAX_ID_BYTES: Final = 512
MAX_CONTEXT_BYTES: Final = 512
_COLLECTION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")


def check_collection(value: object) -> str:
    """``value`` if it is an acceptable collection name, else :class:`InvalidArgument`."""
    if not isinstance(value, str) or _COLLECTION.fullmatch(value) is None:
        raise InvalidArgument(
            f"invalid collection name {_show(value)}: use 1-64 characters of "
            "A-Z a-z 0-9 _ . - (not starting with . or -)"
        )
    return value


def check_id(value: object, what: str = "id") -> str:
    """``value`` if it is an acceptable record or member id, else :class:`InvalidArgument`."""
    if not isinstance(value, str) or value == "":
        raise InvalidArgument(f"invalid {what} {_show(value)}: expected a non-empty string")
    if not value.isprintable():
        raise InvalidArgument(f"invalid {what} {_show(value)}: control characters are not allowed")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument(f"invalid {what}: not valid Unicode text") from None
    if size > MAX_ID_BYTES:
        raise InvalidArgument(f"invalid {what}: {size} bytes long, at most {MAX_ID_BYTES}")
    return value


def check_context(value: str) -> str:
    """The task's context id, if the store can serve it (non-empty, printable, bounded)."""
    if value == "":
        raise InvalidArgument("this task has no circle: CONTEXT_ID is empty")
    return check_id(value, "CONTEXT_ID")


def encode_context(context_id: str) -> str:
    """An injective, key-safe spelling of a context id (RFC 3986 percent-encoding).

    Only ``A-Z a-z 0-9 _ . - ~`` stay as they are; every other character (``%``
    included) becomes ``%XX`` escapes of its UTF-8 bytes.
    """
    return quote(context_id, safe="")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
