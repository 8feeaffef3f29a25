"""Recording JSON never fails to encode: lone surrogates (bytes that were not UTF-8) become
visible ``\\xNN`` / ``\\uNNNN`` text, everything else reads back exactly."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from broker.recording.jsontext import compact, utf8

SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TEXT = st.text(st.one_of(st.characters(), SURROGATE), max_size=40)
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), TEXT,
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12)


def shown(text: str) -> str:
    """What a reader sees for ``text``: each lone surrogate as its visible escape."""
    return "".join(
        (f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else f"\\u{ord(c):04x}")
        if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def readable(value: object) -> object:
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, list):
        return [readable(v) for v in value]
    if isinstance(value, dict):
        return {shown(k): readable(v) for k, v in value.items()}
    return value


@given(VALUES)
def test_any_value_is_utf8_json_that_reads_back_with_bytes_shown(value: object) -> None:
    data = compact(value)
    assert json.loads(data.decode("utf-8")) == readable(value)


@given(st.dictionaries(st.text(max_size=10), st.text(max_size=40), max_size=5))
def test_text_without_surrogates_is_written_as_the_standard_library_writes_it(
        value: dict[str, str]) -> None:
    stdlib = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert compact(value) == stdlib


def test_a_latin1_header_value_kept_by_surrogateescape_shows_its_bytes() -> None:
    value = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    line = compact({"name": "X-Firmware", "value": value})
    assert json.loads(line) == {"name": "X-Firmware", "value": "caf\\xe9 \\xff"}
    # the JSON text of another writer (asciicast, SFTP log) goes through utf8() the same way
    text = json.dumps([0.5, "o", value + "\\"], ensure_ascii=False)
    assert json.loads(utf8(text)) == [0.5, "o", "caf\\xe9 \\xff\\"]


def test_a_lone_surrogate_that_is_no_byte_shows_its_code_point() -> None:
    assert json.loads(compact(["\ud800x"])) == ["\\ud800x"]
