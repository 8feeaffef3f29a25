"""LDAP distinguished names as directories compare them (RFC 4514), without I/O."""

from __future__ import annotations


class DNError(ValueError):
    pass


def split_dn(dn: str) -> list[tuple[str, str]]:
    """``(type, value)`` of each attribute of ``dn``, outermost last, with the spaces around
    separators dropped (Active Directory shows ``CN=a, OU=b``); values keep their escapes."""
    parts: list[tuple[str, str]] = []
    current: list[str] = []
    escaped = False
    for char in dn:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char in ",;+":
            parts.append(_pair("".join(current), dn))
            current = []
        else:
            current.append(char)
    if escaped:
        raise DNError(f"{dn!r} ends inside an escape")
    parts.append(_pair("".join(current), dn))
    return parts


def _pair(text: str, dn: str) -> tuple[str, str]:
    kind, sep, value = text.partition("=")
    kind, value = kind.strip(), value.strip()
    if not sep or not kind or not value:
        raise DNError(f"{dn!r} is not a distinguished name (like"
                      " cn=biomed,ou=groups,dc=hospital,dc=example)")
    if not (kind[0].isalpha() and all(c.isalnum() or c == "-" for c in kind)) and not all(
            c.isdigit() or c == "." for c in kind):
        raise DNError(f"{dn!r}: {kind!r} is not an attribute type")
    return kind, value


def normalize_dn(dn: str) -> str:
    """``CN=Biomed, OU=Groups`` and ``cn=biomed,ou=groups`` are one group: types and values
    without case (the case-insensitive matching of cn, ou, dc in every common schema)."""
    return ",".join(f"{kind.lower()}={value.lower()}" for kind, value in split_dn(dn))
