"""Who is who: e-mail addresses compared as the same mailbox, not as the same string.

Two addresses name the same person when their normalised forms are equal:

* the whole address is case-folded (``Tech@Vendor.example`` is ``tech@vendor.example``:
  domains are case-insensitive, and in practice every mail server treats the local part so);
* a ``+tag`` (sub-address) is dropped from the local part (``tech+x@`` reaches ``tech@``);
* surrounding spaces are ignored.

Dots in the local part are kept: only some providers ignore them (``j.smith`` and ``jsmith``
are the same Gmail mailbox but may be two people at a hospital or a vendor), so treating them
as equal would stop unrelated people from approving. Where one person does hold two different
mailboxes, an admin links the approver to the technician explicitly (``broker approver link``).
"""

from __future__ import annotations

from broker.domain.errors import InvariantViolation
from broker.domain.text import forbidden

MAX_ADDRESS = 320


class AddressError(InvariantViolation):
    """Not an e-mail address the broker can use."""


def check_address(field: str, address: str) -> str:
    """``address`` stripped, or :class:`AddressError` (one line, naming ``field``)."""
    text = address.strip()
    if len(text) > MAX_ADDRESS:
        raise AddressError(f"{field}: is longer than {MAX_ADDRESS} characters")
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or any(forbidden(c) or c.isspace() for c in text):
        raise AddressError(f"{field}: {_shown(text)} is not an e-mail address"
                           " (expected NAME@DOMAIN, without spaces or control characters)")
    return text


def normalise_address(address: str) -> str:
    """The mailbox ``address`` reaches: case-folded, without a ``+tag``."""
    local, at, domain = address.strip().casefold().rpartition("@")
    if not at:
        return address.strip().casefold()
    local = local.split("+", 1)[0]
    return f"{local}@{domain}"


def same_mailbox(first: str | None, second: str | None) -> bool:
    """Whether two addresses reach the same mailbox (False if either is missing)."""
    if not first or not second:
        return False
    return normalise_address(first) == normalise_address(second)


def _shown(text: str) -> str:
    return ascii(text if len(text) <= 60 else text[:60] + "...")
