"""Secrets kept out of messages: a Redis URL shown with its password hidden.

Its own module so that both :mod:`rhailambda.settings` and :mod:`rhailambda.redis_url`
(which settings imports) can use it without importing each other.
"""

from __future__ import annotations

import re

__all__ = ["redact_url"]

_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def redact_url(url: str) -> str:
    """The URL with its secrets replaced by ``***``, even when it does not parse.

    Everything between ``://`` and the LAST ``@`` is user-info: when it holds a
    ``/``, ``?`` or ``#`` (a password nobody percent-encoded) all of it is hidden,
    else only what follows the first ``:`` (the user name stays). A ``password=``
    query value is hidden too.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, after = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        if colon and not any(c in user for c in "/?#"):
            rest = f"{user}:***@{after}"
        else:
            rest = f"***@{after}"
    rest = _QUERY_PASSWORD.sub(r"\1***", rest)
    return f"{scheme}{sep}{rest}"
