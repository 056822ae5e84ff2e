"""``decode_cursor`` (issue #11, item 7): only the cursors ``encode_cursor`` makes, for ids 1..2**63-1."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memory_store.errors import ValidationError
from memory_store.records import MAX_CURSOR_ID, decode_cursor, encode_cursor


def _cursor(raw: str | bytes) -> str:
    data = raw.encode() if isinstance(raw, str) else raw
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_the_largest_id_is_int64_max():
    assert MAX_CURSOR_ID == 2**63 - 1


@given(st.integers(min_value=1, max_value=MAX_CURSOR_ID))
def test_every_valid_id_round_trips_padded_or_not(last_id):
    cursor = encode_cursor(last_id)
    assert decode_cursor(cursor) == last_id
    assert decode_cursor(cursor + "=" * (-len(cursor) % 4)) == last_id


@pytest.mark.parametrize(
    "cursor",
    [
        "djE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5",
        _cursor(f"v1:{2**63}"),
        _cursor(f"v1:{2**64}"),
        _cursor("v1:-1"),
        _cursor(f"v1:-{2**63}"),
        _cursor("v1:0"),
        _cursor("v1:00"),
        _cursor("v1:007"),
        _cursor("v1:+7"),
        _cursor("v1: 7"),
        _cursor("v1:7\n"),
        _cursor("v1:7_0"),
        _cursor("v1:\u0667"),  # ARABIC-INDIC DIGIT SEVEN: int() would take it
        _cursor("v1:\u00b2"),  # SUPERSCRIPT TWO: isdigit() would take it
        _cursor("v1:"),
        _cursor("v1:7:8"),
        _cursor("V1:7"),
        _cursor("v2:7"),
        _cursor("7"),
        _cursor(b"v1:\xff"),
        "",
        "a",
        "=",
        "====",
        "!!!!",
        "djE6Nw===",
        "djE6Nw==djE6Nw",
        "djE6 Nw",
        "djE6Nw\n",
        "djE6Nw+/",  # the standard (not URL-safe) alphabet
        "d\u00e9j\u00e0",
        "A" * 65,
    ],
)
def test_anything_else_is_a_validation_error(cursor):
    with pytest.raises(ValidationError, match="cursor is malformed"):
        decode_cursor(cursor)


@given(st.text(max_size=80))
def test_arbitrary_text_decodes_to_a_valid_id_or_raises_validation_error(cursor):
    try:
        value = decode_cursor(cursor)
    except ValidationError:
        return
    assert 1 <= value <= MAX_CURSOR_ID and decode_cursor(encode_cursor(value)) == value
