"""What a technician typed into a shell line, from the bytes their terminal sent.

A :class:`TypedLine` follows one line between Enter presses with the editing keys of a
readline/canonical-mode shell: printable text (UTF-8) at the cursor, Backspace, Delete,
Ctrl-U, Ctrl-W, Ctrl-K, Ctrl-A/E, Ctrl-B/F, Left/Right/Home/End and bracketed paste. Pasted text
without bracketed paste arrives as keys, so each newline in it is an Enter.

Whenever a key changes the line in a way the broker cannot follow from the keys alone (history
recall with Up/Down or Ctrl-P/N, Tab completion, Ctrl-R search, yank, transpose, Alt-keys, any
other escape sequence or control key), the line is marked **unreliable**: the caller must then
judge the line by what the terminal shows, and fail closed.

:func:`split_submits` cuts a chunk of input at each key that submits the line (Enter: CR or LF,
and Ctrl-O, readline's operate-and-get-next).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

ESC = "\x1b"
PASTE_START = "\x1b[200~"
PASTE_END = "\x1b[201~"
SUBMIT_KEYS = frozenset("\r\n\x0f")
_SUBMIT_BYTES = frozenset(b"\r\n\x0f")
_CSI_FINAL = range(0x40, 0x7F)


@dataclass
class TypedLine:
    text: list[str] = field(default_factory=list)
    cursor: int = 0
    reliable: bool = True
    _pending: str = ""  # an escape sequence not yet complete
    _pasting: bool = False
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))

    @property
    def line(self) -> str:
        return "".join(self.text)

    def lines(self) -> list[str]:
        """The line, and each of its parts when a paste put newlines into it."""
        whole = self.line
        parts = whole.split("\n")
        return [whole, *parts] if len(parts) > 1 else [whole]

    @property
    def pasting(self) -> bool:
        """Inside a bracketed paste: a newline now goes into the shell's buffer."""
        return self._pasting

    def newline_in_paste(self) -> None:
        self._insert("\n")

    def reset(self) -> None:
        self.text, self.cursor, self.reliable = [], 0, True
        self._pending, self._pasting = "", False

    def feed(self, data: bytes) -> None:
        for char in self._decoder.decode(data):
            self._key(char)

    # -- one character at a time -------------------------------------------------------------
    def _key(self, char: str) -> None:
        if self._pending:
            self._pending += char
            self._escape()
            return
        if char == ESC:
            self._pending = char
            return
        if self._pasting:
            self._insert("\n" if char == "\r" else char)
            return
        if char.isprintable():
            self._insert(char)
        elif char in ("\x7f", "\x08"):
            if self.cursor > 0:
                del self.text[self.cursor - 1]
                self.cursor -= 1
        elif char == "\x15":  # Ctrl-U: kill to the start of the line
            del self.text[:self.cursor]
            self.cursor = 0
        elif char == "\x17":  # Ctrl-W: kill the blank-delimited word before the cursor
            start = self.cursor
            while start > 0 and self.text[start - 1].isspace():
                start -= 1
            while start > 0 and not self.text[start - 1].isspace():
                start -= 1
            del self.text[start:self.cursor]
            self.cursor = start
        elif char == "\x0b":  # Ctrl-K: kill to the end
            del self.text[self.cursor:]
        elif char == "\x01":
            self.cursor = 0
        elif char == "\x05":
            self.cursor = len(self.text)
        elif char == "\x02":
            self.cursor = max(0, self.cursor - 1)
        elif char == "\x06":
            self.cursor = min(len(self.text), self.cursor + 1)
        elif char == "\x04":  # Ctrl-D: delete at the cursor (EOF on an empty line)
            if self.cursor < len(self.text):
                del self.text[self.cursor]
        elif char == "\x03":  # Ctrl-C: the shell drops the line
            self.reset()
        elif char in SUBMIT_KEYS:
            pass  # the caller splits at submits; a stray one changes nothing here
        else:
            self.reliable = False  # Tab, Ctrl-R, Ctrl-P/N, Ctrl-Y, Ctrl-T, Ctrl-V, ...

    def _insert(self, char: str) -> None:
        self.text.insert(self.cursor, char)
        self.cursor += 1

    def _escape(self) -> None:
        seq = self._pending
        if len(seq) < 2:
            return
        intro = seq[1]
        if intro == "[":
            if len(seq) < 3 or ord(seq[-1]) not in _CSI_FINAL:
                if len(seq) > 32:  # not a sequence any terminal sends: give up on the line
                    self._pending, self.reliable = "", False
                return
        elif intro == "O" and len(seq) < 3:
            return
        self._pending = ""
        self._sequence(seq)

    def _sequence(self, seq: str) -> None:
        if seq == PASTE_START:
            self._pasting = True
            return
        if seq == PASTE_END:
            self._pasting = False
            return
        if self._pasting:  # any other sequence inside a paste is pasted text
            for char in seq:
                self._insert(char)
            return
        if seq in ("\x1b[C", "\x1bOC"):
            self.cursor = min(len(self.text), self.cursor + 1)
        elif seq in ("\x1b[D", "\x1bOD"):
            self.cursor = max(0, self.cursor - 1)
        elif seq in ("\x1b[H", "\x1bOH", "\x1b[1~", "\x1b[7~"):
            self.cursor = 0
        elif seq in ("\x1b[F", "\x1bOF", "\x1b[4~", "\x1b[8~"):
            self.cursor = len(self.text)
        elif seq == "\x1b[3~":
            if self.cursor < len(self.text):
                del self.text[self.cursor]
        else:
            self.reliable = False  # Up/Down (history), Alt-keys, function keys, ...


def split_submits(data: bytes) -> list[tuple[bytes, bytes]]:
    """``data`` cut after each submit key: ``[(before, key), ..., (rest, b"")]``.

    Every CR, LF and Ctrl-O is a point where the line must be checked, inside a bracketed
    paste too (there the shell only adds the newline to its buffer, but checking the buffer
    so far at each one can only refuse more, never less)."""
    pieces: list[tuple[bytes, bytes]] = []
    start = 0
    for index, byte in enumerate(data):
        if byte in _SUBMIT_BYTES:
            pieces.append((data[start:index], data[index:index + 1]))
            start = index + 1
    pieces.append((data[start:], b""))
    return pieces
