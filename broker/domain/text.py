"""Free text people type (reasons, comments, descriptions): one rule for every channel.

Whatever the channel (SSH, CLI, REST API, web form), free text is one line of printable
characters, no longer than its kind allows. Refused anywhere in the text:

* C0 controls U+0000-U+001F (line feed, carriage return and tab included: free text is one
  line, so nobody can fake extra lines such as an "approve here" block), DEL U+007F and the
  C1 controls U+0080-U+009F (terminal escape sequences start with ESC or CSI);
* the bidirectional embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069
  (they make text read differently from how it is stored);
* the line and paragraph separators U+2028 and U+2029;
* lone surrogates (not encodable; they would break every output).

Text that is already stored (rows older than this rule) is shown through :func:`visible`,
which writes each of those characters as a visible escape (``\\x1b``, ``\\u202e``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from broker.domain.errors import InvariantViolation

MAX_REASON = 2000       # request reasons, revoke and break-glass reasons
MAX_COMMENT = 2000      # approval comments, review comments
MAX_DESCRIPTION = 2000  # a device's purpose
MAX_SHORT = 200         # kill reasons, vendor, model, firmware, department

_BIDI = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A))
_SEPARATORS = frozenset({0x2028, 0x2029})
# The same set as forbidden(), as one character class (for scanning long text quickly).
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029"
                        "\ud800-\udfff]")


class TextError(InvariantViolation):
    """Free text that breaks the rule; ``field`` names the field (``reason``, ``comment``...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.detail = field, message


@dataclass(frozen=True)
class TextKind:
    """A kind of free text: the field's name as users see it and its length limit."""

    field: str
    limit: int
    required: bool = False


REQUEST_REASON = TextKind("reason", MAX_REASON, required=True)
DECISION_COMMENT = TextKind("comment", MAX_COMMENT)
REVIEW_COMMENT = TextKind("comment", MAX_COMMENT, required=True)
REVOKE_REASON = TextKind("reason", MAX_REASON)
BREAKGLASS_REASON = TextKind("reason", MAX_REASON)  # and 3 words: services.breakglass
KILL_REASON = TextKind("reason", 300)
VENDOR = TextKind("vendor", MAX_SHORT, required=True)
MODEL = TextKind("model", MAX_SHORT)
FIRMWARE = TextKind("firmware", MAX_SHORT)
DEPARTMENT = TextKind("department", MAX_SHORT)
PURPOSE = TextKind("purpose", MAX_DESCRIPTION)


def forbidden(char: str) -> bool:
    """Whether ``char`` may never appear in free text."""
    code = ord(char)
    return (code < 0x20 or 0x7F <= code <= 0x9F or code in _BIDI or code in _SEPARATORS
            or 0xD800 <= code <= 0xDFFF)


def check_text(field: str, text: str, limit: int, *, required: bool = False) -> str:
    """``text`` with surrounding spaces removed, or :class:`TextError` naming ``field``.

    The message says what is wrong and where (the character's code point and position), and
    never repeats the text itself."""
    if len(text) > limit:
        raise TextError(field, f"is longer than {limit} characters ({len(text)} given)")
    found = _FORBIDDEN.search(text)
    if found:
        raise TextError(field, f"contains {describe(found.group())} at character"
                               f" {found.start() + 1}; free text must be printable and on one"
                               " line (no control, bidi-override or line-separator characters)")
    cleaned = text.strip()
    if required and not cleaned:
        raise TextError(field, "must not be empty")
    return cleaned


def check_kind(kind: TextKind, text: str) -> str:
    return check_text(kind.field, text, kind.limit, required=kind.required)


def describe(char: str) -> str:
    code = ord(char)
    names = {0x1B: "ESC", 0x0A: "line feed", 0x0D: "carriage return", 0x09: "tab",
             0x00: "NUL", 0x7F: "DEL", 0x9B: "CSI", 0x85: "NEL", 0x2028: "line separator",
             0x2029: "paragraph separator"}
    what = ("a bidirectional override" if code in _BIDI else
            "a lone surrogate" if 0xD800 <= code <= 0xDFFF else
            "a line separator" if code in _SEPARATORS else "a control character")
    name = names.get(code)
    return f"{what} U+{code:04X}" + (f" ({name})" if name else "")


def visible(text: str) -> str:
    """``text`` with every character :func:`check_text` refuses written as a visible escape
    (``\\x1b``, ``\\n``, ``\\u202e``), for showing stored text on a terminal, in e-mail or on
    a page. Text without such characters comes back unchanged (the same object)."""
    if not _FORBIDDEN.search(text):
        return text
    return _FORBIDDEN.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    named = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}.get(code)
    if named:
        return named
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
