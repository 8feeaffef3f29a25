"""``broker vendor invite|invitations|withdraw-invitation`` and ``broker tech approve|reject``
through the real command line (a real aiosmtpd server): answers, exit statuses, one-line
errors, --json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from broker.config import load_config
from broker.services.context import Context
from broker.services.invitations import Invitations
from tests.approval_kit import smtp_server
from tests.onboard_kit import CONTACT, last_to, link_in, public_key, use_smtp

if TYPE_CHECKING:
    from conftest import Cli

pytestmark = pytest.mark.timeout(400)  # some twenty CLI start-ups on a loaded host


def test_invite_approve_reject_from_the_command_line(broker_dir: Path, cli: Cli) -> None:
    assert cli("vendor", "add", "Acme", "--domain", "acme.example", "--contact",
               CONTACT).code == 0
    refused = cli("vendor", "invite", "Acme", "--email", "a@acme.example")
    assert refused.code == 1 and "[notify] smtp_host is not set" in refused.err
    with smtp_server() as (mailbox, port):
        use_smtp(broker_dir, port)
        cases = [
            (["--email", "a@evil.example"], 1, "--email a@evil.example: not in vendor Acme"),
            (["--email", "a@acme.example", "--expires", "1y"], 2, "--expires"),
            (["--email", "a@acme.example", "--expires", "1m"], 2, "between 5m and 30d"),
            (["--email", "a@acme.example", "--name", "no good"], 2, "technician name"),
            ([], 2, "Missing option '--email'"),
        ]
        unknown = cli("vendor", "invite", "Acmee", "--email", "a@acme.example")
        assert unknown.code == 1 and unknown.err_lines == ["broker: no vendor named 'Acmee'"]
        results = cli.many([("vendor", "invite", "Acme", *args) for args, _, _ in cases])
        for (_, code, message), result in zip(cases, results, strict=True):
            assert result.code == code and len(result.err_lines) == 1, result
            assert message in result.err, result.err
        assert mailbox.messages == []

        sent = cli("vendor", "invite", "Acme", "--email", "jane@acme.example", "--name",
                   "jane", "--json")
        assert sent.code == 0, sent.err
        data = json.loads(sent.out)
        assert data["state"] == "open" and data["email"] == "jane@acme.example"
        path = link_in(last_to(mailbox, "jane@acme.example"), "/onboard/")
        assert path.split("/")[-1] not in sent.out + sent.err  # the link goes to jane only
        human = cli("vendor", "invite", "Acme", "--email", "joe@acme.example")
        assert human.code == 0 and "invitation 2 e-mailed to joe@acme.example" in human.out

        async def enrol() -> None:
            ctx = Context.open(load_config(broker_dir / "broker.toml"))
            try:
                await Invitations(ctx, "link").complete(path.removeprefix("/onboard/"),
                                                        "jane", public_key())
            finally:
                await ctx.close()

        import asyncio

        asyncio.run(enrol())
        pending = json.loads(cli("vendor", "invitations", "--state", "pending", "--json").out)
        assert [(p["technician"], p["state"]) for p in pending] == [("jane", "pending")]
        listing = cli("vendor", "invitations", "Acme")
        assert listing.code == 0 and "joe@acme.example" in listing.out and "open" in listing.out
        assert cli("tech", "enable", "jane").code == 1
        listed = json.loads(cli("tech", "list", "--json").out)
        assert [(t["name"], t["state"], t["disabled"]) for t in listed] == [
            ("jane", "pending", True)]
        assert "pending" in cli("tech", "list").out
        approved = cli("tech", "approve", "jane")
        assert approved.code == 0 and "technician jane approved" in approved.out
        assert json.loads(cli("tech", "show", "jane", "--json").out)["state"] == "enabled"
        again = cli("tech", "reject", "jane")
        assert again.code == 1 and again.err_lines == [
            "broker: technician 'jane' is not awaiting approval (it was approved)"]
        assert cli("tech", "approve", "ghost").err_lines == [
            "broker: no technician named 'ghost'"]
        assert "jane" in str(last_to(mailbox, CONTACT)["Subject"])
        bad_state = cli("vendor", "invitations", "--state", "weird")
        assert bad_state.code == 2 and len(bad_state.err_lines) == 1

        withdrawn = cli("vendor", "withdraw-invitation", "2")
        assert withdrawn.code == 0 and withdrawn.out == (
            "invitation 2 to joe@acme.example for vendor Acme withdrawn: its link no longer"
            " works\n"), withdrawn
        listed = json.loads(cli("vendor", "invitations", "--state", "withdrawn", "--json").out)
        assert [(i["id"], i["state"]) for i in listed] == [(2, "withdrawn")]
        for args, code, line in (
                (["2"], 1, "broker: invitation 2 is withdrawn, not open"),
                (["1"], 1, "broker: invitation 1 is approved, not open"),
                (["77"], 1, "broker: no invitation with id 77"),
                (["0"], 2, None), (["two"], 2, None), ([], 2, None)):
            bad = cli("vendor", "withdraw-invitation", *args)
            assert bad.code == code and len(bad.err_lines) == 1, (args, bad)
            assert line is None or bad.err_lines == [line], bad.err_lines
