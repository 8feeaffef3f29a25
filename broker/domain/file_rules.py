"""File transfer rules (policy key ``files``): what a technician may upload and download.

Pure decisions on paths, names and sizes; the SFTP and scp relays (``broker/ssh``) call them
for every operation and refuse with the returned message. Everything is decided on the text of
the path, never on the broker's or the device's file system:

* a path is made absolute (against the device's home directory when the relay knows it) and
  normalised with :func:`posixpath.normpath`, so ``..`` cannot climb out of an allowed tree
  and ``//``, ``.`` and trailing slashes make no difference;
* ``deny_names`` are fnmatch-style globs matched case-insensitively against the final path
  component (also with trailing dots and spaces removed, which some file systems ignore);
* ``paths`` are globs on the whole normalised path: ``*`` and ``?`` stay within one
  component, ``**`` spans any number of them (``/var/log/**`` is everything below /var/log);
* a change on the device (remove, mkdir, rename, link, setstat) counts as an upload: it needs
  ``upload: allow`` and the paths it touches must be allowed; names it creates (a rename's or
  a link's new name, a symlink's target) must not be denied.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from dataclasses import dataclass, field
from enum import StrEnum

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)


class Transfer(StrEnum):
    UPLOAD = "upload"
    DOWNLOAD = "download"
    CHANGE = "change"  # a change on the device other than file content: rules as for uploads


def parse_size(value: object) -> int:
    """``500M``, ``2G``, ``64K``, ``1024`` (bytes; K/M/G/T are powers of 1024) -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(match.group(1)) * _UNITS[match.group(2).upper()]
    else:
        raise ValueError(f"{value!r} is not a size (write a number of bytes or e.g. 500M, 2G)")
    if size < 1:
        raise ValueError(f"the size must be at least 1 byte, not {value!r}")
    return size


def format_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i, n = [], 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and (end := pattern.find("]", i + 2)) > 0:
            inner = pattern[i + 1:end]
            negate = inner.startswith("!")
            body = re.escape(inner[1:] if negate else inner).replace("\\-", "-")
            out.append(f"[^/{body}]" if negate else f"[{body}]")
            i = end + 1
            continue
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def check_path_pattern(pattern: str) -> str:
    """A ``paths`` entry as written, or ValueError saying why it cannot be one."""
    if not pattern.startswith("/"):
        raise ValueError(f"path pattern {pattern!r} must be absolute (start with /)")
    if "\0" in pattern or any(part in (".", "..") for part in pattern.split("/")):
        raise ValueError(f"path pattern {pattern!r} must not hold '.', '..' or NUL")
    return pattern


def check_name_pattern(pattern: str) -> str:
    if not pattern or "/" in pattern or "\0" in pattern:
        raise ValueError(f"name pattern {pattern!r} must be one non-empty file name glob"
                         " without '/'")
    return pattern


@dataclass(frozen=True)
class FileRules:
    """The ``files`` policy key; the default allows everything (the broker then adds nothing
    to the relay)."""

    upload: bool = True
    download: bool = True
    max_size: int | None = None
    deny_names: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    _path_res: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for pattern in self.paths:
            check_path_pattern(pattern)
        for name in self.deny_names:
            check_name_pattern(name)
        if self.max_size is not None and self.max_size < 1:
            raise ValueError("max_size must be at least 1 byte")
        compiled = tuple(_glob_regex(p) for p in self.paths)
        object.__setattr__(self, "_path_res", compiled)
        object.__setattr__(self, "_names", tuple(n.casefold() for n in self.deny_names))

    @property
    def unrestricted(self) -> bool:
        return (self.upload and self.download and self.max_size is None
                and not self.deny_names and not self.paths)

    @property
    def needs_home(self) -> bool:
        """Whether relative paths must be resolved to decide (only ``paths`` needs it)."""
        return bool(self.paths)

    def describe(self) -> str:
        if self.unrestricted:
            return "File transfers: no restrictions"
        parts = [f"upload {'allowed' if self.upload else 'denied'}",
                 f"download {'allowed' if self.download else 'denied'}"]
        if self.max_size is not None:
            parts.append(f"at most {format_size(self.max_size)} per file")
        if self.deny_names:
            parts.append("names denied: " + ", ".join(self.deny_names))
        if self.paths:
            parts.append("only under: " + ", ".join(self.paths))
        return "File transfers: " + "; ".join(parts)

    def as_json(self) -> dict[str, object]:
        return {"upload": "allow" if self.upload else "deny",
                "download": "allow" if self.download else "deny",
                "max_size": format_size(self.max_size) if self.max_size else None,
                "deny_names": list(self.deny_names), "paths": list(self.paths)}

    # -- decisions --------------------------------------------------------------------------

    def denied_name(self, path: str) -> str | None:
        """The ``deny_names`` pattern the final component of ``path`` matches, if any."""
        name = path.rstrip("/").rsplit("/", 1)[-1].casefold()
        names = {name, name.rstrip(". ")}
        for folded, pattern in zip(self._names, self.deny_names, strict=True):
            if any(fnmatch.fnmatchcase(n, folded) for n in names):
                return pattern
        return None

    def path_allowed(self, absolute: str) -> bool:
        if not self.paths:
            return True
        return any(r.match(absolute) for r in self._path_res)

    def size_refusal(self, path: str, size: int) -> str | None:
        if self.max_size is not None and size > self.max_size:
            return (f"{_show(path)} refused by policy: {size} bytes exceed the limit of"
                    f" {format_size(self.max_size)} per file")
        return None

    def check(self, transfer: Transfer, path: str, home: str | None = None, *,
              name_matters: bool = True, size: int | None = None) -> str | None:
        """Why ``transfer`` of ``path`` is refused (one line), or None when it is allowed."""
        if transfer is Transfer.DOWNLOAD and not self.download:
            return f"download of {_show(path)} refused by policy: downloads are not allowed"
        if transfer is not Transfer.DOWNLOAD and not self.upload:
            what = "upload of" if transfer is Transfer.UPLOAD else "changing"
            return (f"{what} {_show(path)} refused by policy: uploads and changes"
                    " are not allowed")
        if "\0" in path:
            return f"{_show(path)} refused by policy: the path holds a NUL byte"
        if name_matters and (pattern := self.denied_name(path)) is not None:
            return f"{_show(path)} refused by policy: the name matches deny_names {pattern!r}"
        if self.paths:
            absolute = normalise(path, home)
            if absolute is None:
                return (f"{_show(path)} refused by policy: give an absolute path (transfers"
                        " are limited to " + ", ".join(self.paths) + ")")
            if not self.path_allowed(absolute):
                return (f"{_show(absolute)} refused by policy: not under the allowed paths ("
                        + ", ".join(self.paths) + ")")
        if size is not None:
            return self.size_refusal(path, size)
        return None


def normalise(path: str, home: str | None = None) -> str | None:
    """``path`` made absolute against ``home`` and normalised; None if that is impossible."""
    if not path.startswith("/"):
        if home is None or not home.startswith("/"):
            return None
        path = f"{home}/{path}"
    clean = posixpath.normpath(path)
    return "/" + clean.lstrip("/")  # normpath keeps a leading "//"


def link_target(link: str, target: str) -> str:
    """Where a symlink ``link`` -> ``target`` points (relative targets from the link's
    directory), for checking it as a path."""
    if target.startswith("/"):
        return target
    return posixpath.join(posixpath.dirname(link) or ".", target)


def _show(path: str) -> str:
    text = path if len(path) <= 200 else path[:200] + "..."
    return repr(text)
