"""The line model of what a technician typed: editing keys it follows, keys it cannot follow
(the line becomes unreliable), bracketed paste, and cutting input at submit keys."""

from __future__ import annotations

import pytest

from broker.domain.typed_line import TypedLine, split_submits


def typed(*chunks: bytes) -> TypedLine:
    line = TypedLine()
    for chunk in chunks:
        line.feed(chunk)
    return line


@pytest.mark.parametrize(("keys", "expected"), [
    (b"ls -l", "ls -l"),
    (b"rm -rf /tmpx\x7f", "rm -rf /tmp"),  # Backspace (DEL)
    (b"rm -rf /tmpx\x08", "rm -rf /tmp"),  # Backspace (BS)
    (b"echo hi\x15rm -rf /", "rm -rf /"),  # Ctrl-U kills what was before
    (b"echo one two\x17three", "echo one three"),  # Ctrl-W kills a word
    (b"echo one two  \x17", "echo one "),  # ... and the blanks after it
    (b"rm -rf /\x1b[D\x1b[Dx", "rm -rfx /"),  # Left arrows, insert in the middle
    (b"rm -rf /\x1bOD\x1bODy", "rm -rfy /"),  # application-mode arrows
    (b"m -rf /\x1b[Hr", "rm -rf /"),  # Home
    (b"m -rf /\x01r\x05!", "rm -rf /!"),  # Ctrl-A, Ctrl-E
    (b"rm -rf /abc\x01\x06\x06\x0b", "rm"),  # Ctrl-F twice, Ctrl-K
    (b"rm -rf /abc\x1b[D\x1b[D\x1b[D\x1b[3~", "rm -rf /bc"),  # Delete
    (b"xrm\x01\x04", "rm"),  # Ctrl-D deletes at the cursor
    (b"abc\x02\x02Z\x1b[CY", "aZbYc"),  # Ctrl-B, Right arrow
    (b"junk\x03rm -rf /", "rm -rf /"),  # Ctrl-C drops the line
    ("r\u00e9boot".encode(), "r\u00e9boot"),  # UTF-8 text
])
def test_editing_keys_are_followed(keys: bytes, expected: str) -> None:
    line = typed(keys)
    assert line.line == expected
    assert line.reliable


def test_a_character_split_across_chunks_stays_whole() -> None:
    data = "r\u00e9boot".encode()
    line = typed(data[:2], data[2:])
    assert line.line == "r\u00e9boot" and line.reliable


def test_an_escape_sequence_split_across_chunks_is_still_one_key() -> None:
    line = typed(b"rm /x\x1b", b"[", b"D", b"y")
    assert line.line == "rm /yx" and line.reliable


@pytest.mark.parametrize("key", [
    b"\x1b[A",  # Up: history
    b"\x1b[B",  # Down
    b"\x1bOA",
    b"\t",  # Tab completion
    b"\x12",  # Ctrl-R search
    b"\x10",  # Ctrl-P
    b"\x0e",  # Ctrl-N
    b"\x19",  # Ctrl-Y yank
    b"\x14",  # Ctrl-T transpose
    b"\x16",  # Ctrl-V quoted insert
    b"\x1b.",  # Alt-. last argument
    b"\x1bb",  # Alt-b
    b"\x1b[15~",  # F5
])
def test_keys_the_model_cannot_follow_make_the_line_unreliable(key: bytes) -> None:
    line = typed(b"echo ", key)
    assert not line.reliable


def test_a_runaway_escape_sequence_is_given_up_on() -> None:
    line = typed(b"\x1b[" + b"1;" * 40)
    assert not line.reliable


def test_reset_and_ctrl_c_make_the_line_known_again() -> None:
    line = typed(b"\x1b[A")
    assert not line.reliable
    line.feed(b"\x03")
    assert line.reliable and line.line == ""
    line.feed(b"\t")
    line.reset()
    assert line.reliable and line.line == ""


def test_bracketed_paste_is_text_with_newlines_in_the_buffer() -> None:
    line = typed(b"\x1b[200~echo a\rrm -rf /\x1b[D\x1b[201~")
    assert not line.pasting
    assert line.line == "echo a\nrm -rf /\x1b[D"
    assert line.lines() == ["echo a\nrm -rf /\x1b[D", "echo a", "rm -rf /\x1b[D"]
    assert line.reliable


def test_inside_a_paste_the_model_says_so_and_takes_newlines() -> None:
    line = typed(b"\x1b[200~echo a")
    assert line.pasting
    line.newline_in_paste()
    line.feed(b"rm -rf /\x1b[201~")
    assert line.lines()[1:] == ["echo a", "rm -rf /"]


def test_input_is_cut_after_each_submit_key() -> None:
    assert split_submits(b"ls") == [(b"ls", b"")]
    assert split_submits(b"ls\r") == [(b"ls", b"\r"), (b"", b"")]
    assert split_submits(b"a\rb\nc\x0fd") == [(b"a", b"\r"), (b"b", b"\n"), (b"c", b"\x0f"),
                                             (b"d", b"")]
    # inside a bracketed paste too: each newline is a point where the buffer is checked
    assert split_submits(b"\x1b[200~x\ry\x1b[201~") == [(b"\x1b[200~x", b"\r"),
                                                        (b"y\x1b[201~", b"")]
