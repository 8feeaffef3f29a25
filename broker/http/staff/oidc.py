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
   session as a local login (:mod:`broker.http.staff.logins`), marked ``via='oidc'``.

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
import json
import os
import re
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
from sqlmodel import col, delete, select

from broker.config import OIDCSection
from broker.http.keys import CONTEXT, REFUSALS
from broker.http.staff import auth, logins
from broker.services.context import Context
from broker.store.models import Approver, OIDCLogin, StaffSession, StaffUser

LOGIN_TTL = timedelta(minutes=10)  # from the redirect to the IdP to the callback
METADATA_TTL = 3600.0  # seconds the discovery document is kept
JWKS_REFETCH_EVERY = 30.0  # at most one JWKS refetch (for an unknown kid) this often
MAX_IAT_AGE = timedelta(minutes=10)
LEEWAY = 60  # seconds of clock skew accepted on exp / iat
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                        "ES512", "EdDSA"})
ROLE_ORDER = ("admin", "auditor", "approver")  # the highest mapped role wins
OIDC_COOKIE = "broker_oidc"
NO_PASSWORD = "!oidc: signs in with the identity provider only"  # never a valid Argon2 hash
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class Refused(Exception):
    """A sign-in the broker will not complete: ``reason`` for the audit log, ``status`` and
    ``message`` for the visitor."""

    def __init__(self, reason: str, status: int = 403, message: str | None = None,
                 actor: str = "anonymous", **data: object) -> None:
        super().__init__(reason)
        self.reason, self.status, self.actor, self.data = reason, status, actor, data
        self.message = message or ("The sign-in could not be completed. Please start again "
                                   "from the sign-in page.")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


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


# -- mapping claims to a role and an account --------------------------------------------


def role_for(settings: OIDCSection, claims: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The broker role the claims give (the highest mapped), and the groups seen."""
    raw = claims.get(settings.group_claim, [])
    groups = [raw] if isinstance(raw, str) else [str(g) for g in raw] \
        if isinstance(raw, list) else []
    found = {role for role, names in settings.roles.items() if set(names) & set(groups)}
    if settings.role_claim:
        named = claims.get(settings.role_claim)
        for value in [named] if isinstance(named, str) else named or []:
            if value in ROLE_ORDER:
                found.add(str(value))
    return next((role for role in ROLE_ORDER if role in found), None), groups


def staff_name(settings: OIDCSection, claims: dict[str, Any]) -> str:
    raw = str(claims.get(settings.username_claim) or claims.get("email") or claims["sub"])
    name = _NAME_CHARS.sub("-", raw).strip("-._")[:63]
    return name or _sha(str(claims["sub"]))[:20]


async def _approver_for(ctx: Context, claims: dict[str, Any]) -> str | None:
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is False:
        return None
    async with ctx.store.session() as db:
        for approver in (await db.exec(select(Approver).where(
                col(Approver.disabled).is_(False)))).all():
            if approver.email.strip().lower() == email.strip().lower():
                return approver.name
    return None


def _check_role(settings: OIDCSection, claims: dict[str, Any], role: str | None,
                groups: list[str], actor: str, approver: str | None) -> str | None:
    """The approver this role decides as; Refused when the claims give no usable role."""
    if role is None:
        if settings.group_claim in (claims.get("_claim_names") or {}):
            # Entra ID's "overage": too many groups for the token, only a link to them
            raise Refused("groups overage", 403, (
                "You belong to too many groups for the identity provider to list them in the "
                "sign-in token. Ask your administrator to limit the groups claim to the "
                "broker's groups (or to use app roles)."), actor=actor)
        raise Refused("no mapped group", 403, (
            "You signed in, but none of your groups gives access to the broker. Ask your "
            "administrator to add you to one of the broker's groups."),
            actor=actor, groups=groups[:20])
    if role == "approver" and approver is None:
        raise Refused("no approver with this e-mail", 403, (
            "Your account maps to the approver role, but no registered approver has your "
            "e-mail address. Ask your administrator to register you as an approver."),
            actor=actor, email=str(claims.get("email", ""))[:320])
    return approver


async def account_for(ctx: Context, settings: OIDCSection, claims: dict[str, Any]
                      ) -> StaffUser:
    """The staff account of these verified claims, made or updated (role, approver) now."""
    subject = str(claims["sub"])[:255]
    name = staff_name(settings, claims)
    role, groups = role_for(settings, claims)
    actor = f"staff:{name}"
    try:
        approver = _check_role(settings, claims, role, groups, actor,
                               await _approver_for(ctx, claims))
    except Refused:
        # The IdP no longer gives this person a usable role: end what is still open.
        async with ctx.store.session() as db:
            user = (await db.exec(select(StaffUser).where(
                StaffUser.oidc_subject == subject))).first()
            if user is not None:
                await db.exec(delete(StaffSession).where(col(StaffSession.user_id) == user.id))
        raise
    assert role is not None  # _check_role refused otherwise
    async with ctx.store.session() as db:
        user = (await db.exec(select(StaffUser).where(
            StaffUser.oidc_subject == subject))).first()
        if user is None:
            taken = (await db.exec(select(StaffUser).where(StaffUser.name == name))).first()
            if taken is not None:
                raise Refused("name taken by another account", 403, (
                    f"A broker account named {name!r} already exists. Ask your administrator "
                    "to rename or remove it."), actor=actor)
            user = StaffUser(name=name, role=role, password_hash=NO_PASSWORD,
                             approver_name=approver, oidc_subject=subject,
                             created_at=ctx.now())
            db.add(user)
            await ctx.audit(db, "staff.added", "oidc", f"staff:{name}", role=role,
                            approver=approver, via="oidc")
        else:
            if user.disabled:
                raise Refused("account disabled", 403, (
                    "This account is disabled in the broker."), actor=f"staff:{user.name}")
            if (user.role, user.approver_name) != (role, approver):
                await ctx.audit(db, "staff.role_changed", "oidc", f"staff:{user.name}",
                                old=user.role, new=role, approver=approver, groups=groups[:20])
                user.role, user.approver_name = role, approver
                db.add(user)
        await db.flush()
        await db.refresh(user)
    return user


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
    now = ctx.now()
    async with ctx.store.session() as db:
        await db.exec(delete(OIDCLogin).where(col(OIDCLogin.created_at) < now - LOGIN_TTL))
        db.add(OIDCLogin(state_hash=_sha(state), browser_hash=_sha(browser), nonce=nonce,
                         code_verifier=verifier,
                         next_path=auth.safe_next(request.query.get("next"))[:300],
                         created_at=now))
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


async def _spend(ctx: Context, state: str, browser: str) -> OIDCLogin:
    """The sign-in this ``state`` started, deleted (one use), checked against the browser."""
    async with ctx.store.session() as db:
        login = await db.get(OIDCLogin, _sha(state)) if state and len(state) <= 200 else None
        if login is None:
            raise Refused("state unknown or already used" if state else "state missing", 400)
        await db.delete(login)
    if not browser or not hmac.compare_digest(_sha(browser), login.browser_hash):
        raise Refused("state from another browser", 400)
    if ctx.now() - login.created_at > LOGIN_TTL:
        raise Refused("sign-in took too long", 400, "The sign-in took too long. Please start "
                      "again from the sign-in page.")
    return login


async def _callback(request: web.Request, found: Provider) -> web.StreamResponse:
    ctx: Context = request.app[CONTEXT]
    query = request.query
    browser = request.cookies.get(auth.cookie_name(request, OIDC_COOKIE), "")
    login = await _spend(ctx, query.get("state", ""), browser)
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
    async with ctx.store.session() as db:
        await ctx.audit(db, "staff.login_succeeded", f"staff:{user.name}",
                        f"staff:{user.name}", address=request.remote or "unknown",
                        role=user.role, via="oidc", mfa=None,
                        amr=json.dumps(claims.get("amr"))[:100])
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
