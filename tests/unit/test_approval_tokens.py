"""Approval-link tokens: what a good one carries, and that every kind of tampering is refused
with exactly one reason (never an exception of another kind)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.approvals.tokens import (
    AUDIENCE,
    BAD_SIGNATURE,
    EXPIRED,
    ISSUER,
    MALFORMED,
    WRONG_ALGORITHM,
    TokenRefused,
    mint,
    signing_key,
    verify,
)

SECRET = b"s" * 32
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
TTL = timedelta(hours=4)


def reason(token: str, now: datetime = NOW, secret: bytes = SECRET) -> str:
    with pytest.raises(TokenRefused) as refused:
        verify(secret, token, now)
    return refused.value.reason


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def payload_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def claims_dict(**changes: object) -> dict:
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "bob", "req": 7, "jti": "j" * 24,
            "iat": int(NOW.timestamp()), "exp": int((NOW + TTL).timestamp())}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_a_minted_token_names_approver_request_and_a_unique_id() -> None:
    token, claims = mint(SECRET, "bob", 7, NOW, TTL)
    again, other = mint(SECRET, "bob", 7, NOW, TTL)
    assert verify(SECRET, token, NOW + timedelta(hours=3)) == claims
    assert (claims.approver, claims.request_id, claims.expires_at) == ("bob", 7, NOW + TTL)
    assert claims.jti != other.jti and token != again
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    body = payload_of(token)
    assert {body["iss"], body["aud"], body["sub"], body["req"]} == {ISSUER, AUDIENCE, "bob", 7}
    # the key is derived for this one purpose, not the raw web secret
    no_exp = {"verify_exp": False}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, options=no_exp)
    jwt.decode(token, signing_key(SECRET), algorithms=["HS256"], audience=AUDIENCE,
               options=no_exp)


def test_link_lifetime_is_bounded() -> None:
    with pytest.raises(ValueError, match="approval link lives"):
        mint(SECRET, "bob", 7, NOW, timedelta(days=8))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_alg_none_is_a_wrong_algorithm() -> None:
    token, _ = mint(SECRET, "bob", 7, NOW, TTL)
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{token.split('.')[1]}."
    assert reason(unsigned) == WRONG_ALGORITHM
    for alg in ("None", "NONE", "HS512", "RS256", "EdDSA"):
        forged = f"{b64({'alg': alg, 'typ': 'JWT'})}.{token.split('.')[1]}.{token.split('.')[2]}"
        assert reason(forged) == WRONG_ALGORITHM, alg
    # even correctly signed with our key, another HMAC algorithm is refused
    hs512 = jwt.encode(claims_dict(), signing_key(SECRET), algorithm="HS512")
    assert reason(hs512) == WRONG_ALGORITHM


def test_wrong_key_is_a_bad_signature() -> None:
    token, _ = mint(b"x" * 32, "bob", 7, NOW, TTL)
    assert reason(token) == BAD_SIGNATURE
    raw = jwt.encode(claims_dict(), SECRET, algorithm="HS256")  # the master, not the subkey
    assert reason(raw) == BAD_SIGNATURE


def test_expired_is_refused_at_the_expiry_instant_by_the_brokers_clock() -> None:
    token, claims = mint(SECRET, "bob", 7, NOW, TTL)
    verify(SECRET, token, claims.expires_at - timedelta(seconds=1))
    assert reason(token, claims.expires_at) == EXPIRED
    assert reason(token, NOW + timedelta(days=30)) == EXPIRED


@pytest.mark.parametrize("claim,value", [("sub", "carol"), ("req", 8), ("jti", "k" * 24),
                                         ("exp", int((NOW + timedelta(days=6)).timestamp()))])
def test_a_swapped_claim_breaks_the_signature(claim: str, value: object) -> None:
    token, _ = mint(SECRET, "bob", 7, NOW, TTL)
    header, _payload, signature = token.split(".")
    body = payload_of(token)
    body[claim] = value
    assert reason(f"{header}.{b64(body)}.{signature}") == BAD_SIGNATURE


@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c.d", "not a token at all", "x" * 5000, "e30.e30.",
    "....", "%%%.%%%.%%%",
])
def test_garbage_is_malformed(token: str) -> None:
    assert reason(token) == MALFORMED


@pytest.mark.parametrize("changes", [
    {"req": None}, {"sub": None}, {"jti": None}, {"exp": None}, {"iat": None},
    {"aud": "something-else"}, {"iss": "someone-else"}, {"req": "7"}, {"req": True},
    {"req": -1}, {"sub": ""}, {"sub": "x" * 64}, {"jti": "short"}, {"jti": "bad id!" * 4},
    {"iat": int((NOW + timedelta(hours=1)).timestamp())},  # issued in the future
    {"exp": int((NOW + timedelta(days=8)).timestamp())},  # lives longer than any link may
    {"exp": "tomorrow"},
])
def test_correctly_signed_but_wrong_claims_are_malformed(changes: dict) -> None:
    token = jwt.encode(claims_dict(**changes), signing_key(SECRET), algorithm="HS256")
    assert reason(token) == MALFORMED


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9_-]{0,40}\.[A-Za-z0-9_-]{0,80}\."
                                             r"[A-Za-z0-9_-]{0,60}", fullmatch=True))
def test_any_string_is_either_valid_or_refused_with_a_known_reason(text: str) -> None:
    try:
        verify(SECRET, text, NOW)
    except TokenRefused as exc:
        assert exc.reason in (MALFORMED, WRONG_ALGORITHM, BAD_SIGNATURE, EXPIRED)
