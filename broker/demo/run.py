"""``broker demo``: a broker on SQLite, a simulated infusion pump, and a walk-through."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import asyncssh
import click

from broker.audit.logging import log_to_file
from broker.config import load_config
from broker.credentials.files import write_secret
from broker.demo import start_simulated_device
from broker.demo.web import start_device_web
from broker.server import Server, stop_on_signals
from broker.services.context import Context
from broker.services.device_web import WebOptions
from broker.services.device_web import configure as configure_web
from broker.services.directory import Directory, parse_public_keys
from broker.services.setup import initialise, migrate_database
from broker.services.staff_accounts import StaffAccounts
from broker.store.models import Device

ACTOR = "demo-setup"


async def run_demo(directory: Path | None, ssh_port: int, http_port: int = 8443) -> None:
    temporary = directory is None
    root = Path(tempfile.mkdtemp(prefix="broker-demo-")) if directory is None else directory
    root.mkdir(parents=True, exist_ok=True)
    try:
        await _demo(root, ssh_port, http_port)
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
            click.echo(f"\ndemo stopped; its temporary data ({root}) is removed. To keep it"
                       " next time: broker demo --dir DIR", err=True)
        else:
            click.echo(f"\ndemo stopped; its data stays in {root} (broker demo --dir {root}"
                       " starts it again, as it was)", err=True)


async def _demo(root: Path, ssh_port: int, http_port: int) -> None:
    initialise(root, public_url=f"https://localhost:{http_port}")
    config_file = root / "broker.toml"
    text = config_file.read_text()
    config_file.write_text(
        text.replace('listen = "0.0.0.0:2222"', f'listen = "127.0.0.1:{ssh_port}"', 1)
        .replace('listen = "0.0.0.0:8443"', f'listen = "127.0.0.1:{http_port}"', 1)
        .replace('listen = "0.0.0.0:8444"', f'listen = "127.0.0.1:{http_port + 1}"', 1))
    config = load_config(config_file)
    log_to_file(config.log_file, config.settings.log.level)
    await migrate_database(config.database_url)
    device_password = secrets.token_urlsafe(18)
    device = await start_simulated_device(root / "device-root", password=device_password,
                                          host_key_path=root / "device_host_key")
    device_web = await start_device_web(device.state)
    tech_key = root / "alice_ed25519"
    if not tech_key.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="alice@vendor")
        key.write_private_key(str(tech_key))
        key.write_public_key(str(tech_key) + ".pub")
        os.chmod(tech_key, 0o600)
    ctx = Context.open(config)
    await _populate(ctx, tech_key, device.port, device_password)
    portal_password = await _staff_account(ctx, root / "dana-portal-password")
    await configure_web(ctx, ACTOR, "pump-7", WebOptions(
        url=device_web.url, insecure_http=True, auth="form", form_path="/login"))
    server = Server(ctx)
    await server.start()
    host_key = (root / "data" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[localhost]:{server.ssh_port} {' '.join(host_key)}\n")
    (root / "ssh_config").write_text(
        f"Host broker-demo\n  HostName localhost\n  Port {server.ssh_port}\n"
        f"  IdentityFile {tech_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known_hosts}\n  HostKeyAlias [localhost]:{server.ssh_port}\n")
    click.echo(walkthrough(root, server.ssh_port, http_port, portal_password))
    try:
        await server.run(stop_on_signals())
    finally:
        await device_web.close()
        await device.close()


async def _populate(ctx: Context, tech_key: Path, device_port: int, password: str) -> None:
    directory = Directory(ctx, ACTOR)
    if await _exists(directory):
        return
    keys = parse_public_keys(Path(f"{tech_key}.pub").read_text(), "alice's public key")
    await directory.add_technician("alice", "B. Braun Service", keys, "alice@vendor.example")
    await directory.add_approver("dana", "dana@hospital.example", ["biomed"])
    await directory.add_device(
        Device(name="pump-7", host="127.0.0.1", port=device_port, login_user="service",
               model="Infusomat Space P", firmware="4.2.1", department="ICU",
               purpose="infusion therapy", tags=["infusion"]),
        "password", password.encode(), owner="biomed")


async def _staff_account(ctx: Context, password_file: Path) -> str:
    """dana's portal account (admin, deciding as approver dana); its password is kept in a
    0600 file so that a demo re-run in the same --dir can print it again."""
    if password_file.exists():
        return password_file.read_text().strip()
    password = secrets.token_urlsafe(12)
    await StaffAccounts(ctx, ACTOR).add("dana", "admin", password, approver="dana")
    write_secret(password_file, password.encode() + b"\n")
    return password


async def _exists(directory: Directory) -> bool:
    return any(t.technician.name == "alice" for t in await directory.technicians())


def walkthrough(root: Path, port: int, http_port: int, portal_password: str) -> str:
    bin_dir = shlex.quote(str(Path(shutil.which("broker") or sys.argv[0]).resolve().parent))
    ssh = f"ssh -F {shlex.quote(str(root / 'ssh_config'))}"
    return f"""
The vendor access broker demo is running: SSH on localhost:{port}, data in {root}.
Behind it: a simulated infusion pump 'pump-7'. Registered: technician 'alice'
(B. Braun Service) and approver 'dana' (biomed). In another terminal, paste:

  export PATH={bin_dir}:$PATH BROKER_CONFIG={shlex.quote(str(root / "broker.toml"))}

  # 1. Without a grant, alice is refused, with the reason:
  {ssh} alice+pump-7@broker-demo status

  # 2. alice asks for 30 minutes; dana approves, from a shell or with her one-click link:
  broker request create --tech alice --device pump-7 --for 30m --reason "Battery check, INC-4711"
  broker request link 1 --approver dana     # open it on a phone or in a browser, or:
  broker request approve 1 --as dana --comment "ok, ICU informed"
  broker grant list

  # 3. alice works on the pump through the broker, never seeing its password:
  {ssh} alice+pump-7@broker-demo status
  {ssh} alice+pump-7@broker-demo       # interactive: status, logs, config show, exit
  {ssh} alice@broker-demo              # her grants

  # 4. An auditor replays alice's shell session (an ID prefix works too) and checks the
  #    audit chain:
  broker recordings list
  broker replay --last
  broker audit tail
  broker audit verify

  # 5. alice opens the pump's own web UI through the broker (the broker logs in for her):
  {ssh} alice@broker-demo weblogin pump-7     # prints a one-time https://... link
  #    open it in a browser (accept the demo's self-signed certificate), then Live log

  # 6. The staff portal: https://localhost:{http_port}/staff/  (user dana, password
  #    {portal_password}): pending requests, grants, live sessions (Watch, Kill),
  #    recordings with the player, the audit log, devices.

  # 7. Revoke: live sessions (the web page too) are cut within a second, new ones refused:
  broker grant revoke 1 --reason "demo over"
  {ssh} alice+pump-7@broker-demo status

Press Ctrl-C here to stop the demo.
"""
