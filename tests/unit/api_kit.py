"""Seed data for the REST API tests: people, devices, requests in each state, a grant with a
live session and a sealed recording, and one real token per role."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncssh

from broker.recording import SessionRecording
from broker.recording.manifest import signer_for
from broker.services.api_tokens import ApiTokens
from broker.services.context import Context
from broker.services.directory import Directory
from broker.services.requests import Requests
from broker.services.sessions import open_session
from broker.store.models import Device


@dataclass
class Seeded:
    admin: str
    auditor: str
    approver: str  # bound to approver "carol"
    pending: int  # a pending request by alice on pump-1
    approved: int  # approved by carol: has a grant
    grant: int
    session: str  # live, on the grant, recorded and sealed
    recording_dir: str

    def auth(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


async def seed(ctx: Context) -> Seeded:
    directory = Directory(ctx, "test:seed")
    key = asyncssh.generate_private_key("ssh-ed25519", comment="alice@acme")
    alice = (await directory.add_technician("alice", "Acme Pumps", [key],
                                            "alice@acme.example")).technician
    await directory.add_technician("bob", "Imaging Co", [key])
    await directory.add_approver("carol", "carol@hospital.example", ["biomed"])
    await directory.add_approver("dave", "dave@hospital.example", [])
    pump = await directory.add_device(
        Device(name="pump-1", host="127.0.0.1", port=2200, login_user="service",
               model="Infusomat", department="ICU", tags=["icu"]), "password", b"pw")
    await directory.add_device(Device(name="pump-2", host="127.0.0.1", port=2201,
                                      login_user="service"), "password", b"pw")
    requests = Requests(ctx, "test:seed")
    pending = await requests.create("alice", "pump-1", timedelta(hours=2), "replace the pump")
    approved = await requests.create("alice", "pump-1", timedelta(hours=1), "firmware update")
    decision = await Requests(ctx, "approver:carol").decide(approved.id or 0, "carol", True)
    grant = decision.grant
    assert grant is not None and grant.id is not None and pending.id is not None

    session_id = "a1b2c3d4e5f6"
    started = ctx.now()
    recording = SessionRecording.create(
        ctx.config.recordings_dir, session_id, started,
        {"technician": "alice", "vendor": "Acme Pumps", "device": "pump-1",
         "grant": grant.id, "client": "127.0.0.1"},
        signer=signer_for(ctx.config))
    exec_log = recording.exec_log(0, "uptime")
    exec_log.stdout(b"up 3 days\n")
    exec_log.exit(0)
    await recording.close("test finished recording")
    await open_session(ctx, grant, alice, pump,
                       "127.0.0.1:50000", "session", recording.path.name, session_id)

    tokens = ApiTokens(ctx, "test:seed")
    _, admin = await tokens.create("ci-admin", "admin")
    _, auditor = await tokens.create("ci-auditor", "auditor")
    _, approver = await tokens.create("carol-bot", "approver", "carol")
    return Seeded(admin, auditor, approver, pending.id, approved.id or 0, grant.id, session_id,
                  recording.path.name)
