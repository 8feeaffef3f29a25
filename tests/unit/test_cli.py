"""The real ``broker`` console script, run as a subprocess on a ``broker init`` directory.

Each start-up costs about a second of imports, so independent commands run concurrently
(``cli.many``) and the set-up every test shares (a technician, approvers, two devices) is made
once per module and copied.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import tomllib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from textwrap import dedent
from typing import TYPE_CHECKING, Any

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from broker.credentials.vault import Vault

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Cli, CliResult

    Run = Callable[..., CliResult]

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "Pump-S3cret-Passw0rd-4711"
SECRETS = ["ssh_host_ed25519_key", "user_ca", "recording_ed25519.pem", "tls.key", "vault.key"]


def one_line_error(result: CliResult, code: int, *fragments: str) -> str:
    """The contract for bad input: exit status, and exactly one line on stderr naming it."""
    assert result.code == code, result
    assert "Traceback" not in result.err and "Traceback" not in result.out
    lines = result.err_lines
    assert len(lines) == 1, result.err
    assert lines[0].startswith("broker: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def ok_json(result: CliResult) -> Any:
    assert result.code == 0, result.err
    assert result.err == ""
    return json.loads(result.out)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text).lstrip("\n"), encoding="utf-8")
    return path


# --- init -------------------------------------------------------------------------------------

def test_init_creates_config_database_and_keys(_broker_template: Path) -> None:
    directory = _broker_template
    config = tomllib.loads((directory / "broker.toml").read_text())
    assert config["ssh"]["listen"] == "0.0.0.0:2222"
    assert config["broker"]["public_url"] == "https://broker.test:8443"
    data = directory / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in SECRETS:
        mode = stat.S_IMODE((data / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert (data / "broker.db").stat().st_size > 0
    tables = {row[0] for row in sqlite3.connect(data / "broker.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"technician", "device", "grant", "audit_event", "alembic_version"} <= tables
    host = asyncssh.read_private_key(str(data / "ssh_host_ed25519_key"))
    assert host.algorithm == b"ssh-ed25519"
    recording = serialization.load_pem_private_key((data / "recording_ed25519.pem").read_bytes(),
                                                   None)
    assert type(recording).__name__.startswith("Ed25519")
    cert = x509.load_pem_x509_certificate((data / "tls.crt").read_bytes())
    assert "broker.test" in cert.subject.rfc4514_string()
    Vault.from_file(data / "vault.key").seal(b"x")
    assert (directory / "policies").is_dir() and (directory / "recordings").is_dir()


def test_init_twice_never_changes_a_key(broker_dir: Path, broker_run: Run) -> None:
    data = broker_dir / "data"
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()
              and not p.name.startswith("broker.")}
    config_before = (broker_dir / "broker.toml").read_bytes()
    # a lost private key is re-created, and with it its public half: never a mismatched pair
    (data / "user_ca").unlink()
    (data / "tls.key").unlink()
    result = broker_run(["init", "--dir", broker_dir])
    assert result.code == 0, result.err
    assert f"kept existing {broker_dir / 'broker.toml'}" in result.out
    assert sorted(line.split("/")[-1] for line in result.out.splitlines()
                  if line.startswith("created ")) == ["tls.key", "user_ca"]
    assert (broker_dir / "broker.toml").read_bytes() == config_before
    for name, content in before.items():
        if name in ("user_ca", "user_ca.pub", "tls.key", "tls.crt"):
            continue
        assert (data / name).read_bytes() == content, f"init changed {name}"
    for name in ("user_ca", "tls.key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600
    ca = asyncssh.read_private_key(str(data / "user_ca"))
    assert (data / "user_ca.pub").read_bytes().split()[:2] == ca.export_public_key().split()[:2]
    tls_key = serialization.load_pem_private_key((data / "tls.key").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((data / "tls.crt").read_bytes())
    assert cert.public_key() == tls_key.public_key()


# --- a populated broker -----------------------------------------------------------------------

class Populated:
    def __init__(self, directory: Path, results: dict[str, CliResult]) -> None:
        self.dir, self.results = directory, results


@pytest.fixture(scope="module")
def populated(_broker_template: Path, ssh_keypair: tuple[Path, Path],
              tmp_path_factory: pytest.TempPathFactory, cli_for: Callable[[Path], Cli]
              ) -> Populated:
    directory = Path(shutil.copytree(_broker_template, tmp_path_factory.mktemp("pop") / "b"))
    private, public = ssh_keypair
    commands = {
        "tech": ("tech", "add", "alice", "--vendor", "BD", "--key", public,
                 "--email", "alice@bd.example", "--json"),
        "bob": ("approver", "add", "bob", "--email", "bob@hospital.example", "--json"),
        "carol": ("approver", "add", "carol", "--email", "carol@hospital.example",
                  "--group", "biomed", "--group", "radiology", "--json"),
        "alice-approver": ("approver", "add", "ALICE", "--email", "alice@hospital.example"),
        "pump": ("device", "add", "pump1", "--host", "10.0.0.5", "--user", "svc",
                 "--password-env", "PUMP_PW", "--tag", "infusion", "--model", "Alaris",
                 "--json"),
        "ct": ("device", "add", "ct1", "--host", "10.0.0.6", "--port", "2200", "--user", "svc",
               "--key", private, "--json"),
    }
    results = cli_for(directory).many(commands.values(), env={"PUMP_PW": PASSWORD})
    return Populated(directory, dict(zip(commands, results, strict=True)))


@pytest.fixture
def pcli(populated: Populated, tmp_path: Path, cli_for: Callable[[Path], Cli]) -> Cli:
    """The CLI on this test's own copy of the populated broker."""
    return cli_for(Path(shutil.copytree(populated.dir, tmp_path / "broker")))


def test_create_commands_print_the_object_with_its_id(populated: Populated,
                                                      ssh_pubkey: Path) -> None:
    r = populated.results
    tech = ok_json(r["tech"])
    assert isinstance(tech["id"], int) and tech["name"] == "alice" and tech["vendor"] == "BD"
    fingerprint = asyncssh.read_public_key(str(ssh_pubkey)).get_fingerprint()
    assert [k["fingerprint"] for k in tech["keys"]] == [fingerprint]
    bob, carol = ok_json(r["bob"]), ok_json(r["carol"])
    assert isinstance(bob["id"], int) and bob["groups"] == []
    assert carol["groups"] == ["biomed", "radiology"] and carol["id"] != bob["id"]
    assert r["alice-approver"].code == 0 and "approver ALICE added" in r["alice-approver"].out
    pump, ct = ok_json(r["pump"]), ok_json(r["ct"])
    assert isinstance(pump["id"], int) and pump["tags"] == ["infusion"]
    assert pump["model"] == "Alaris" and pump["state"] == "active"
    assert ct["port"] == 2200 and ct["login_user"] == "svc"
    assert PASSWORD not in r["pump"].out and "password" not in pump


def test_device_credentials_are_vaulted(populated: Populated, ssh_keypair: tuple[Path, Path]
                                        ) -> None:
    data = populated.dir / "data"
    for path in data.glob("broker.db*"):
        assert PASSWORD.encode() not in path.read_bytes(), f"password in clear in {path.name}"
    rows = dict(sqlite3.connect(data / "broker.db").execute(
        "SELECT d.name, c.kind || ':' || hex(c.secret) FROM device_credential c"
        " JOIN device d ON d.id = c.device_id").fetchall())
    vault = Vault.from_file(data / "vault.key")
    kind, sealed = rows["pump1"].split(":")
    assert kind == "password" and vault.open(bytes.fromhex(sealed)) == PASSWORD.encode()
    kind, sealed = rows["ct1"].split(":")
    assert kind == "key"
    key = asyncssh.import_private_key(vault.open(bytes.fromhex(sealed)))
    assert key.export_public_key().split()[1] == ssh_keypair[1].read_bytes().split()[1]
    private_text = ssh_keypair[0].read_bytes()
    for path in data.glob("broker.db*"):
        assert b"OPENSSH PRIVATE KEY" not in path.read_bytes()
        assert private_text not in path.read_bytes()


def test_tech_list_show_disable(pcli: Cli) -> None:
    listed, shown = pcli.many([("tech", "list", "--json"), ("tech", "show", "alice", "--json")])
    assert [t["name"] for t in ok_json(listed)] == ["alice"]
    alice = ok_json(shown)
    assert alice["disabled"] is False and alice["email"] == "alice@bd.example"
    assert isinstance(alice["id"], int) and len(alice["keys"]) == 1
    disabled = pcli("tech", "disable", "alice")
    assert disabled.code == 0 and "technician alice disabled" in disabled.out
    after, request = pcli.many([
        ("tech", "show", "alice", "--json"),
        ("request", "create", "--tech", "alice", "--device", "pump1", "--for", "1h",
         "--reason", "x"),
    ])
    assert ok_json(after)["disabled"] is True
    one_line_error(request, 1, "technician alice is disabled")


def create(tech: str = "alice", device: str = "pump1", duration: str = "2h",
           *extra: str) -> tuple[str, ...]:
    return ("request", "create", "--tech", tech, "--device", device, "--for", duration,
            "--reason", "firmware 4.2 drug library update", "--json", *extra)


def test_requests_decisions_and_grants(pcli: Cli) -> None:
    start = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    created = pcli.many([
        create(),
        create("alice", "ct1", "1h", "--start", start.isoformat(), "--protocols", "ssh"),
        create(),
        create("alice", "pump1", "90m", "--protocols", "SSH,sftp"),
    ])
    requests = [ok_json(r) for r in created]
    a, b, c, d = (r["id"] for r in requests)
    assert len({a, b, c, d}) == 4 and all(isinstance(i, int) for i in (a, b, c, d))
    assert requests[3]["state"] == "pending" and requests[3]["protocols"] == ["sftp", "ssh"]
    assert requests[3]["duration_s"] == 5400 and requests[3]["policy"] == "default"
    assert requests[0]["protocols"] == ["forward", "scp", "sftp", "ssh", "web"]
    assert requests[0]["reason"] == "firmware 4.2 drug library update"

    approve_a, approve_b, deny_c, cancel_d = pcli.many([
        ("request", "approve", str(a), "--as", "bob", "--json"),
        ("request", "approve", str(b), "--as", "carol", "--json"),
        ("request", "deny", str(c), "--as", "carol", "--comment", "not during rounds", "--json"),
        ("request", "cancel", str(d)),
    ])
    decided_a = ok_json(approve_a)
    assert decided_a["state"] == "approved" and decided_a["still_needed"] == []
    grant_a, grant_b = decided_a["grant"], ok_json(approve_b)["grant"]
    assert isinstance(grant_a, int) and isinstance(grant_b, int) and grant_a != grant_b
    assert ok_json(deny_c) == {"request": c, "state": "denied", "grant": None,
                               "still_needed": []}
    assert cancel_d.code == 0 and f"request {d} cancelled" in cancel_d.out

    listed, revoked = pcli.many([
        ("request", "list", "--json"),
        ("grant", "revoke", str(grant_a), "--reason", "work finished", "--json"),
    ])
    by_id = {r["id"]: r for r in ok_json(listed)}
    assert {i: r["state"] for i, r in by_id.items()} == {
        a: "approved", b: "approved", c: "denied", d: "cancelled"}
    assert by_id[a]["grant"] == grant_a and by_id[c]["grant"] is None
    assert [(x["approver"], x["decision"], x["comment"]) for x in by_id[c]["decisions"]] == [
        ("carol", "deny", "not during rounds")]
    assert ok_json(revoked) == {"id": grant_a, "state": "revoked", "reason": "work finished"}

    grants, revoke_again = pcli.many([
        ("grant", "list", "--json"), ("grant", "revoke", str(grant_a)),
    ])
    by_id = {g["id"]: g for g in ok_json(grants)}
    assert set(by_id) == {grant_a, grant_b}
    revoked_a, scheduled = by_id[grant_a], by_id[grant_b]
    assert revoked_a["state"] == "revoked" and revoked_a["revoke_reason"] == "work finished"
    assert (revoked_a["technician"], revoked_a["device"], revoked_a["request"]) == (
        "alice", "pump1", a)
    # the window opens at the requested start, not at approval
    assert scheduled["state"] == "scheduled" and scheduled["protocols"] == ["ssh"]
    assert datetime.fromisoformat(scheduled["start"]) == start
    assert datetime.fromisoformat(scheduled["end"]) == start + timedelta(hours=1)
    assert scheduled["device"] == "ct1" and scheduled["request"] == b
    one_line_error(revoke_again, 1, f"grant {grant_a} is revoked")


GROUP_POLICY = """
    policies:
      - name: pumps-two-biomed
        vendors: [BD]
        devices: {tags: [infusion]}
        max_duration: 4h
        approvals:
          - {count: 2, groups: [biomed]}
    """


def test_policy_groups_self_approval_and_repeat_approvals(pcli: Cli) -> None:
    write(pcli.dir / "policies" / "pumps.yaml", GROUP_POLICY)
    created, explained = pcli.many([
        create(), ("policy", "explain", "--tech", "alice", "--device", "pump1"),
    ])
    request = ok_json(created)
    assert request["policy"] == "pumps-two-biomed"
    assert explained.code == 0, explained.err
    assert "Policy pumps-two-biomed (" in explained.out and "pumps.yaml:2) applies" in explained.out
    assert "Approvals needed: 2 approvals from group biomed" in explained.out
    ident = str(request["id"])
    outsider, first, own, pending = pcli.many([
        ("request", "approve", ident, "--as", "bob"),
        ("request", "approve", ident, "--as", "carol", "--json"),
        ("request", "approve", ident, "--as", "ALICE"),
        ("request", "list", "--state", "pending", "--json"),
    ])
    one_line_error(outsider, 1, "approver bob is in none of the groups this request needs",
                   "biomed")
    # the requester may not decide their own request, whatever the case of the name
    one_line_error(own, 1, "ALICE requested this access and cannot decide on it")
    recorded = ok_json(first)
    assert recorded["state"] == "pending" and recorded["grant"] is None
    assert recorded["still_needed"] == ["1 more approval from group biomed"]
    assert [r["id"] for r in ok_json(pending)] == [request["id"]]
    second, shown = pcli.many([
        ("request", "approve", ident, "--as", "carol"), ("request", "show", ident),
    ])
    one_line_error(second, 1, f"carol already decided on request {ident}")
    assert shown.code == 0, shown.err
    assert "pumps-two-biomed" in shown.out and "pending" in shown.out
    # only carol's approval counts: the refused attempts left no decision behind
    assert [" ".join(line.split()[1:]) for line in shown.out.splitlines()
            if line.startswith("decision:")] == ["approve by carol via cli"]


def test_policy_check(tmp_path: Path, broker_run: Run) -> None:
    bad = tmp_path / "bad"
    write(bad / "a.yaml", """
        policies:
          - name: one
            max_durration: 2h
        """)
    write(bad / "b.yaml", "policies: [\n")
    with ThreadPoolExecutor(max_workers=2) as pool:
        good, broken = pool.map(lambda path: broker_run(["policy", "check", path]),
                                (REPO / "policies", bad))
    assert good.code == 0 and good.out.startswith("ok: policies in "), good
    assert good.err == ""
    one_line_error(broken, 1, "2 problem(s)", str(bad))
    lines = broken.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{bad / 'a.yaml'}:3: policies[0].max_durration: unknown field")
    empty = tmp_path / "empty"
    empty.mkdir()
    default = broker_run(["policy", "check", empty])
    assert default.code == 0 and "the permissive built-in default policy is in force" in (
        default.out) and "up to 8h" in default.out and "break-glass" in default.out
    assert broker_run(["policy", "check", empty, "--json"]).out.count('"default_policy": true')
    assert "did you mean 'max_duration'" in lines[0]
    assert lines[1].startswith(f"{bad / 'b.yaml'}:") and "YAML syntax error" in lines[1]


# --- bad input: one line on stderr, starting "broker:", naming what is wrong ----------------

BAD_VALUE_TOML = "[http]\nlisten = \"everywhere\"\n"
BAD_POLICY = "policies:\n  - name: broken\n    max_duration: forever\n"

# name: (command, environment, exit status, fragments the one line must contain)
BAD_INPUT: dict[str, tuple[tuple[str, ...], dict[str, str], int, tuple[str, ...]]] = {
    "unknown device": (create("alice", "nope"), {}, 1, ("no device named 'nope'",)),
    "bad duration": (create("alice", "pump1", "2x"), {}, 2, ("--for", "'2x'", "2h")),
    "missing option": (("request", "create", "--tech", "alice", "--device", "pump1",
                        "--reason", "x"), {}, 2, ("Missing option '--for'",)),
    "bad protocols": (create("alice", "pump1", "1h", "--protocols", "ssh,telnet"), {}, 2,
                      ("--protocols", "unknown protocol 'telnet'")),
    "bad broker.toml value": (("--config", "DIR/bad-value.toml", "tech", "list"), {}, 1,
                              ("DIR/bad-value.toml: [http] listen", "'everywhere'")),
    "bad environment override": (("tech", "list"), {"BROKER_SSH_LISTEN": "nowhere"}, 1,
                                 ("BROKER_SSH_LISTEN (environment)", "[ssh] listen")),
    "bad policy file": (create(), {"BROKER_POLICY_DIR": "DIR/bad-policies"}, 1,
                        ("DIR/bad-policies/bad.yaml:3", "max_duration", "'forever'",
                         "broker policy check")),
    "serve on an un-migrated database": (
        ("serve",), {"BROKER_BROKER_DATABASE_URL": "sqlite:///data/fresh.db",
                     "BROKER_SSH_LISTEN": "127.0.0.1:0", "BROKER_HTTP_LISTEN": "127.0.0.1:0"},
        1, ("fresh.db", "not initialised", "broker init", "broker migrate")),
}


@pytest.fixture(scope="module")
def bad_input_results(populated: Populated, tmp_path_factory: pytest.TempPathFactory,
                      broker_run: Run) -> dict[str, CliResult]:
    """Every bad-input command, run concurrently on one copy of the populated broker.

    In commands, DIR stands for that copy's directory; in the results, the directory's path is
    replaced by DIR again so that expected messages can name files.
    """
    directory = Path(shutil.copytree(populated.dir, tmp_path_factory.mktemp("bad") / "b"))
    write(directory / "bad-value.toml", BAD_VALUE_TOML)
    write(directory / "bad-policies" / "bad.yaml", BAD_POLICY)

    def fill(text: str) -> str:
        return text.replace("DIR/", f"{directory}/")

    def run(name: str) -> CliResult:
        argv, env, _, _ = BAD_INPUT[name]
        return broker_run([*map(fill, argv)] if argv[0] == "--config"
                          else ["--config", directory / "broker.toml", *map(fill, argv)],
                          env={k: fill(v) for k, v in env.items()}, cwd=directory,
                          timeout=30)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(BAD_INPUT, pool.map(run, BAD_INPUT), strict=True))
    return {name: result._replace(err=result.err.replace(str(directory), "DIR"))
            for name, result in results.items()}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_gets_one_clear_line(case: str, bad_input_results: dict[str, CliResult]
                                       ) -> None:
    _, _, code, fragments = BAD_INPUT[case]
    result = bad_input_results[case]
    one_line_error(result, code, *fragments)
    assert result.out == ""
