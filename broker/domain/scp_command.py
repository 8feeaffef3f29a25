"""The one exec command the broker treats as scp: a legacy scp *server* invocation.

``scp -O`` (and OpenSSH before 9.0) runs ``scp -t PATH`` (upload) or ``scp -f PATH``
(download) on the far side, through the account's shell. A channel is scp only when the whole
command is exactly that: argv[0] ``scp``; the server flags ``-t`` or ``-f`` (exactly one of
them) and any of ``-r -p -d -v``, combined or separate; an optional ``--``; exactly one path.
The words are read as a POSIX shell reads them, conservatively: anything whose meaning to a
shell is not plainly literal (``; & | $ ` < > ( ) { } * ? [ ] # ! ~user``, a newline, any
control character, an unbalanced quote) makes the command not scp. Such a command is an exec,
which needs the ``ssh`` protocol.

The device never sees the technician's string: :func:`build` writes the command from the
parsed parts, ``scp`` + canonical flags + ``--`` + the path quoted for any POSIX shell.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

MAX_COMMAND = 4096
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@%+=:,./-")
#: Inside double quotes these keep a meaning to the shell (or to an interactive bash).
_DQ_SPECIAL = frozenset('$`\\!"')
_FLAGS = frozenset("tfrpdv")


class NotScp(ValueError):
    """Why a command is not a plain scp server invocation (the reason is one line)."""


@dataclass(frozen=True)
class ScpCommand:
    upload: bool  # -t: the device is the sink; -f: it is the source
    path: str
    recursive: bool = False
    preserve: bool = False
    must_be_dir: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        _check_path(self.path)

    @property
    def flags(self) -> str:
        """The canonical flags, e.g. ``-rpt``."""
        return "-" + "".join(letter for letter, on in (
            ("r", self.recursive), ("p", self.preserve), ("d", self.must_be_dir),
            ("v", self.verbose)) if on) + ("t" if self.upload else "f")


def build(command: ScpCommand) -> str:
    """The device's command: ``scp FLAGS -- 'PATH'``, nothing of the technician's text."""
    return f"scp {command.flags} -- {shlex.quote(command.path)}"


def parse(command: str) -> ScpCommand:
    """Parse ``command`` as an scp server invocation or raise :class:`NotScp`."""
    if len(command) > MAX_COMMAND:
        raise NotScp(f"the command is longer than {MAX_COMMAND} characters")
    words = split_words(command)
    if not command.startswith("scp ") or words[0] != "scp":  # written plainly, unquoted
        raise NotScp("the command is not 'scp'")
    letters: list[str] = []
    rest = words[1:]
    while rest and rest[0].startswith("-"):
        word = rest.pop(0)
        if word == "--":
            break
        if len(word) < 2 or not set(word[1:]) <= _FLAGS:
            raise NotScp(f"scp option {word!r} is not one of -t -f -r -p -d -v")
        letters.extend(word[1:])
    if letters.count("t") + letters.count("f") != 1:
        raise NotScp("scp needs exactly one of -t (upload) or -f (download)")
    if len(rest) != 1:
        raise NotScp(f"scp needs exactly one path, not {len(rest)}")
    try:
        return ScpCommand(upload="t" in letters, path=rest[0], recursive="r" in letters,
                          preserve="p" in letters, must_be_dir="d" in letters,
                          verbose="v" in letters)
    except ValueError as exc:
        raise NotScp(str(exc)) from None


def parse_or_none(command: str) -> ScpCommand | None:
    try:
        return parse(command)
    except NotScp:
        return None


def split_words(command: str) -> list[str]:
    """Split ``command`` into words as a POSIX shell would, refusing (with :class:`NotScp`)
    anything but literal text: unquoted characters outside a small safe set, expansions,
    control characters. Separators are spaces. ``~`` or ``~/`` leading a word (the home
    directory, where the session starts) becomes ``.``/``./``."""
    words: list[str] = []
    word: list[str] | None = None
    i, n = 0, len(command)
    while i < n:
        ch = command[i]
        if ch == " ":
            if word is not None:
                words.append("".join(word))
                word = None
            i += 1
            continue
        if word is None:
            word = []
            if ch == "~":
                i = _tilde(command, i, word)
                continue
        if ch == "'":
            end = command.find("'", i + 1)
            if end < 0:
                raise NotScp("unbalanced single quote")
            word.append(_literal(command[i + 1:end]))
            i = end + 1
        elif ch == '"':
            end = command.find('"', i + 1)
            if end < 0:
                raise NotScp("unbalanced double quote")
            inner = command[i + 1:end]
            if any(c in _DQ_SPECIAL for c in inner):
                raise NotScp("'$', '`', '\\' or '!' inside double quotes")
            word.append(_literal(inner))
            i = end + 1
        elif ch == "\\":
            if i + 1 >= n or not _printable(command[i + 1]):
                raise NotScp("a backslash before nothing or a control character")
            word.append(command[i + 1])
            i += 2
        elif ch in _SAFE:
            word.append(ch)
            i += 1
        else:
            raise NotScp(f"shell character {ch!r} outside quotes")
    if word is not None:
        words.append("".join(word))
    return words


def _tilde(command: str, i: int, word: list[str]) -> int:
    """``~`` alone or ``~/...`` at a word's start: the home directory, where the session
    starts, so ``.`` and ``./...``."""
    after = command[i + 1:i + 2]
    if after in ("", " ", "/"):
        word.append(".")
        return i + 1
    raise NotScp("'~user' is not accepted; give the path itself")


def _printable(ch: str) -> bool:
    return ch == " " or ch.isprintable()


def _literal(text: str) -> str:
    if not all(_printable(c) for c in text):
        raise NotScp("a control character in the command")
    return text


def _check_path(path: str) -> None:
    if not path:
        raise ValueError("the scp path is empty")
    if not all(_printable(c) for c in path):
        raise ValueError("the scp path holds a control character")
