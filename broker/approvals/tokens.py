"""Approval-link tokens: PyJWT, HS256 with a key derived from the web secret, single-use.

A token names its approver (``sub``), its request (``req``) and a unique id (``jti``), with
``iat``/``exp``, a fixed issuer and audience. :func:`verify` maps every way a token can be bad to
ONE reason (see :data:`REASONS`): never a traceback, never a hint beyond that word.
Expiry is checked against the broker's clock (not PyJWT's), so tests can move time.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from broker.credentials.keys import subkey

ALGORITHM = "HS256"
ISSUER = "vendor-access-broker"
AUDIENCE = "approval-link"
MAX_TTL = timedelta(days=7)
CLOCK_SKEW = timedelta(seconds=60)
MAX_TOKEN_LENGTH = 2048

EXPIRED = "expired"
BAD_SIGNATURE = "bad signature"
MALFORMED = "malformed"
WRONG_ALGORITHM = "wrong algorithm"
USED = "used"
REASONS = (EXPIRED, BAD_SIGNATURE, MALFORMED, WRONG_ALGORITHM, USED)

_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\Z")
_JTI = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")
_REQUIRED = ["iss", "aud", "sub", "req", "jti", "iat", "exp"]


class TokenRefused(Exception):
    """The token is not acceptable; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ApprovalClaims:
    jti: str
    approver: str
    request_id: int
    issued_at: datetime
    expires_at: datetime


def signing_key(web_secret: bytes) -> bytes:
    return subkey(web_secret, "approval-jwt")


def mint(web_secret: bytes, approver: str, request_id: int, now: datetime,
         ttl: timedelta) -> tuple[str, ApprovalClaims]:
    if not timedelta(0) < ttl <= MAX_TTL:
        raise ValueError(f"an approval link lives between 1 s and {MAX_TTL}, not {ttl}")
    issued = now.replace(microsecond=0)
    claims = ApprovalClaims(jti=secrets.token_urlsafe(18), approver=approver,
                            request_id=request_id, issued_at=issued, expires_at=issued + ttl)
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": approver, "req": request_id,
               "jti": claims.jti, "iat": int(issued.timestamp()),
               "exp": int(claims.expires_at.timestamp())}
    token = jwt.encode(payload, signing_key(web_secret), algorithm=ALGORITHM,
                       headers={"typ": "JWT"})
    return token, claims


def verify(web_secret: bytes, token: str, now: datetime) -> ApprovalClaims:
    """The token's claims, or :class:`TokenRefused` naming the one thing wrong with it."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not _SHAPE.match(token):
        raise TokenRefused(MALFORMED)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenRefused(MALFORMED) from None
    if not isinstance(header.get("alg"), str):
        raise TokenRefused(MALFORMED)
    if header["alg"] != ALGORITHM:
        raise TokenRefused(WRONG_ALGORITHM)
    try:
        payload = jwt.decode(
            token, signing_key(web_secret), algorithms=[ALGORITHM], audience=AUDIENCE,
            issuer=ISSUER, options={"require": _REQUIRED, "verify_exp": False,
                                    "verify_iat": False, "verify_nbf": False})
    except jwt.InvalidSignatureError:
        raise TokenRefused(BAD_SIGNATURE) from None
    except jwt.InvalidAlgorithmError:
        raise TokenRefused(WRONG_ALGORITHM) from None
    except jwt.PyJWTError:
        raise TokenRefused(MALFORMED) from None
    claims = _claims(payload)
    if claims.issued_at > now + CLOCK_SKEW or claims.expires_at - claims.issued_at > MAX_TTL:
        raise TokenRefused(MALFORMED)
    if claims.expires_at <= now:
        raise TokenRefused(EXPIRED)
    return claims


def _claims(payload: dict[str, Any]) -> ApprovalClaims:
    sub, req, jti = payload.get("sub"), payload.get("req"), payload.get("jti")
    iat, exp = payload.get("iat"), payload.get("exp")
    if (not isinstance(sub, str) or not 0 < len(sub) <= 63
            or not isinstance(req, int) or isinstance(req, bool) or req <= 0
            or not isinstance(jti, str) or not _JTI.match(jti)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp))):
        raise TokenRefused(MALFORMED)
    assert isinstance(iat, int) and isinstance(exp, int)
    try:
        issued, expires = (datetime.fromtimestamp(iat, UTC), datetime.fromtimestamp(exp, UTC))
    except (OverflowError, OSError, ValueError):
        raise TokenRefused(MALFORMED) from None
    return ApprovalClaims(jti=jti, approver=sub, request_id=req, issued_at=issued,
                          expires_at=expires)
