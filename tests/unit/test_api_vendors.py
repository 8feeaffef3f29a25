"""Vendors and invitations over the REST API, with a real aiosmtpd server: list and show
vendors (contract state, technicians, pending), create and list invitations (the link goes
only to the invitee), approve/reject; roles, bad bodies, and the OpenAPI document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from broker.services.api_tokens import ApiTokens
from broker.services.invitations import Invitations
from broker.services.vendors import Vendors
from tests.approval_kit import Mailbox, smtp_server
from tests.onboard_kit import (
    CONTACT,
    OTHER,
    VENDOR,
    last_to,
    link_in,
    public_key,
    use_smtp,
    vendors,
)
from tests.web_kit import portal


class Api:
    def __init__(self, client: TestClient[web.Request, web.Application],
                 tokens: dict[str, str], mailbox: Mailbox, ctx: Any) -> None:
        self.client, self.tokens, self.mailbox, self.ctx = client, tokens, mailbox, ctx

    async def call(self, method: str, path: str, role: str = "admin",
                   **kwargs: Any) -> tuple[int, Any]:
        response = await self.client.request(
            method, "/api/v1" + path,
            headers={"Authorization": f"Bearer {self.tokens[role]}"}, **kwargs)
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


@pytest.fixture
async def api(broker_dir: Path) -> AsyncIterator[Api]:
    with smtp_server() as (mailbox, port):
        use_smtp(broker_dir, port)
        async with portal(broker_dir) as (client, ctx):
            await vendors(ctx)
            await Vendors(ctx, "t").set_contract(OTHER, ctx.now() + timedelta(days=3))
            tokens = ApiTokens(ctx, "test")
            await ctx_approver(ctx)
            _, admin = await tokens.create("ci-admin", "admin")
            _, auditor = await tokens.create("ci-auditor", "auditor")
            _, approver = await tokens.create("carol-bot", "approver", "carol")
            yield Api(client, {"admin": admin, "auditor": auditor, "approver": approver},
                      mailbox, ctx)


async def ctx_approver(ctx: Any) -> None:
    from broker.services.directory import Directory

    await Directory(ctx, "t").add_approver("carol", "carol@hospital.example", [])


async def test_invite_enrol_approve_over_the_api(api: Api) -> None:
    status, created = await api.call("POST", "/vendors/Acme Medical/invitations",
                                     json={"email": "jane@acme.example", "name": "jane"})
    assert status == 201, created
    assert created["state"] == "open" and created["vendor"] == VENDOR
    assert created["created_by"] == "api:ci-admin"
    assert not any("/onboard/" in str(v) for v in created.values())  # never the link
    path = link_in(last_to(api.mailbox, "jane@acme.example"), "/onboard/")
    await Invitations(api.ctx, "link").complete(path.removeprefix("/onboard/"), "jane",
                                                 public_key())

    status, listing = await api.call("GET", "/invitations?state=pending", "auditor")
    assert status == 200 and [i["technician"] for i in listing["items"]] == ["jane"]
    status, vendor = await api.call("GET", "/vendors/Acme Medical", "auditor")
    assert status == 200 and vendor["pending"] == ["jane"]
    assert vendor["contract_state"] == "active" and vendor["contact"] == CONTACT
    assert [(t["name"], t["state"]) for t in vendor["technicians"]] == [("jane", "pending")]
    status, everyone = await api.call("GET", "/vendors")
    states = {v["name"]: v["contract_state"] for v in everyone["items"]}
    assert states == {VENDOR: "active", OTHER: "ending soon"}

    assert (await api.call("POST", "/technicians/jane/approve", "auditor"))[0] == 403
    assert (await api.call("POST", "/technicians/jane/approve", "approver"))[0] == 403
    status, approved = await api.call("POST", "/technicians/jane/approve")
    assert status == 200 and approved["state"] == "approved"
    assert approved["decided_by"] == "api:ci-admin"
    status, again = await api.call("POST", "/technicians/jane/reject")
    assert status == 409 and "not awaiting approval" in again["error"]
    status, missing = await api.call("POST", "/technicians/nobody/approve")
    assert status == 404 and missing["error"] == "no technician named 'nobody'"
    assert "approved" in str(last_to(api.mailbox, CONTACT)["Subject"])


@pytest.mark.parametrize("body, status, field", [
    ({"email": "x@evil.example"}, 403, None),
    ({"email": "x@acme.example", "expires": "90d"}, 400, None),
    ({"email": "x@acme.example", "expires": "soon"}, 422, "expires"),
    ({"email": "x@acme.example", "name": "bad name"}, 422, "name"),
    ({"email": "x@acme.example", "link": "x"}, 422, "link"),
    ({"email": 5}, 422, "email"),
    ({}, 422, "email"),
])
async def test_bad_invitations_are_one_line(api: Api, body: dict[str, Any], status: int,
                                            field: str | None) -> None:
    got, answer = await api.call("POST", "/vendors/Acme Medical/invitations", json=body)
    assert got == status, answer
    assert "\n" not in answer["error"] and answer.get("field") == field
    assert api.mailbox.messages == []


async def test_roles_and_unknowns(api: Api) -> None:
    assert (await api.call("POST", "/vendors/Acme Medical/invitations", "auditor",
                           json={"email": "x@acme.example"}))[0] == 403
    assert (await api.call("GET", "/vendors", "approver"))[0] == 403
    status, missing = await api.call("POST", "/vendors/Nobody/invitations",
                                     json={"email": "x@acme.example"})
    assert status == 404 and missing["error"] == "no vendor named 'Nobody'"
    assert (await api.call("GET", "/vendors/Nobody"))[0] == 404
    assert (await api.call("GET", "/invitations?vendor=Nobody"))[0] == 404
    assert (await api.call("GET", "/invitations?state=weird"))[0] == 422


async def test_openapi_documents_the_vendor_operations(api: Api) -> None:
    doc = await (await api.client.get("/api/v1/openapi.json")).json()
    ids = {op["operationId"] for ops in doc["paths"].values() for op in ops.values()}
    assert {"listVendors", "getVendor", "createInvitation", "listInvitations",
            "withdrawInvitation", "approveTechnician", "rejectTechnician"} <= ids
    create = doc["paths"]["/vendors/{name}/invitations"]["post"]
    assert "201" in create["responses"] and "409" in create["responses"]
    assert create["requestBody"]["required"] is True


async def test_withdraw_an_invitation_over_the_api(api: Api) -> None:
    status, created = await api.call("POST", "/vendors/Acme Medical/invitations",
                                     json={"email": "w@acme.example"})
    assert status == 201, created
    path = f"/invitations/{created['id']}/withdraw"
    assert (await api.call("POST", path, "auditor"))[0] == 403
    assert (await api.call("POST", path, "approver"))[0] == 403
    status, withdrawn = await api.call("POST", path)
    assert status == 200 and withdrawn["state"] == "withdrawn", withdrawn
    assert withdrawn["decided_by"] == "api:ci-admin"
    status, again = await api.call("POST", path)
    assert status == 409 and again["error"] == (
        f"invitation {created['id']} is withdrawn, not open")
    status, listing = await api.call("GET", "/invitations?state=withdrawn", "auditor")
    assert status == 200 and [i["id"] for i in listing["items"]] == [created["id"]]
    status, missing = await api.call("POST", "/invitations/999/withdraw")
    assert status == 404 and missing["error"] == "no invitation with id 999"
    for bad in ("0", "x", "99999999999"):
        status, answer = await api.call("POST", f"/invitations/{bad}/withdraw")
        assert status in (404, 422) and "\n" not in answer["error"], (bad, answer)
