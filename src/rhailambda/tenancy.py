"""A circle id as a Lambda ``TenantId``: one spelling per circle, never shared.

Lambda's tenant isolation mode routes each invocation to execution environments
kept for its ``TenantId`` (the ``X-Amz-Tenant-Id`` header: 1-256 characters of
``[a-zA-Z0-9._:/=+\\-@ ]``). Circle ids are any printable text up to 512 bytes, so
they are mapped onto that alphabet by :func:`tenant_id_for`, which the shim uses to
invoke and the function uses to check that a batch's tasks belong to the tenant it
was invoked for. Two circles must never share a tenant: the mapping is injective.

- **Short form** (at most 256 characters). ``A-Z a-z 0-9 . _ : / + - @`` stay as
  they are; every other character (``=`` and space included) becomes ``=XX`` for
  each byte of its UTF-8 encoding (uppercase hex). ``=`` only ever starts an
  escape of exactly two hex digits, and UTF-8 is a prefix-free code, so the
  spelling reads back to exactly one string: distinct circles, distinct spellings.
  Space is escaped although Lambda allows it: HTTP strips a header's leading and
  trailing spaces, which would fold ``" a"`` onto ``"a"``.
- **Long form** (an encoding over 256 characters): the first characters of the
  short form (cut before an escape, never inside one), then ``==``, then the
  SHA-256 of the circle id's UTF-8 bytes in hex (256 characters in all). ``==``
  never occurs in a short form (``=`` is always followed by a hex digit there), so
  a long form never equals a short one; two long forms are equal only if their
  SHA-256 digests are, a collision no one has ever found (about 2**-128 for any
  pair by the birthday bound).
- The empty id (a task without a circle, refused anyway) becomes ``=``, which no
  other id's spelling is (a short form's ``=`` has two hex digits after it).
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_TENANT_ID_CHARS", "other_tenant", "tenant_id_for"]

MAX_TENANT_ID_CHARS: Final = 256
_KEPT: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/+-@"
#: the spelling of each UTF-8 byte: kept characters are ASCII, so escaping byte by
#: byte is escaping character by character
_SPELLING: Final = tuple(chr(b) if b in _KEPT else f"={b:02X}" for b in range(256))
_LONG_MARK: Final = "=="
_DIGEST_CHARS: Final = 64  # SHA-256, hex
_PREFIX_CHARS: Final = MAX_TENANT_ID_CHARS - len(_LONG_MARK) - _DIGEST_CHARS


def tenant_id_for(circle_id: str) -> str:
    """The ``TenantId`` of a circle (see the module docstring for why it is injective)."""
    if not circle_id:
        return "="
    # surrogatepass: a lone surrogate (not valid Unicode, but a Python str) still has
    # one spelling of its own instead of raising
    data = circle_id.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_TENANT_ID_CHARS and not data.translate(None, _KEPT):
        return circle_id  # nothing to escape (the common case: plain ids)
    pieces = [_SPELLING[b] for b in data]
    total = sum(map(len, pieces))
    if total <= MAX_TENANT_ID_CHARS:
        return "".join(pieces)
    cut = used = 0  # the prefix: whole characters only (readable, never half an escape)
    for i, piece in enumerate(pieces):
        used += len(piece)
        if used > _PREFIX_CHARS:
            break
        if i + 1 == len(data) or not 0x80 <= data[i + 1] < 0xC0:  # a character ends here
            cut = i + 1
    import hashlib  # only for ids past 256 characters: OpenSSL stays off the cold start

    digest = hashlib.sha256(data).hexdigest()
    return "".join(pieces[:cut]) + _LONG_MARK + digest


def other_tenant(circle_id: str, tenant_id: str | None) -> str | None:
    """Why a task of ``circle_id`` may not run in an invocation for ``tenant_id``, or None.

    None when the function is not tenant-isolated (no ``tenant_id``). The reason
    does not name ``tenant_id``: it is another circle's, and goes into this task's reply.
    """
    if tenant_id is None or tenant_id_for(circle_id) == tenant_id:
        return None
    return (
        "refused: this task's circle (contextId) is not the tenant this invocation runs "
        "for; with tenant isolation a batch serves one circle. Nothing ran; resubmit it "
        "(the shim routes it to its own circle's environment)"
    )
