"""Vendor self-service links (technician invitations, vendor contacts' sign-in): pure rules.

A link's token is ``<id>.<secret>.<mac>``: the row id it is bound to, 32 random bytes
(URL-safe base64) and an HMAC-SHA256 of both under a key derived from the web secret for
that one purpose. Only the SHA-256 of ``<id>.<secret>`` is stored, so the database alone
cannot rebuild a link, and a token whose MAC does not match is refused before any lookup.
:func:`parse_token` maps every malformed or tampered token to one reason; the services add
``used`` and ``expired``.

SSH keys accepted from a technician: Ed25519, ECDSA, RSA of at least 3072 bits.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from broker.domain.errors import InvariantViolation

INVITE = "invitation"
VENDOR_LOGIN = "vendor-login"
PURPOSES = (INVITE, VENDOR_LOGIN)

OPEN, PENDING, APPROVED, REJECTED = "open", "pending", "approved", "rejected"
CANCELLED = "withdrawn"  # an open invitation the hospital took back before it was used
STATES = (OPEN, PENDING, APPROVED, REJECTED, CANCELLED)

TAMPERED = "tampered"
MALFORMED = "malformed"
USED = "used"
EXPIRED = "expired"
WRONG_DOMAIN = "wrong domain"
WITHDRAWN = "withdrawn"

_TOKEN = re.compile(r"([1-9][0-9]{0,9})\.([A-Za-z0-9_-]{43})\.([0-9a-f]{64})\Z")
MIN_RSA_BITS = 3072
ACCEPTED_KEYS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                 "ecdsa-sha2-nistp521", "ssh-rsa")


class LinkRefused(InvariantViolation):
    """A link that may not be used; ``reason`` is one word (see the module constants)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Minted:
    token: str
    token_hash: str


def _key(web_secret: bytes, purpose: str) -> bytes:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown link purpose {purpose!r}")
    return hmac.new(web_secret, f"broker/{purpose}-link".encode(), hashlib.sha256).digest()


def _mac(web_secret: bytes, purpose: str, body: str) -> str:
    return hmac.new(_key(web_secret, purpose), body.encode(), hashlib.sha256).hexdigest()


def token_hash(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


NONCE = re.compile(r"[A-Za-z0-9_-]{43}\Z")  # 32 random bytes, URL-safe base64


def mint(web_secret: bytes, purpose: str, row_id: int, nonce: str) -> Minted:
    """The token bound to row ``row_id`` with this random ``nonce`` (the caller draws it:
    ``secrets.token_urlsafe(32)``), and the hash to store for it."""
    if row_id <= 0:
        raise ValueError("a link is bound to a stored row")
    if not NONCE.match(nonce):
        raise ValueError("the nonce is 32 random bytes, URL-safe base64")
    body = f"{row_id}.{nonce}"
    return Minted(f"{body}.{_mac(web_secret, purpose, body)}", token_hash(body))


def placeholder_hash(nonce: str) -> str:
    """A unique stored hash no token matches (the row exists before its token is minted)."""
    return "pending-" + nonce[:56]


@dataclass(frozen=True)
class ParsedToken:
    row_id: int
    token_hash: str


def parse_token(web_secret: bytes, purpose: str, token: str) -> ParsedToken:
    """The row a token names, if its MAC is right; else :class:`LinkRefused`."""
    if not isinstance(token, str) or len(token) > 200:
        raise LinkRefused(MALFORMED)
    match = _TOKEN.match(token)
    if match is None:
        raise LinkRefused(MALFORMED)
    row_id, secret, mac = match.groups()
    body = f"{row_id}.{secret}"
    if not hmac.compare_digest(_mac(web_secret, purpose, body), mac):
        raise LinkRefused(TAMPERED)
    return ParsedToken(int(row_id), token_hash(body))


def hash_matches(stored: str, presented: str) -> bool:
    return hmac.compare_digest(stored.encode(), presented.encode())


def key_refusal(algorithm: str, bits: int | None) -> str | None:
    """Why an SSH public key of this kind is not accepted, or None."""
    if algorithm not in ACCEPTED_KEYS:
        return (f"{algorithm[:40]} keys are not accepted: use an Ed25519 key"
                " (ssh-keygen -t ed25519), ECDSA, or RSA of 3072 bits or more")
    if algorithm == "ssh-rsa" and (bits is None or bits < MIN_RSA_BITS):
        return (f"this RSA key has {bits} bits: at least {MIN_RSA_BITS} are required"
                " (or use ssh-keygen -t ed25519)")
    return None


def suggested_name(email: str) -> str:
    """A user-name suggestion from an address's local part (may still need editing)."""
    local = email.partition("@")[0]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "", local).lstrip("._-")
    return cleaned[:63]


def state_of_contract(disabled: bool, contract_over: bool, ending_soon: bool) -> str:
    """A vendor's contract state for listings: disabled, ended, ending soon, active."""
    if disabled:
        return "disabled"
    if contract_over:
        return "ended"
    return "ending soon" if ending_soon else "active"
