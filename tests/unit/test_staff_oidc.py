"""Staff OpenID Connect sign-in against a tiny in-process provider (tests/unit/oidc_kit):
group → role at every sign-in, PKCE, and every refusal (signature, issuer, audience, state,
nonce, unknown key) audited as ``staff.oidc_refused``; key rotation refetches the JWKS once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from sqlmodel import col, select

from broker.http.staff import oidc
from broker.services.context import Context
from broker.services.staff_accounts import check_password
from broker.services.staff_sso import NO_PASSWORD
from broker.store.models import AuditEvent, StaffSession, StaffUser
from tests.unit.oidc_kit import (
    CLIENT_ID,
    CLIENT_SECRET,
    SECRET_ENV,
    FakeIdP,
    authorize_params,
    configure,
)
from tests.unit.staff_kit import Client, add_staff
from tests.web_kit import portal


@asynccontextmanager
async def with_idp(broker_dir: Path, monkeypatch: pytest.MonkeyPatch, **options: Any
                   ) -> AsyncIterator[tuple[Client, Context, FakeIdP]]:
    monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)
    idp = FakeIdP()
    idp.server = TestServer(idp.app())
    await idp.server.start_server()
    try:
        configure(broker_dir, idp.issuer, **options)
        async with portal(broker_dir) as (client, ctx):
            yield client, ctx, idp
    finally:
        await idp.server.close()


async def begin(client: Client) -> dict[str, str]:
    started = await client.get("/staff/oidc/start?next=/staff/grants", allow_redirects=False)
    assert started.status == 303, await started.text()
    return authorize_params(started.headers["Location"])


async def finish(client: Client, idp: FakeIdP, params: dict[str, str], token: str,
                 code: str = "code-1", state: str | None = None) -> tuple[int, str]:
    idp.will_answer(code, token, params["code_challenge"])
    back = await client.get("/staff/oidc/callback", allow_redirects=False,
                            params={"code": code, "state": params["state"]
                                    if state is None else state})
    return back.status, await back.text()


async def sign_in(client: Client, idp: FakeIdP, **claims: Any) -> tuple[int, str]:
    params = await begin(client)
    return await finish(client, idp, params, idp.sign(idp.claims(params["nonce"], **claims)))


async def refusals(ctx: Context) -> list[dict[str, Any]]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).where(
            AuditEvent.kind == "staff.oidc_refused").order_by(col(AuditEvent.seq)))).all()
    return [json.loads(row.data) for row in rows]


async def test_admin_group_signs_in_with_pkce_and_a_server_side_session_via_oidc(
        broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with with_idp(broker_dir, monkeypatch) as (client, ctx, idp):
        page = await client.get("/staff/login")
        assert "Sign in with Test IdP" in await page.text()
        params = await begin(client)
        assert params["code_challenge_method"] == "S256" and params["client_id"] == CLIENT_ID
        assert params["redirect_uri"] == "https://broker.test:8443/staff/oidc/callback"
        assert set(params["scope"].split()) == {"openid", "email", "profile", "groups"}
        status, body = await finish(client, idp, params,
                                    idp.sign(idp.claims(params["nonce"])))
        assert status == 200 and 'url=/staff/grants"' in body
        assert idp.token_auth[-1].startswith("Basic ")  # client_secret_basic
        home = await client.get("/staff/devices")  # an admin (and auditor) page
        assert home.status == 200
        async with ctx.store.session() as db:
            user = (await db.exec(select(StaffUser).where(StaffUser.name == "ann"))).one()
            sessions = (await db.exec(select(StaffSession))).all()
        assert user.role == "admin" and user.oidc_subject == "u-ann"
        assert [s.via for s in sessions] == ["oidc"]
        # An OIDC account has no password that could ever match.
        assert (await check_password(ctx, "ann", NO_PASSWORD)).reason == "wrong password"


async def test_a_removed_group_loses_its_role_at_the_next_sign_in(
        broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with with_idp(broker_dir, monkeypatch) as (client, ctx, idp):
        assert (await sign_in(client, idp))[0] == 200
        assert (await client.get("/staff/audit")).status == 200
        # Moved to the auditors: the next sign-in gives the auditor role, no revoke page.
        assert (await sign_in(client, idp, groups=["biomed-auditors"]))[0] == 200
        async with ctx.store.session() as db:
            user = (await db.exec(select(StaffUser).where(StaffUser.name == "ann"))).one()
        assert user.role == "auditor"
        # Removed from every broker group: refused with a clear page, sessions ended.
        status, body = await sign_in(client, idp, groups=["cafeteria"])
        assert status == 403 and "none of your groups" in body
        assert (await client.get("/staff/audit", allow_redirects=False)).status == 303
        async with ctx.store.session() as db:
            assert (await db.exec(select(StaffSession))).all() == []
        assert [(r["reason"], r["groups"]) for r in await refusals(ctx)] == [
            ("no mapped group", ["cafeteria"])]
        # Entra ID's "overage": no groups claim, only a pointer to them; said so plainly.
        status, body = await sign_in(client, idp, groups=None,
                                     _claim_names={"groups": "src1"})
        assert status == 403 and "too many groups" in body
        assert (await refusals(ctx))[-1]["reason"] == "groups overage"


async def test_approver_decides_as_the_approver_with_the_same_email(
        broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from broker.services.directory import Directory
    async with with_idp(broker_dir, monkeypatch) as (client, ctx, idp):
        await Directory(ctx, "test").add_approver("alice", "Alice@Hospital.example", ["biomed"])
        status, _ = await sign_in(client, idp, sub="u-alice", preferred_username="alice.w",
                                  email="alice@hospital.example", groups=["biomed-approvers"])
        assert status == 200
        async with ctx.store.session() as db:
            user = (await db.exec(select(StaffUser).where(StaffUser.name == "alice.w"))).one()
        assert (user.role, user.approver_name) == ("approver", "alice")
        status, body = await sign_in(client, idp, sub="u-zed", preferred_username="zed",
                                     email="zed@hospital.example", groups=["biomed-approvers"])
        assert status == 403 and "no registered approver" in body
        assert (await refusals(ctx))[-1]["reason"] == "no approver with this e-mail"
        # An admin demoted to approver at the IdP, with no approver of her e-mail: refused,
        # and her admin session ends with it.
        assert (await sign_in(client, idp))[0] == 200
        assert (await client.get("/staff/audit")).status == 200
        assert (await sign_in(client, idp, groups=["biomed-approvers"]))[0] == 403
        assert (await client.get("/staff/audit", allow_redirects=False)).status == 303


@pytest.mark.parametrize(("case", "reason"), [
    ("signature", "id token: bad signature"),
    ("issuer", "id token: wrong issuer"),
    ("audience", "id token: wrong audience"),
    ("expired", "id token: expired"),
    ("future", "id token: The token is not yet valid (iat)"),
    ("nonce", "id token: wrong nonce"),
    ("no-nonce", "id token: nonce missing"),
    ("hs256", "id token: algorithm 'HS256' not accepted"),
])
async def test_a_bad_id_token_is_refused_and_audited(
        broker_dir: Path, monkeypatch: pytest.MonkeyPatch, case: str, reason: str) -> None:
    async with with_idp(broker_dir, monkeypatch) as (client, ctx, idp):
        params = await begin(client)
        claims = idp.claims(params["nonce"])
        if case == "issuer":
            claims["iss"] = "https://evil.example"
        elif case == "audience":
            claims["aud"] = "another-client"
        elif case == "expired":
            claims["exp"], claims["iat"] = claims["iat"] - 600, claims["iat"] - 900
        elif case == "future":
            claims["iat"] += 3600
        elif case == "nonce":
            claims["nonce"] = "not-the-nonce"
        elif case == "no-nonce":
            del claims["nonce"]
        token = idp.sign(claims)
        if case == "signature":
            head, body, sig = token.split(".")
            token = f"{head}.{body}.{sig[:-6]}{'A' * 6 if sig[-6:] != 'A' * 6 else 'B' * 6}"
        elif case == "hs256":
            token = __import__("jwt").encode(claims, CLIENT_SECRET, algorithm="HS256",
                                             headers={"kid": idp.kid})
        status, body = await finish(client, idp, params, token)
        assert status == 403 and "could not be completed" in body
        assert (await client.get("/staff/", allow_redirects=False)).status == 303
        assert [r["reason"] for r in await refusals(ctx)] == [reason]


async def test_state_missing_replayed_or_from_another_browser_is_refused(
        broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with with_idp(broker_dir, monkeypatch) as (client, ctx, idp):
        params = await begin(client)
        token = idp.sign(idp.claims(params["nonce"]))
        assert (await finish(client, idp, params, token, state=""))[0] == 400
        assert (await finish(client, idp, params, token, state="forged"))[0] == 400
        assert (await finish(client, idp, params, token))[0] == 200
        # The same callback again (a replay): the state was spent.
        assert (await finish(client, idp, params, token, code="code-2"))[0] == 400
        # A state begun in another browser (no binding cookie in this one).
        other = await begin(client)
        client.session.cookie_jar.clear(lambda morsel: "broker_oidc" in morsel.key)
        assert (await finish(client, idp, other, idp.sign(idp.claims(other["nonce"]))))[0] \
            == 400
        assert [r["reason"] for r in await refusals(ctx)] == [
            "state missing", "state unknown or already used", "state unknown or already used",
            "state from another browser"]


async def test_key_rotation_refetches_the_jwks_once_and_unknown_kids_are_rate_limited(
        broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with with_idp(broker_dir, monkeypatch) as (client, ctx, idp):
        assert (await sign_in(client, idp))[0] == 200
        assert idp.jwks_hits == 1
        assert (await sign_in(client, idp))[0] == 200
        assert idp.jwks_hits == 1  # cached
        idp.rotate()
        assert (await sign_in(client, idp))[0] == 200  # new kid: fetched once
        assert idp.jwks_hits == 2
        # A kid nobody publishes: refused; a second one right after does not refetch.
        for _ in range(2):
            params = await begin(client)
            token = idp.sign(idp.claims(params["nonce"]), kid="forged")
            assert (await finish(client, idp, params, token))[0] == 403
        assert idp.jwks_hits == 2
        assert [r["reason"] for r in await refusals(ctx)] == [
            "id token: unknown signing key 'forged'"] * 2
        found = oidc.provider(client.server.app)
        assert found is not None and found.jwks_fetches == 2


async def test_with_local_login_off_the_password_form_is_gone_and_its_post_refused(
        broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with with_idp(broker_dir, monkeypatch, local_login=False) as (client, ctx, _idp):
        await add_staff(ctx, "root", "admin")
        page = await client.get("/staff/login")
        text = await page.text()
        assert "Sign in with Test IdP" in text and 'name="password"' not in text
        refused = await client.post("/staff/login", data={"name": "root", "password": "x"})
        assert refused.status == 403
        async with ctx.store.session() as db:
            rows = (await db.exec(select(AuditEvent).where(
                AuditEvent.kind == "staff.refused"))).all()
        assert [json.loads(r.data)["reason"] for r in rows] == ["local login disabled"]


@pytest.mark.parametrize(("section", "message"), [
    ('[oidc]\nissuer = "https://idp.example"\nclient_id = "x"\n[oidc.roles]\nroot = ["a"]',
     "[oidc] roles: Value error, [oidc.roles] root: expected approver, auditor or admin"),
    ('[oidc]\nissuer = "https://idp.example"\nclient_id = "x"',
     "[oidc]: Value error, [oidc.roles] (or role_claim) is required"),
    ('[oidc]\nlocal_login = false', "local_login = false needs an issuer"),
    ('[oidc]\nissuer = "idp.example"', "expected an http(s) URL"),
    ('[oidc]\nissuer = "http://idp.example"', "expected https (http only on a loopback"),
    ('[oidc]\nissuer = "https://i.example"\nclient_id = "x"\nscopes = "email"\n'
     '[oidc.roles]\nadmin = ["a"]', "the scopes must include 'openid'"),
])
def test_oidc_settings_errors_are_one_line(tmp_path: Path, section: str,
                                           message: str) -> None:
    from broker.config import load_config
    from broker.errors import ConfigError
    (tmp_path / "broker.toml").write_text(section + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "broker.toml", environ={})
    text = str(caught.value)
    assert "\n" not in text and message.split("Value error, ")[-1] in text, text
