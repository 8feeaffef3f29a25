"""Self-approval through an e-mail alias: an approver whose address reaches the requesting
technician's mailbox (``Tech+x@Vendor.example``, upper case) or who is linked to the
technician as one person (``--same-person-as``, ``broker approver link``) may not decide,
on the CLI, the API, the approval page or the portal; each refusal is audited as
``approval.refused`` with reason ``self-approval``."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from broker.config import load_config
from broker.domain.identity import normalise_address, same_mailbox
from broker.errors import Refused
from broker.http.security import csrf_token
from broker.services import breakglass
from broker.services.api_tokens import ApiTokens
from broker.services.context import Context
from broker.services.directory import Directory, parse_public_keys
from broker.services.requests import Requests
from broker.store.models import AccessRequest, AuditEvent, Device
from broker.testing import FakeClock
from tests.approval_kit import link_for
from tests.conftest import Cli
from tests.unit.staff_kit import add_staff, sign_in
from tests.web_kit import portal

ALIASES = {"plus": "Tech+x@Vendor.example", "upper": "TECH@VENDOR.EXAMPLE",
           "both": " tech+Weekend@vendor.EXAMPLE "}


@pytest.mark.parametrize("alias", ALIASES.values())
def test_aliases_reach_the_same_mailbox(alias: str) -> None:
    assert normalise_address(alias) == "tech@vendor.example"
    assert same_mailbox("tech@vendor.example", alias)


def test_different_people_stay_different() -> None:
    assert not same_mailbox("tech@vendor.example", "tech@vendor.example.org")
    assert not same_mailbox("tech@vendor.example", "tech2@vendor.example")
    assert not same_mailbox("j.smith@hospital.example", "jsmith@hospital.example")  # dots kept
    assert not same_mailbox(None, "tech@vendor.example")


async def _world(ctx: Context, pubkey: Path) -> int:
    directory = Directory(ctx, "test")
    await directory.add_technician("tech", "Vendor", parse_public_keys(pubkey.read_text(), "k"),
                                   email="tech@vendor.example")
    await directory.add_approver("honest", "honest@hospital.example", [])
    for name, address in ALIASES.items():
        await directory.add_approver(name, address, [])
    await directory.add_approver("linked", "private@mail.example", [], same_person_as=["tech"])
    await directory.add_approver("later", "other@mail.example", [])
    await directory.add_device(Device(name="pump", host="127.0.0.1", login_user="svc"),
                               "password", b"pw")
    request = await Requests(ctx, "technician:tech").create("tech", "pump", timedelta(hours=1),
                                                            "replace the battery")
    return request.id or 0


async def _self_refusals(ctx: Context) -> list[dict[str, Any]]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).where(AuditEvent.kind == "approval.refused")
                              .order_by(col(AuditEvent.seq)))).all()
    return [{"actor": r.actor, "subject": r.subject, **json.loads(r.data)} for r in rows
            if json.loads(r.data).get("reason") == "self-approval"]


async def _state(ctx: Context, ident: int) -> str:
    async with ctx.store.session() as db:
        row = await db.get(AccessRequest, ident)
        assert row is not None
        return row.state


@pytest.mark.timeout(300)  # some dozens of CLI start-ups on a loaded host
async def test_cli_refuses_aliases_and_linked_accounts(broker_dir: Path, cli: Cli,
                                                       ssh_pubkey: Path) -> None:
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    try:
        ident = await _world(ctx, ssh_pubkey)
    finally:
        await ctx.close()
    linked = cli("approver", "link", "later", "--tech", "tech")
    assert linked.code == 0 and "linked to technician tech" in linked.out
    again = cli("approver", "link", "later", "--tech", "tech")
    assert again.code == 1 and again.err.count("\n") == 1 and "already linked" in again.err
    helptext = cli("approver", "link", "--help").out
    assert "--tech TECH" in helptext and "one person" in helptext
    assert "--same-person-as TECH" in cli("approver", "add", "--help").out
    twin = cli("approver", "add", "twin", "--email", "twin@elsewhere.example",
               "--same-person-as", "tech", "--json")
    assert twin.code == 0 and json.loads(twin.out)["same_person_as"] == ["tech"]
    unknown = cli("approver", "add", "ghost", "--email", "g@x.example",
                  "--same-person-as", "nobody")
    assert unknown.code == 1 and "nobody" in unknown.err and unknown.err.count("\n") == 1
    listed = {d["name"]: d for d in json.loads(cli("approver", "list", "--json").out)}
    assert listed["linked"]["same_person_as"] == ["tech"] == listed["later"]["same_person_as"]
    for approver, words in [("plus", "reaches the mailbox of technician tech"),
                            ("upper", "reaches the mailbox of technician tech"),
                            ("both", "reaches the mailbox of technician tech"),
                            ("linked", "is linked to technician tech as one person"),
                            ("later", "is linked to technician tech as one person"),
                            ("twin", "is linked to technician tech as one person")]:
        for verb in ("approve", "deny"):
            result = cli("request", verb, str(ident), "--as", approver)
            assert result.code == 1, (approver, verb, result.out)
            assert result.err.count("\n") == 1 and words in result.err, result.err
            assert "nobody decides on their own request" in result.err
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    try:
        assert await _state(ctx, ident) == "pending"
        refused = await _self_refusals(ctx)
        assert [r["actor"] for r in refused] == [f"approver:{a}" for a in (
            "plus", "plus", "upper", "upper", "both", "both", "linked", "linked", "later",
            "later", "twin", "twin")]
        assert all(r["subject"] == f"request:{ident}" and r["via"] == "cli" for r in refused)
    finally:
        await ctx.close()
    assert cli("request", "approve", str(ident), "--as", "honest").code == 0


async def test_api_and_pages_refuse_aliases(broker_dir: Path, ssh_pubkey: Path) -> None:
    async with portal(broker_dir, clock=FakeClock()) as (client, ctx):
        ident = await _world(ctx, ssh_pubkey)
        # the API, with a token bound to the alias approver
        _, token = await ApiTokens(ctx, "test").create("plus-bot", "approver", "plus")
        response = await client.post(f"/api/v1/requests/{ident}/approve", json={},
                                     headers={"Authorization": f"Bearer {token}"})
        answer = await response.json()
        assert response.status == 403 and "reaches the mailbox" in answer["error"]
        # the approval page: shown without a form, the POST refused
        path, claims = link_for(ctx, ident, "upper")
        page = await (await client.get(path)).text()
        assert "reaches the mailbox of technician tech" in page and 'name="csrf"' not in page
        assert client.app is not None
        csrf = csrf_token(client.app, claims.jti)  # valid for this link: only identity fails
        response = await client.post(path, data={"csrf": csrf, "decision": "approve"})
        assert response.status == 403 and "nobody decides" in await response.text()
        # the portal, as a staff account deciding as the linked approver
        await add_staff(ctx, "pat", "approver", approver="linked")
        csrf = await sign_in(client, ctx, "pat")
        response = await client.post(f"/staff/requests/{ident}/decide", allow_redirects=False,
                                     data={"csrf": csrf, "decision": "approve"})
        assert response.status == 403 and "as one person" in await response.text()
        assert await _state(ctx, ident) == "pending"
        refused = await _self_refusals(ctx)
        assert [(r["actor"], r["via"]) for r in refused] == [
            ("approver:plus", "api"), ("approver:upper", "link"), ("approver:linked", "web")]


async def test_alias_gets_no_link_and_cannot_review_breakglass(broker_dir: Path,
                                                               ssh_pubkey: Path) -> None:
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    try:
        await _world(ctx, ssh_pubkey)
        grant = await breakglass.open_breakglass(ctx, "tech", "pump", timedelta(minutes=30),
                                                 "pump alarm on ward four", "cli:root")
        for approver in ("plus", "linked"):
            with pytest.raises(Refused, match="nobody reviews their own break-glass grant"):
                await breakglass.review(ctx, grant.id or 0, approver, "looked fine to me")
        reviewed = await breakglass.review(ctx, grant.id or 0, "honest", "checked the log")
        assert reviewed.reviewed_by == "honest"
    finally:
        await ctx.close()
