"""``broker device web NAME``: settings shown and changed, bad input refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Cli


def test_device_web_settings_and_bad_input(cli: Cli, tmp_path: Path) -> None:
    added = cli("device", "add", "pump", "--host", "127.0.0.1", "--user", "service",
                "--password-env", "PW", env={"PW": "pw"})
    assert added.code == 0, added.err
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    bad = cli.many([
        ["device", "web", "pump", "--pin-sha256", "abc"],
        ["device", "web", "pump", "--auth", "form"],
        ["device", "web", "pump", "--ca", str(tmp_path / "missing.pem")],
        ["device", "web", "pump", "--ca", str(ca)],
        ["device", "web", "pump", "--url", "ftp://pump/"],
        ["device", "web", "pump", "--form-path", "login"],
        ["device", "web", "nosuch", "--insecure-http"],
    ])
    expected = ["--pin-sha256: expected", "--auth form needs --form-path", "missing.pem: cannot",
                "ca.pem: not a PEM", "--url: web URL 'ftp://pump/'", "--form-path: expected",
                "no device named 'nosuch'"]
    for result, text in zip(bad, expected, strict=True):
        assert result.code in (1, 2) and len(result.err_lines) == 1, result
        assert text in result.err and "Traceback" not in result.err, result.err
    pin = "AB:" * 31 + "CD"
    changed = cli("device", "web", "pump", "--url", "https://10.0.0.7/ui/", "--pin-sha256",
                  pin, "--auth", "form", "--form-path", "/ui/login", "--json")
    assert changed.code == 0, changed.err
    shown = json.loads(cli("device", "web", "pump", "--json").out)
    assert shown == json.loads(changed.out)
    assert shown["web_url"] == "https://10.0.0.7/ui/" and shown["tls"] == "pinned certificate"
    assert shown["pin_sha256"] == ("ab" * 31 + "cd") and shown["auth"] == "form"
