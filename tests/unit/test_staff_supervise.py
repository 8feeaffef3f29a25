"""The Supervise page in-process: who may use it, presence through its event stream (with the
leave grace), CSRF-protected pause/resume/end, and sessions that are not live here."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broker.http.staff import supervise
from broker.revocation.registry import LiveSessions
from broker.services.supervision import Supervision
from tests.unit.staff_kit import add_staff, live_session, recording, sign_in, world
from tests.unit.test_staff_watch import read_event
from tests.web_kit import portal


class FakeLive:
    """A live session as the registry holds it: an access session whose endpoint (the SSH
    connection, in production) is supervised; here the two are one object."""

    def __init__(self, session_id: str) -> None:
        self.endpoint = self
        self.session_id: str | None = session_id
        self.technician, self.device = "bob", "pump-1"
        self.events: list[tuple[str, str]] = []
        self.supervision = Supervision(required=True, on_event=self._event)
        self.ended_by: str | None = None
        self.ends_at = None

    async def _event(self, kind: str, who: str) -> None:
        self.events.append((kind, who))

    async def end_by_supervisor(self, who: str) -> None:
        self.ended_by = who


async def test_an_approver_supervises_pauses_resumes_and_ends(
        broker_dir: Path, ssh_pubkey: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "LEAVE_GRACE", 0.2)
    sessions = LiveSessions()
    live = FakeLive("s1")
    sessions.add(live)  # type: ignore[arg-type]
    async with portal(broker_dir, sessions=sessions) as (client, ctx):
        ids = await world(ctx, ssh_pubkey)
        path = await recording(ctx, "s1", "under-supervision", live=True)
        await live_session(ctx, "s1", ids["grant"], path.name)
        await add_staff(ctx, "appr", "approver", "alice")
        csrf = await sign_in(client, ctx, "appr")
        listing = await (await client.get("/staff/supervise")).text()
        assert "/staff/sessions/s1/supervise" in listing and "waiting" in listing
        page = await client.get("/staff/sessions/s1/supervise")
        text = await page.text()
        assert page.status == 200 and 'data-stream="/staff/sessions/s1/supervise/stream"' in text
        assert "'wasm-unsafe-eval'" in page.headers["Content-Security-Policy"]
        assert not live.supervision.input_open  # required, nobody there

        stream = await client.get("/staff/sessions/s1/supervise/stream")
        assert stream.status == 200
        _, reset = await read_event(stream)
        assert isinstance(reset, dict) and "under-supervision" in reset["init"]
        assert live.supervision.supervisors == ["appr"] and live.supervision.input_open

        # no CSRF token: refused, nothing changes
        refused = await client.post("/staff/sessions/s1/supervise/pause", data={},
                                    allow_redirects=False)
        assert refused.status == 403 and live.supervision.paused_by is None
        paused = await client.post("/staff/sessions/s1/supervise/pause", data={"csrf": csrf},
                                   allow_redirects=False)
        assert paused.status == 303 and paused.headers["Location"].endswith("done=paused")
        assert live.supervision.paused_by == "appr" and not live.supervision.input_open
        again = await client.post("/staff/sessions/s1/supervise/pause", data={"csrf": csrf},
                                  allow_redirects=False)
        assert again.headers["Location"].endswith("done=already-paused")
        resumed = await client.post("/staff/sessions/s1/supervise/resume", data={"csrf": csrf},
                                    allow_redirects=False)
        assert resumed.status == 303 and live.supervision.input_open
        bogus = await client.post("/staff/sessions/s1/supervise/explode", data={"csrf": csrf},
                                  allow_redirects=False)
        assert bogus.status == 404

        # leaving: the stream goes away, and after the grace the supervisor has left
        stream.close()
        for _ in range(50):
            if not live.supervision.present:
                break
            await asyncio.sleep(0.1)
        assert not live.supervision.present and not live.supervision.input_open
        assert [k for k, _ in live.events] == ["supervision.joined", "supervision.paused",
                                               "supervision.resumed", "supervision.left"]

        ended = await client.post("/staff/sessions/s1/supervise/end", data={"csrf": csrf},
                                  allow_redirects=False)
        assert ended.status == 303 and live.ended_by == "appr"


async def test_a_session_not_live_on_this_node_cannot_be_supervised_here(
        broker_dir: Path, ssh_pubkey: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        ids = await world(ctx, ssh_pubkey)
        path = await recording(ctx, "elsewhere1", "x", live=True)
        await live_session(ctx, "elsewhere1", ids["grant"], path.name)
        await add_staff(ctx, "aud", "auditor")
        csrf = await sign_in(client, ctx, "aud")
        page = await (await client.get("/staff/sessions/elsewhere1/supervise")).text()
        assert "runs on node node-x" in page and 'id="pause"' not in page
        assert (await client.get("/staff/sessions/elsewhere1/supervise/stream")).status == 404
        post = await client.post("/staff/sessions/elsewhere1/supervise/end",
                                 data={"csrf": csrf}, allow_redirects=False)
        assert post.status == 404
        assert (await client.get("/staff/sessions/nope/supervise")).status == 404
        client.session.cookie_jar.clear()
        anonymous = await client.get("/staff/sessions/elsewhere1/supervise",
                                     allow_redirects=False)
        assert anonymous.status == 303 and "/staff/login" in anonymous.headers["Location"]
