"""`broker init` tells a new admin what to do next, warns about a public_url that phones
cannot open, and says so when a second run keeps the existing public_url."""

from __future__ import annotations

from pathlib import Path


def test_init_prints_next_steps_and_warns_about_localhost(broker_run, tmp_path: Path) -> None:
    target = tmp_path / "b"
    result = broker_run(["init", "--dir", target, "--public-url", "https://localhost:8443"])
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert any(line.startswith("warning: public_url is 'https://localhost:8443'")
               for line in lines)
    steps = lines[lines.index("next steps:") + 1:]
    config = f"--config {target / 'broker.toml'}"
    assert [s.split(":", 1)[0].strip() for s in steps] == [
        "1. a staff account for the portal", "2. approvers", "3. technicians", "4. devices",
        "5. policies", "6. run it"]
    assert all(config in step for step in steps)

    again = broker_run(["init", "--dir", target, "--public-url",
                        "https://broker.hospital.example:8443"])
    assert again.code == 0, again.err
    assert ("note: public_url stays 'https://localhost:8443'" in again.out
            and "BROKER_BROKER_PUBLIC_URL" in again.out)
    assert "localhost:8443" in (target / "broker.toml").read_text()  # kept, not overwritten


def test_init_with_a_real_name_has_no_warning(broker_run, tmp_path: Path) -> None:
    result = broker_run(["init", "--dir", tmp_path / "b", "--public-url",
                         "https://broker.hospital.example:8443"])
    assert result.code == 0, result.err
    assert "warning:" not in result.out and "note:" not in result.out
    assert "next steps:" in result.out
