"""tenant_id_for: every circle id gets a valid Lambda TenantId of its own."""

from __future__ import annotations

import re

import botocore.session
from hypothesis import given, settings
from hypothesis import strategies as st

from rhailambda.tenancy import MAX_TENANT_ID_CHARS, tenant_id_for

_MODEL = botocore.session.get_session().get_service_model("lambda")
_INPUT = _MODEL.operation_model("Invoke").input_shape
assert _INPUT is not None
_TENANT_SHAPE = _INPUT.members["TenantId"]
#: Lambda's own rule for TenantId, from botocore's service model (not copied by hand)
PATTERN = re.compile(_TENANT_SHAPE.metadata["pattern"])

# Circle ids are any text; the interesting ones mix kept characters, the escape
# character, spaces and multi-byte characters, and some are long.
_TRICKY = st.sampled_from(["=", " ", "=3D", "%", "a", "Z", "9", "é", "€", "😀", "\x00", "+", "/"])
circle_ids = st.one_of(
    st.text(max_size=300),
    st.lists(_TRICKY, max_size=120).map("".join),
    st.text(st.characters(codec="utf-8"), min_size=200, max_size=600),
)


def _decode_short(tenant_id: str) -> str:
    """The inverse of the short form: proof that it loses nothing."""
    out = bytearray()
    i = 0
    while i < len(tenant_id):
        if tenant_id[i] == "=":
            out.append(int(tenant_id[i + 1 : i + 3], 16))
            i += 3
        else:
            out += tenant_id[i].encode()
            i += 1
    return out.decode("utf-8", "surrogatepass")


def _is_valid(tenant_id: str) -> bool:
    return (
        _TENANT_SHAPE.metadata["min"] <= len(tenant_id) <= _TENANT_SHAPE.metadata["max"]
        and PATTERN.fullmatch(tenant_id) is not None
    )


def test_the_model_limits_are_the_ones_the_module_uses() -> None:
    assert _TENANT_SHAPE.serialization == {"location": "header", "name": "X-Amz-Tenant-Id"}
    assert _TENANT_SHAPE.metadata["max"] == MAX_TENANT_ID_CHARS


def test_plain_circle_ids_are_readable() -> None:
    assert tenant_id_for("alice") == "alice"
    assert tenant_id_for("org/team-1:prod@eu+x") == "org/team-1:prod@eu+x"
    assert tenant_id_for("a b") == "a=20b"
    assert tenant_id_for("a=b") == "a=3Db"
    assert tenant_id_for("café") == "caf=C3=A9"
    assert tenant_id_for("") == "="


def test_the_escape_character_cannot_be_forged() -> None:
    # "=3D" written literally and "=" escaped must not meet
    assert tenant_id_for("=") != tenant_id_for("=3D")
    assert tenant_id_for("=") == "=3D" and tenant_id_for("=3D") == "=3D3D"


def test_long_ids_keep_a_readable_prefix_and_differ_by_their_digest() -> None:
    a, b = "x" * 300, "x" * 299 + "y"
    ta, tb = tenant_id_for(a), tenant_id_for(b)
    assert len(ta) == len(tb) == MAX_TENANT_ID_CHARS
    assert ta != tb and ta[:190] == tb[:190] == "x" * 190
    assert "==" in ta and _is_valid(ta)
    # 256 characters exactly stays short; one more escapes into the long form
    assert tenant_id_for("x" * 256) == "x" * 256
    assert "==" in tenant_id_for("x" * 254 + "é")


def test_a_long_prefix_never_cuts_an_escape() -> None:
    tid = tenant_id_for("é" * 100)  # 600 characters of escapes
    prefix = tid.split("==")[0]
    assert prefix == "=C3=A9" * 31  # 186 characters: a 32nd would pass 190
    assert _decode_short(prefix) == "é" * 31


@settings(max_examples=400)
@given(circle_ids)
def test_every_tenant_id_is_valid_and_short_forms_decode_back(circle: str) -> None:
    tid = tenant_id_for(circle)
    assert _is_valid(tid), tid
    assert tid == tid.strip(), "a header would lose leading or trailing spaces"
    if circle and "==" not in tid:
        assert _decode_short(tid) == circle
    elif circle:  # the long form: a readable prefix of whole characters, then the digest
        prefix, digest = tid.split("==")
        assert circle.startswith(_decode_short(prefix)) and len(digest) == 64


@settings(max_examples=400)
@given(circle_ids, circle_ids)
def test_distinct_circles_never_share_a_tenant(a: str, b: str) -> None:
    if a != b:
        assert tenant_id_for(a) != tenant_id_for(b)


@given(st.lists(circle_ids, min_size=2, max_size=40, unique=True))
def test_no_collision_within_a_set_of_circles(circles: list[str]) -> None:
    assert len({tenant_id_for(c) for c in circles}) == len(circles)
