"""A tiny OpenID provider in aiohttp for the callback's unit tests: discovery, a JWKS the
test can rotate, and a token endpoint that hands back whatever ID token the test crafted
(checking the PKCE verifier against the challenge the broker sent)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "broker-staff"
CLIENT_SECRET = "s3cret-for-tests-long-enough-for-hs256"
SECRET_ENV = "TEST_OIDC_CLIENT_SECRET"  # not BROKER_*: those are settings overrides


@dataclass
class FakeIdP:
    server: TestServer | None = None
    kid: str = "k1"
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))
    old_keys: list[tuple[str, rsa.RSAPrivateKey]] = field(default_factory=list)
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)  # code -> (token, challenge)
    jwks_hits: int = 0
    token_auth: list[str] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def rotate(self) -> None:
        self.old_keys.append((self.kid, self.key))
        self.kid = f"k{len(self.old_keys) + 1}"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def sign(self, claims: dict[str, Any], *, kid: str | None = None,
             key: rsa.RSAPrivateKey | None = None) -> str:
        return jwt.encode(claims, key or self.key, algorithm="RS256",
                          headers={"kid": kid or self.kid})

    def claims(self, nonce: str, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.issuer, "aud": CLIENT_ID, "sub": "u-ann", "iat": now,
                "exp": now + 300, "nonce": nonce, "email": "ann@hospital.example",
                "email_verified": True, "preferred_username": "ann",
                "groups": ["biomed-admins"], **extra}

    def will_answer(self, code: str, token: str, challenge: str) -> None:
        self.tokens[code] = (token, challenge)

    async def _discovery(self, _request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/auth",
            "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
            "id_token_signing_alg_values_supported": ["RS256"]})

    async def _jwks(self, _request: web.Request) -> web.Response:
        self.jwks_hits += 1
        keys = []
        for kid, key in [(self.kid, self.key), *self.old_keys[-1:]]:
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return web.json_response({"keys": keys})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.token_auth.append(request.headers.get("Authorization", ""))
        answer = self.tokens.pop(str(form.get("code")), None)
        if answer is None:
            return web.json_response({"error": "invalid_grant"}, status=400)
        token, challenge = answer
        verifier = str(form.get("code_verifier", ""))
        made = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
        if made.decode() != challenge:
            return web.json_response({"error": "invalid_grant", "why": "pkce"}, status=400)
        return web.json_response({"access_token": "x", "token_type": "Bearer",
                                  "id_token": token})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/token", self._token)
        return app


def configure(broker_dir: Path, issuer: str, *, local_login: bool = True,
              extra: str = "") -> None:
    """Add an ``[oidc]`` section for ``issuer`` to the directory's broker.toml."""
    toml = broker_dir / "broker.toml"
    # drop broker init's [oidc] section (up to the next section), then add this one last
    before = re.sub(r"\n\[oidc(\.[a-z]+)?\]\n.*?(?=\n\[|\Z)", "", toml.read_text(), flags=re.S)
    toml.write_text(before + f"""
[oidc]
issuer = "{issuer}"
provider_name = "Test IdP"
client_id = "{CLIENT_ID}"
client_secret_env = "{SECRET_ENV}"
local_login = {"true" if local_login else "false"}
{extra}

[oidc.roles]
admin = ["biomed-admins"]
auditor = ["biomed-auditors"]
approver = ["biomed-approvers"]
""")


def authorize_params(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
