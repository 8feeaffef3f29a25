"""A vendor switched off through 'broker serve', with the real ssh against a real sshd: the
live shell of its technician is cut within about a second with the reason, a new ssh is
refused with one line naming the vendor, and after 'vendor enable' the technician is back."""

from __future__ import annotations

import subprocess
import time

from tests.integration.harness import BrokerProcess, SshdDevice


def test_vendor_disable_cuts_live_sessions_and_enable_restores(
        broker: BrokerProcess, sshd_device: SshdDevice) -> None:
    broker.cli("vendor", "add", "Acme Imaging", "--domain", "acme-imaging.example")
    broker.add_tech("vtech", vendor="Acme Imaging")
    broker.add_sshd_device("vdev", sshd_device)
    broker.grant("vtech", "vdev", "1h")

    live = subprocess.Popen(broker.ssh_args("vtech+vdev", "vtech"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert live.stdin is not None and live.stdout is not None
        live.stdin.write("echo shell-is-up\n")
        live.stdin.flush()
        seen = [live.stdout.readline().strip() for _ in range(2)]  # the banner, the echo
        assert seen[-1] == "shell-is-up", seen
        broker.cli("vendor", "disable", "Acme Imaging")
        disabled_at = time.monotonic()
        code = live.wait(10)
        cut_after = time.monotonic() - disabled_at
        err = live.stderr.read() if live.stderr else ""
    finally:
        if live.poll() is None:
            live.kill()
    assert code == 1, err
    assert cut_after < 2.5, cut_after
    assert "your company's access (Acme Imaging) is disabled" in err, err

    refused = broker.ssh("vtech+vdev", "true")
    assert refused.code != 0
    lines = [line for line in refused.err.splitlines() if line.strip()]
    assert lines == ["broker: access to vdev refused (vendor disabled): your company's access"
                     " (Acme Imaging) is disabled."], refused.err

    menu = broker.ssh("vtech")  # the no-device menu says so too
    assert menu.code == 1
    assert menu.err.strip() == ("broker: vtech: your company's access (Acme Imaging) is"
                                " disabled"), menu.err

    events = broker.cli_json("audit", "tail", "-n", "200")
    assert isinstance(events, list)
    assert any(e["kind"] == "vendor.disabled" and e["subject"] == "Acme Imaging"
               for e in events)

    broker.cli("vendor", "enable", "Acme Imaging")
    again = broker.ssh("vtech+vdev", "echo", "back")  # the grant (1 h) is still open
    assert again.code == 0 and again.out.strip() == "back", again.err
    shown = broker.cli_json("vendor", "show", "Acme Imaging")
    assert isinstance(shown, dict)
    (tech,) = shown["technicians"]
    assert tech["state"] == "enabled" and tech["last_login_at"] is not None
