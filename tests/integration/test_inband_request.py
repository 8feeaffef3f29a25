"""The request command as the README shows it, typed into a real `ssh`: no quoting needed."""

from __future__ import annotations

import re

from tests.integration.harness import BrokerProcess, SshdDevice


def test_request_reason_needs_no_quotes(broker: BrokerProcess, sshd_device: SshdDevice) -> None:
    broker.add_tech("tech")
    broker.add_sshd_device("dev", sshd_device)
    # ssh drops the local shell's quotes: this is `--reason "Battery check, it's flat"`
    filed = broker.ssh("tech", "request", "dev", "--for", "45m", "--reason", "Battery",
                       "check,", "it's", "flat")
    assert filed.code == 0, filed.err
    (ident,) = re.findall(r"request (\d+) filed: dev for 45m", filed.out)
    shown = broker.cli_json("request", "show", ident)
    assert isinstance(shown, dict)
    assert shown["reason"] == "Battery check, it's flat"

    usage = broker.ssh("tech", "request", "dev", "--reason", "no", "duration")
    assert usage.code == 2
    assert "everything after --reason is the reason" in usage.err
