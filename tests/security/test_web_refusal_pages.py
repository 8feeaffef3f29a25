"""Refusal and error pages of the device origin name the device by its broker name, never
its internal address (host, port, URL); the details go to the audit log."""

from __future__ import annotations

import json
from pathlib import Path

from sqlmodel import select

from broker.http.app import REFUSAL_BURST
from broker.http.keys import REFUSALS
from broker.store.models import AuditEvent, Device
from broker.webproxy.handlers import WEB_SESSIONS
from tests.integration.harness import free_port
from tests.unit.webproxy_kit import add_grant, sign_in
from tests.web_kit import device_origin


async def test_unreachable_devices_are_named_not_addressed(broker_dir: Path) -> None:
    dead = free_port()  # nothing listens here
    async with device_origin(broker_dir) as (client, ctx):
        plain = await add_grant(ctx, f"http://127.0.0.1:{dead}/ui/", device="pump-7")
        cookie = await sign_in(client, ctx, device="pump-7")
        form = await add_grant(ctx, f"http://127.0.0.1:{dead}/", device="xray-2",
                               auth="form", form_path="/login")
        form_cookie = await sign_in(client, ctx, device="xray-2")
        pages = [await client.get(f"/w/{plain}/status", headers={"Cookie": cookie}),
                 await client.get(f"/w/{plain}/ws", headers={
                     "Cookie": cookie, "Upgrade": "websocket", "Connection": "Upgrade",
                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                     "Sec-WebSocket-Version": "13"}),
                 await client.get(f"/w/{form}/", headers={"Cookie": form_cookie})]
        texts = [(page.status, await page.text()) for page in pages]
        # a device whose stored URL went bad (not reachable through the CLI's checks)
        async with ctx.store.session() as db:
            row = (await db.exec(select(Device).where(Device.name == "xray-2"))).one()
            row.web_url = f"ftp://10.1.2.3:{dead}/secret-path"
            db.add(row)
        client.app[WEB_SESSIONS].clear()  # as after a restart: resumed, its URL re-read
        resumed = await client.get(f"/w/{form}/", headers={"Cookie": form_cookie})
        texts.append((resumed.status, await resumed.text()))
        async with ctx.store.session() as db:
            audited = [row.data for row in (await db.exec(select(AuditEvent).where(
                AuditEvent.kind == "web.device_failed"))).all()]
    for status, text in texts:
        assert status == 502, (status, text)
        for secret in ("127.0.0.1", str(dead), "10.1.2.3", "secret-path", "ftp://", "/ui/"):
            assert secret not in text, (secret, text)
    assert "pump-7" in texts[0][1] and "pump-7" in texts[1][1] and "xray-2" in texts[2][1]
    # the audit log has what the page leaves out
    assert len(audited) >= 3 and any(str(dead) in json.loads(data)["error"]
                                     for data in audited)


async def test_proxy_refusals_are_audited_without_flooding(broker_dir: Path) -> None:
    async with device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, f"http://127.0.0.1:{free_port()}/", device="pump-7")
        other = await add_grant(ctx, f"http://127.0.0.1:{free_port()}/", device="xray-2")
        cookie = await sign_in(client, ctx, device="pump-7")
        flood = REFUSAL_BURST + 15
        answers = [await client.get(f"/w/{grant}/") for _ in range(flood)]
        answers.append(await client.get(f"/w/{grant}/", headers={"Cookie": "broker_web=bogus"}))
        answers.append(await client.get(f"/w/{other}/", headers={"Cookie": cookie}))
        assert [a.status for a in answers] == [403] * (flood + 2)
        await client.app[REFUSALS].flush()
        async with ctx.store.session() as db:
            rows = (await db.exec(select(AuditEvent))).all()
    kinds = [row.kind for row in rows]
    assert kinds.count("web.not_signed_in") == REFUSAL_BURST  # the rest are counted
    summary = [json.loads(r.data) for r in rows if r.kind == "refusal.suppressed"]
    assert summary and summary[0]["count"] == flood + 1 - REFUSAL_BURST
    assert summary[0]["refusal"] == "web.not_signed_in"
    assert kinds.count("web.wrong_grant") == 1
