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
    from conftest import CliResult

from conftest import Cli, run_broker

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


def test_init_twice_never_changes_a_key(broker_dir: Path) -> None:
    data = broker_dir / "data"
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()
              and not p.name.startswith("broker.")}
    config_before = (broker_dir / "broker.toml").read_bytes()
    # a lost private key is re-created, and with it its public half: never a mismatched pair
    (data / "user_ca").unlink()
    (data / "tls.key").unlink()
    result = run_broker(["init", "--dir", broker_dir])
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
              tmp_path_factory: pytest.TempPathFactory) -> Populated:
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
    results = Cli(directory).many(commands.values(), env={"PUMP_PW": PASSWORD})
    return Populated(directory, dict(zip(commands, results, strict=True)))


@pytest.fixture
def pcli(populated: Populated, tmp_path: Path) -> Cli:
    """The CLI on this test's own copy of the populated broker."""
    return Cli(Path(shutil.copytree(populated.dir, tmp_path / "broker")))


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


def test_request_create_list_show_cancel(pcli: Cli) -> None:
    created = ok_json(pcli(*create("alice", "pump1", "90m", "--protocols", "SSH,sftp")))
    ident = created["id"]
    assert isinstance(ident, int) and created["state"] == "pending"
    assert created["protocols"] == ["sftp", "ssh"] and created["duration_s"] == 5400
    assert created["policy"] == "default" and created["reason"].startswith("firmware")
    listed, pending, shown = pcli.many([
        ("request", "list", "--json"), ("request", "list", "--state", "pending", "--json"),
        ("request", "show", str(ident)),
    ])
    assert [r["id"] for r in ok_json(listed)] == [ident]
    assert [r["id"] for r in ok_json(pending)] == [ident]
    assert shown.code == 0 and "pending" in shown.out and "90m" in shown.out
    cancelled = pcli("request", "cancel", str(ident))
    assert cancelled.code == 0 and f"request {ident} cancelled" in cancelled.out
    after, again, none_pending = pcli.many([
        ("request", "show", str(ident), "--json"), ("request", "cancel", str(ident)),
        ("request", "list", "--state", "pending", "--json"),
    ])
    assert ok_json(after)["state"] == "cancelled"
    one_line_error(again, 1, f"request {ident}", "cancelled")
    assert ok_json(none_pending) == []


def test_decisions_and_grants(pcli: Cli) -> None:
    start = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    created = pcli.many([create(), create("alice", "ct1", "1h", "--start", start.isoformat(),
                                          "--protocols", "ssh"), create(), create()])
    a, b, c, e = (ok_json(r)["id"] for r in created)
    approve_a, approve_b, deny_c, self_e = pcli.many([
        ("request", "approve", str(a), "--as", "bob", "--json"),
        ("request", "approve", str(b), "--as", "carol", "--json"),
        ("request", "deny", str(c), "--as", "carol", "--comment", "not during rounds", "--json"),
        ("request", "approve", str(e), "--as", "ALICE"),
    ])
    # the requester may not decide their own request, whatever the case of the name
    one_line_error(self_e, 1, "ALICE requested this access and cannot decide on it")
    decided_a = ok_json(approve_a)
    assert decided_a["state"] == "approved" and decided_a["still_needed"] == []
    grant_a, grant_b = decided_a["grant"], ok_json(approve_b)["grant"]
    assert isinstance(grant_a, int) and isinstance(grant_b, int)
    assert ok_json(deny_c) == {"request": c, "state": "denied", "grant": None,
                               "still_needed": []}

    listed, grants, shown_b, shown_c, twice, revoked = pcli.many([
        ("request", "list", "--json"), ("grant", "list", "--json"),
        ("grant", "show", str(grant_b), "--json"), ("request", "show", str(c), "--json"),
        ("request", "approve", str(a), "--as", "carol"),
        ("grant", "revoke", str(grant_a), "--reason", "work finished", "--json"),
    ])
    states = {r["id"]: r["state"] for r in ok_json(listed)}
    assert states == {a: "approved", b: "approved", c: "denied", e: "pending"}
    assert {g["id"] for g in ok_json(grants)} == {grant_a, grant_b}
    scheduled = ok_json(shown_b)
    # the window opens at the requested start, not at approval
    assert scheduled["state"] == "scheduled" and scheduled["protocols"] == ["ssh"]
    assert datetime.fromisoformat(scheduled["start"]) == start
    assert datetime.fromisoformat(scheduled["end"]) == start + timedelta(hours=1)
    denied = ok_json(shown_c)
    assert denied["state"] == "denied" and denied["grant"] is None
    assert [(d["approver"], d["decision"], d["comment"]) for d in denied["decisions"]] == [
        ("carol", "deny", "not during rounds")]
    one_line_error(twice, 1, f"request {a} is approved")
    assert ok_json(revoked) == {"id": grant_a, "state": "revoked", "reason": "work finished"}

    shown_a, again, active = pcli.many([
        ("grant", "show", str(grant_a), "--json"), ("grant", "revoke", str(grant_a)),
        ("grant", "list", "--active", "--json"),
    ])
    grant = ok_json(shown_a)
    assert grant["state"] == "revoked" and grant["revoke_reason"] == "work finished"
    assert grant["technician"] == "alice" and grant["device"] == "pump1"
    assert grant["request"] == a
    one_line_error(again, 1, f"grant {grant_a} is revoked")
    assert ok_json(active) == []


GROUP_POLICY = """
    policies:
      - name: pumps-two-biomed
        vendors: [BD]
        devices: {tags: [infusion]}
        max_duration: 4h
        approvals:
          - {count: 2, groups: [biomed]}
    """


def test_policy_groups_and_repeat_approvals(pcli: Cli) -> None:
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
    outsider, first = pcli.many([
        ("request", "approve", ident, "--as", "bob"),
        ("request", "approve", ident, "--as", "carol", "--json"),
    ])
    one_line_error(outsider, 1, "approver bob is in none of the groups this request needs",
                   "biomed")
    recorded = ok_json(first)
    assert recorded["state"] == "pending" and recorded["grant"] is None
    assert recorded["still_needed"] == ["1 more approval from group biomed"]
    second, as_json = pcli.many([
        ("request", "approve", ident, "--as", "carol"),
        ("policy", "explain", "--tech", "alice", "--device", "ct1", "--json"),
    ])
    one_line_error(second, 1, "carol already decided on request")
    explained_ct = ok_json(as_json)
    assert explained_ct["allowed"] is False and explained_ct["policy"] is None


def test_policy_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    write(bad / "a.yaml", """
        policies:
          - name: one
            max_durration: 2h
        """)
    write(bad / "b.yaml", "policies: [\n")
    good, broken = (run_broker(["policy", "check", path]) for path in (REPO / "policies", bad))
    assert good.code == 0 and good.out.startswith("ok: policies in "), good
    assert good.err == ""
    one_line_error(broken, 1, "2 problem(s)", str(bad))
    lines = broken.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{bad / 'a.yaml'}:3: policies[0].max_durration: unknown field")
    assert "did you mean 'max_duration'" in lines[0]
    assert lines[1].startswith(f"{bad / 'b.yaml'}:") and "YAML syntax error" in lines[1]


# --- bad input: one line on stderr, starting "broker:", naming what is wrong ----------------

BAD_TOML = "[ssh]\nlisten = \"0.0.0.0:2222\"\nproxy_protocol = maybe\n"
BAD_VALUE_TOML = "[http]\nlisten = \"everywhere\"\n"
BAD_POLICY = "policies:\n  - name: broken\n    max_duration: forever\n"

# name: (command, environment, exit status, fragments the one line must contain)
BAD_INPUT: dict[str, tuple[tuple[str, ...], dict[str, str], int, tuple[str, ...]]] = {
    "unknown device": (create("alice", "nope"), {}, 1, ("no device named 'nope'",)),
    "unknown technician": (create("zed"), {}, 1, ("no technician named 'zed'",)),
    "bad duration": (create("alice", "pump1", "2x"), {}, 2, ("--for", "'2x'", "2h")),
    "zero duration": (create("alice", "pump1", "0m"), {}, 2, ("--for", "longer than zero")),
    "over policy maximum": (create("alice", "pump1", "9h"), {}, 1,
                            ("policy default", "duration 9h exceeds the maximum of 8h")),
    "missing option": (("request", "create", "--tech", "alice", "--device", "pump1",
                        "--reason", "x"), {}, 2, ("Missing option '--for'",)),
    "bad protocols": (create("alice", "pump1", "1h", "--protocols", "ssh,telnet"), {}, 2,
                      ("--protocols", "unknown protocol 'telnet'")),
    "bad start": (create("alice", "pump1", "1h", "--start", "tomorrow"), {}, 2,
                  ("--start", "'tomorrow'", "ISO 8601")),
    "request not found": (("request", "show", "999"), {}, 1, ("no request with id 999",)),
    "request id not a number": (("request", "show", "abc"), {}, 2, ("'abc'",)),
    "unknown approver": (("request", "approve", "1", "--as", "nobody"), {}, 1,
                         ("no approver named 'nobody'", )),
    "grant not found": (("grant", "revoke", "42"), {}, 1, ("no grant with id 42",)),
    "device not found": (("device", "show", "ghost"), {}, 1, ("no device named 'ghost'",)),
    "bad technician name": (("tech", "add", "bad name", "--vendor", "BD", "--key", "PUBKEY"), {},
                            2, ("technician name 'bad name' is not valid",)),
    "not a public key": (("tech", "add", "eve", "--vendor", "BD", "--key", "DIR/not-a-key.pub"),
                         {}, 2, ("DIR/not-a-key.pub:1: not an OpenSSH public key",)),
    "both credentials": (("device", "add", "d2", "--host", "h", "--user", "u",
                          "--password-env", "PUMP_PW", "--key", "KEY"), {"PUMP_PW": "x"}, 2,
                         ("exactly one of --password-env VAR or --key FILE",)),
    "password variable unset": (("device", "add", "d2", "--host", "h", "--user", "u",
                                 "--password-env", "NO_SUCH_VAR"), {}, 2,
                                ("--password-env", "NO_SUCH_VAR is not set")),
    "duplicate approver": (("approver", "add", "bob", "--email", "b@x.org"), {}, 1,
                           ("approver 'bob' already exists",)),
    "malformed broker.toml": (("--config", "DIR/bad.toml", "tech", "list"), {}, 1,
                              ("DIR/bad.toml: not valid TOML", "line 3")),
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
def bad_input_results(populated: Populated, ssh_keypair: tuple[Path, Path],
                      tmp_path_factory: pytest.TempPathFactory) -> dict[str, CliResult]:
    """Every bad-input command, run concurrently on one copy of the populated broker.

    In commands, DIR stands for that copy's directory; in the results, the directory's path is
    replaced by DIR again so that expected messages can name files.
    """
    directory = Path(shutil.copytree(populated.dir, tmp_path_factory.mktemp("bad") / "b"))
    write(directory / "not-a-key.pub", "ssh-ed25519 AAAAnope alice\n")
    write(directory / "bad.toml", BAD_TOML)
    write(directory / "bad-value.toml", BAD_VALUE_TOML)
    write(directory / "bad-policies" / "bad.yaml", BAD_POLICY)
    places = {"KEY": str(ssh_keypair[0]), "PUBKEY": str(ssh_keypair[1]),
              "DIR": str(directory)}

    def fill(text: str) -> str:
        return places.get(text) or text.replace("DIR/", f"{directory}/")

    def run(name: str) -> CliResult:
        argv, env, _, _ = BAD_INPUT[name]
        return run_broker([*map(fill, argv)] if argv[0] == "--config"
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
