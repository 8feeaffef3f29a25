"""Staff sign-in with the hospital's OpenID Connect provider (issue #20, ``[oidc]``).

The authorization code flow with PKCE (S256), ``state`` and ``nonce``:

1. ``GET /staff/oidc/start`` stores a sign-in under way (:class:`OIDCLogin`: the SHA-256 of a
   random ``state``, a ``nonce``, the PKCE verifier, where to go afterwards), binds it to the
   browser with a ``SameSite=Lax`` cookie (the IdP's redirect back is a cross-site navigation,
   which a ``Strict`` cookie would miss) and redirects to the provider.
2. ``GET /staff/oidc/callback`` spends the sign-in (one use: a replayed ``state`` finds
   nothing), checks the browser cookie, redeems the code at the token endpoint with the PKCE
   verifier, and verifies the ID token: signature against the issuer's JWKS (from
   ``/.well-known/openid-configuration``; an unknown ``kid`` refetches the JWKS once, at most
   every :data:`JWKS_REFETCH_EVERY`), ``iss``, ``aud`` (and ``azp``), ``exp``, ``iat``,
   ``nonce``; only asymmetric algorithms the provider announces are accepted.
3. The groups claim (or ``role_claim``) maps to a broker role at **every** sign-in: a group
   removed at the IdP loses its role at the next sign-in, and no mapped group is refused (and
   the account's open sessions end). The staff session afterwards is the same server-side
   session as a local login (:mod:`broker.services.staff_logins`), marked ``via='oidc'``.

Approvers: an OIDC user with the approver role decides as the registered approver whose
e-mail equals the ID token's verified ``email`` claim (case-insensitive); none → refused.
This keeps one source of truth (the approver directory) and needs no extra claim at the IdP.

Library choice: PyJWT (``pyjwt[crypto]``, already a dependency for the API's tokens) verifies
the JWS and the registered claims and parses JWKs (``PyJWK``); the two HTTP calls (discovery,
JWKS, token) are plain aiohttp, so nothing blocks the event loop (PyJWT's own ``PyJWKClient``
uses urllib synchronously, and Authlib would add a second JOSE stack next to PyJWT).

Every refusal is one ``staff.oidc_refused`` audit event with the reason, through the app's
rate-limited RefusalLog; the visitor sees a page that says what to do next.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import aiohttp_jinja2
import jwt
from aiohttp import web

from broker.config import OIDCSection
from broker.http.keys import CONTEXT, REFUSALS
from broker.http.staff import auth
from broker.services import staff_logins as logins
from broker.services.context import Context
from broker.services.staff_sso import (
    LOGIN_TTL,
    Refused,
    account_for,
    begin_login,
    signed_in,
    spend_login,
)

METADATA_TTL = 3600.0  # seconds the discovery document is kept
JWKS_REFETCH_EVERY = 30.0  # at most one JWKS refetch (for an unknown kid) this often
MAX_IAT_AGE = timedelta(minutes=10)
LEEWAY = 60  # seconds of clock skew accepted on exp / iat
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                        "ES512", "EdDSA"})
OIDC_COOKIE = "broker_oidc"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_challenge(verifier: str) -> str:
    return _b64(hashlib.sha256(verifier.encode()).digest())


@dataclass
class Provider:
    """The configured IdP: its discovery document and signing keys, cached."""

    settings: OIDCSection
    redirect_url: str
    http: aiohttp.ClientSession | None = None
    _metadata: dict[str, Any] | None = None
    _metadata_at: float = 0.0
    _keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    _refetched_at: float = -1e9
    jwks_fetches: int = 0  # for the tests and metrics: how often the JWKS was fetched

    @property
    def name(self) -> str:
        return self.settings.display_name

    def _client(self) -> aiohttp.ClientSession:
        if self.http is None or self.http.closed:
            self.http = aiohttp.ClientSession(timeout=HTTP_TIMEOUT)
        return self.http

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            async with self._client().get(url, headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise Refused(f"{what}: HTTP {resp.status}", 502, _provider_down(self.name))
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Refused(f"{what}: {type(exc).__name__}: {exc}"[:300], 502,
                          _provider_down(self.name)) from None
        if not isinstance(body, dict):
            raise Refused(f"{what}: not a JSON object", 502, _provider_down(self.name))
        return body

    async def metadata(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._metadata is None or now - self._metadata_at > METADATA_TTL:
            issuer = self.settings.issuer
            found = await self._get_json(f"{issuer}/.well-known/openid-configuration",
                                         "discovery")
            if str(found.get("issuer", "")).rstrip("/") != issuer:
                raise Refused(f"discovery: issuer {found.get('issuer')!r} is not {issuer!r}",
                              502, _provider_down(self.name))
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(found.get(key), str):
                    raise Refused(f"discovery: no {key}", 502, _provider_down(self.name))
            self._metadata, self._metadata_at = found, now
        return self._metadata

    async def _fetch_keys(self) -> None:
        jwks = await self._get_json((await self.metadata())["jwks_uri"], "jwks")
        self.jwks_fetches += 1
        keys: dict[str, jwt.PyJWK] = {}
        for entry in jwks.get("keys", []):
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[str(entry.get("kid", ""))] = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type or algorithm this broker does not use
        self._keys = keys

    async def key(self, kid: str) -> jwt.PyJWK:
        """The signing key ``kid``; an unknown one refetches the JWKS (key rotation), at most
        once per :data:`JWKS_REFETCH_EVERY` so that forged kids cannot hammer the IdP."""
        if not self._keys:
            await self._fetch_keys()
        if kid not in self._keys and time.monotonic() - self._refetched_at >= \
                JWKS_REFETCH_EVERY:
            self._refetched_at = time.monotonic()
            await self._fetch_keys()
        if kid not in self._keys:
            raise Refused(f"id token: unknown signing key {kid[:80]!r}")
        return self._keys[kid]

    async def redeem(self, code: str, verifier: str) -> str:
        """Exchange the code (with the PKCE verifier) for an ID token."""
        meta = await self.metadata()
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": self.redirect_url, "code_verifier": verifier}
        headers = {"Accept": "application/json"}
        secret = client_secret(self.settings)
        if secret:
            # client_secret_basic, each part form-encoded first (RFC 6749 section 2.3.1)
            pair = f"{_form_escape(self.settings.client_id)}:{_form_escape(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = self.settings.client_id
        try:
            async with self._client().post(meta["token_endpoint"], data=form,
                                           headers=headers) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Refused(f"token endpoint: {type(exc).__name__}: {exc}"[:300], 502,
                          _provider_down(self.name)) from None
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise Refused(f"token endpoint: HTTP {status} {error or ''}".strip()[:300])
        token = body.get("id_token")
        if not isinstance(token, str):
            raise Refused("token endpoint: no id_token")
        return token

    async def verify(self, token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims once signature, iss, aud/azp, exp, iat and nonce check out."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Refused(f"id token: malformed ({exc})"[:300]) from None
        alg = str(header.get("alg", ""))
        meta = await self.metadata()
        announced = set(meta.get("id_token_signing_alg_values_supported") or ["RS256"])
        if alg not in ASYMMETRIC or alg not in announced:
            raise Refused(f"id token: algorithm {alg[:20]!r} not accepted")
        key = await self.key(str(header.get("kid", "")))
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[alg], audience=self.settings.client_id,
                issuer=meta["issuer"], leeway=LEEWAY,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]})
        except jwt.InvalidSignatureError:
            raise Refused("id token: bad signature") from None
        except jwt.InvalidIssuerError:
            raise Refused("id token: wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise Refused("id token: wrong audience") from None
        except jwt.ExpiredSignatureError:
            raise Refused("id token: expired") from None
        except jwt.PyJWTError as exc:
            raise Refused(f"id token: {exc}"[:300]) from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.settings.client_id:
            raise Refused("id token: azp is not this client")
        if time.time() - float(claims["iat"]) > MAX_IAT_AGE.total_seconds() + LEEWAY:
            raise Refused("id token: issued too long ago")
        got = claims.get("nonce")
        if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
            raise Refused("id token: nonce missing" if got is None else "id token: wrong nonce")
        return claims


def _form_escape(value: str) -> str:
    return urlencode({"": value})[1:]


def _provider_down(name: str) -> str:
    return (f"{name} could not be reached or answered unexpectedly. Try again in a minute; "
            "if it persists, tell the broker's administrator.")


def client_secret(settings: OIDCSection) -> str | None:
    return os.environ.get(settings.client_secret_env) if settings.client_secret_env else None


PROVIDER = web.AppKey("staff_oidc_provider", Provider)


def provider(app: web.Application) -> Provider | None:
    return app.get(PROVIDER)


def redirect_url(ctx: Context) -> str:
    settings = ctx.config.settings
    return settings.oidc.redirect_url or \
        settings.broker.public_url.rstrip("/") + "/staff/oidc/callback"


# -- the routes -------------------------------------------------------------------------


def _set_lax_cookie(request: web.Request, response: web.StreamResponse, value: str) -> None:
    response.set_cookie(auth.cookie_name(request, OIDC_COOKIE), value, path="/", httponly=True,
                        samesite="Lax", secure=auth.secure_cookies(request),
                        max_age=int(LOGIN_TTL.total_seconds()))


async def _refuse(request: web.Request, refused: Refused) -> web.StreamResponse:
    await request.app[REFUSALS].refused(
        "staff.oidc_refused", refused.actor, request.remote or "unknown", None,
        status=refused.status, reason=refused.reason, **refused.data)
    found = provider(request.app)
    response = aiohttp_jinja2.render_template(
        "staff/oidc_refused.html", request,
        {"message": refused.message, "provider": found.name if found else "SSO"},
        status=refused.status)
    # The binding cookie stays: a forged callback link must not break a sign-in under way.
    return response


async def start(request: web.Request) -> web.StreamResponse:
    request.app[auth.LOGIN_LIMIT].enforce(request)
    found = provider(request.app)
    if found is None:
        raise web.HTTPNotFound(text="single sign-on is not configured")
    ctx: Context = request.app[CONTEXT]
    try:
        if found.settings.client_secret_env and not client_secret(found.settings):
            raise Refused(f"client secret: ${found.settings.client_secret_env} is not set",
                          500, "Single sign-on is misconfigured (no client secret). Tell the "
                          "broker's administrator.")
        meta = await found.metadata()
    except Refused as refused:
        return await _refuse(request, refused)
    state, nonce, verifier = (secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                              secrets.token_urlsafe(64))
    browser = secrets.token_urlsafe(32)
    await begin_login(ctx, state, browser, nonce, verifier,
                      auth.safe_next(request.query.get("next")))
    query = urlencode({"response_type": "code", "client_id": found.settings.client_id,
                       "redirect_uri": found.redirect_url, "scope": found.settings.scopes,
                       "state": state, "nonce": nonce,
                       "code_challenge": pkce_challenge(verifier),
                       "code_challenge_method": "S256"})
    endpoint = meta["authorization_endpoint"]
    response = auth.redirect(f"{endpoint}{'&' if '?' in endpoint else '?'}{query}")
    _set_lax_cookie(request, response, browser)
    return response


async def callback(request: web.Request) -> web.StreamResponse:
    request.app[auth.LOGIN_LIMIT].enforce(request)
    found = provider(request.app)
    if found is None:
        raise web.HTTPNotFound(text="single sign-on is not configured")
    try:
        return await _callback(request, found)
    except Refused as refused:
        return await _refuse(request, refused)


async def _callback(request: web.Request, found: Provider) -> web.StreamResponse:
    ctx: Context = request.app[CONTEXT]
    query = request.query
    browser = request.cookies.get(auth.cookie_name(request, OIDC_COOKIE), "")
    login = await spend_login(ctx, query.get("state", ""), browser)
    if "error" in query:
        raise Refused(f"provider error: {query['error'][:100]}", 403,
                      f"{found.name} did not sign you in ({query['error'][:100]}).")
    code = query.get("code", "")
    if not code or len(code) > 2000:
        raise Refused("code missing", 400)
    token = await found.redeem(code, login.code_verifier)
    claims = await found.verify(token, login.nonce)
    user = await account_for(ctx, found.settings, claims)
    await logins.purge_expired(ctx)
    session = await logins.start(ctx, user, request.remote, via="oidc")
    await signed_in(ctx, user, request.remote, claims)
    # A page, not a redirect: the session cookie is SameSite=Strict, and a redirect chain
    # that began at the IdP is cross-site, so the browser would not send it on the next hop.
    response = aiohttp_jinja2.render_template(
        "staff/oidc_done.html", request, {"next": login.next_path})
    auth.set_cookie(request, response, auth.SESSION_COOKIE, session)
    response.del_cookie(auth.cookie_name(request, OIDC_COOKIE), path="/")
    return response


async def _close(app: web.Application) -> None:
    await app[PROVIDER].close()


def setup(app: web.Application) -> None:
    ctx: Context = app[CONTEXT]
    settings = ctx.config.settings.oidc
    if not settings.issuer:
        return
    app[PROVIDER] = Provider(settings, redirect_url(ctx))
    app.on_cleanup.append(_close)
    app.router.add_get("/staff/oidc/start", start)
    app.router.add_get("/staff/oidc/callback", callback)
