"""Break-glass end to end: `broker breakglass` -> stock `ssh` through `broker serve` -> a real
sshd device, with no approval in between, and a loud banner the technician cannot miss."""

from __future__ import annotations

import json
import uuid

from tests.integration.harness import BrokerProcess, SshdDevice

LOUD = "BREAK-GLASS ACCESS: no approval was given for this session"


def test_break_glass_gets_in_at_once_with_a_loud_banner_until_reviewed(
        broker: BrokerProcess, sshd_device: SshdDevice) -> None:
    suffix = uuid.uuid4().hex[:6]
    tech, device = f"bg-{suffix}", f"bgdev-{suffix}"
    broker.add_tech(tech)
    broker.add_sshd_device(device, sshd_device)
    refused = broker.ssh(f"{tech}+{device}", "true")
    assert refused.code != 0 and "no grant" in refused.err

    opened = broker.cli_json("breakglass", "--tech", tech, "--device", device, "--for", "20m",
                             "--reason", "analyzer stuck in calibration loop")
    assert isinstance(opened, dict) and opened["breakglass"] and opened["review"] == "open"

    marker = uuid.uuid4().hex
    shell = broker.ssh(f"{tech}+{device}", tty=True, input=f"echo shell-{marker}\nexit 0\n")
    assert shell.code == 0, shell.err
    assert LOUD in shell.out and f"shell-{marker}" in shell.out
    assert shell.out.index(LOUD) < shell.out.index(f"connected to {device}")

    command = broker.ssh(f"{tech}+{device}", f"echo exec-{marker}")
    assert command.code == 0 and command.out == f"exec-{marker}\n"  # stdout stays clean
    assert LOUD in command.err

    listed = broker.cli("grant", "list").out
    row = next(line for line in listed.splitlines() if tech in line)
    assert row.endswith("BREAK-GLASS, REVIEW OPEN")
    unreviewed = broker.cli_json("grant", "list", "--unreviewed")
    assert isinstance(unreviewed, list) and opened["id"] in [g["id"] for g in unreviewed]

    broker.cli("grant", "review", str(opened["id"]), "--as", "approver", "--comment",
               "watched the recording: calibration reset only")
    unreviewed = broker.cli_json("grant", "list", "--unreviewed")
    assert isinstance(unreviewed, list) and opened["id"] not in [g["id"] for g in unreviewed]
    events = [json.loads(line) for line in
              broker.cli("audit", "export", "--format", "jsonl").out.splitlines()]
    mine = [e for e in events if e["subject"] == f"grant:{opened['id']}"]
    assert [e["kind"] for e in mine][:1] == ["grant.breakglass"]
    assert "grant.reviewed" in [e["kind"] for e in mine]
    assert broker.cli("audit", "verify").code == 0


def test_an_approved_grant_has_no_break_glass_banner(broker: BrokerProcess,
                                                     sshd_device: SshdDevice) -> None:
    suffix = uuid.uuid4().hex[:6]
    tech, device = f"ok-{suffix}", f"okdev-{suffix}"
    broker.add_tech(tech)
    broker.add_sshd_device(device, sshd_device)
    broker.grant(tech, device)
    shell = broker.ssh(f"{tech}+{device}", tty=True, input="exit 0\n")
    assert shell.code == 0, shell.err
    assert f"connected to {device}" in shell.out and "BREAK-GLASS" not in shell.out
    command = broker.ssh(f"{tech}+{device}", "true")
    assert command.code == 0 and "BREAK-GLASS" not in command.err
