"""``broker device ...``."""

from __future__ import annotations

import os

import asyncssh
import click

from broker.cli._base import actor, common, emit, fields, run, table
from broker.cli.firmware import device_firmware, device_set, firmware_fields, trust_record
from broker.cli.rotation import outcome_json, retire_note, rotate_command, rotation_fields
from broker.credentials.rotation import retire_device
from broker.errors import UsageError
from broker.services import render
from broker.services.directory import Directory
from broker.store.models import Device
from broker.webproxy.cli import device_web


@click.group("device")
def device() -> None:
    """Devices: the trust record, credentials and lifecycle."""


@device.command("add")
@click.argument("name")
@click.option("--host", required=True, help="the device's address, as the broker reaches it")
@click.option("--port", type=int, default=22, show_default=True, help="the device's SSH port")
@click.option("--user", "login_user", required=True, help="account the broker logs in as")
@click.option("--password-env", metavar="VAR", help="environment variable holding the password")
@click.option("--key", "key_file", metavar="FILE", help="private key file the broker logs in with")
@click.option("--web-url", default=None, help="the device's web UI (https://...)")
@click.option("--model", default=None, help="make and model, for the trust record")
@click.option("--firmware", default=None, help="firmware baseline")
@click.option("--probe", default=None, metavar="COMMAND",
              help="read-only command whose output is the firmware, run on the device before"
                   " and after each session (e.g. \"cat /etc/firmware-version\")")
@click.option("--department", default=None, help="owning department")
@click.option("--purpose", default=None, help="clinical purpose")
@click.option("--tag", "tags", multiple=True, help="a label policies can match (repeatable)")
@click.option("--rotate", is_flag=True, help="rotate the credential when each grant ends")
@click.option("--rotate-method", default=None, metavar="METHOD",
              help="chpasswd | passwd (password) or authorized_key (key); default by kind")
@common()
def device_add(name: str, host: str, port: int, login_user: str, password_env: str | None,
               key_file: str | None, web_url: str | None, model: str | None,
               firmware: str | None, probe: str | None, department: str | None,
               purpose: str | None, tags: tuple[str, ...], rotate: bool,
               rotate_method: str | None, config_file: str | None, as_json: bool) -> None:
    """Register a device and the credential the broker uses on it."""
    kind, secret = _credential(password_env, key_file)
    row = Device(name=name, host=host, port=port, login_user=login_user, web_url=web_url,
                 model=model, firmware=firmware, department=department, purpose=purpose,
                 tags=sorted(set(tags)), rotate=rotate, rotate_method=rotate_method,
                 probe=probe)
    added = run(config_file, lambda ctx: Directory(ctx, actor()).add_device(row, kind, secret))
    emit(as_json, render.device(added), f"device {name} added ({host}:{port}, {kind} login)")


def _credential(password_env: str | None, key_file: str | None) -> tuple[str, bytes]:
    if bool(password_env) == bool(key_file):
        raise UsageError("give exactly one of --password-env VAR or --key FILE")
    if password_env:
        value = os.environ.get(password_env)
        if not value:
            raise UsageError(f"--password-env: environment variable {password_env} is not set")
        return "password", value.encode()
    assert key_file is not None
    try:
        key = asyncssh.read_private_key(key_file)
    except FileNotFoundError:
        raise UsageError(f"--key {key_file}: no such file") from None
    except (OSError, asyncssh.KeyImportError, ValueError) as exc:
        raise UsageError(f"--key {key_file}: not a usable private key ({exc})") from None
    return "key", key.export_private_key()


@device.command("list")
@common()
def device_list(config_file: str | None, as_json: bool) -> None:
    """List devices."""
    data = [render.device(d) for d in run(config_file,
                                          lambda ctx: Directory(ctx, actor()).devices())]
    emit(as_json, data, lambda: table(
        [(d["name"], d["state"], f"{d['host']}:{d['port']}", d["model"], d["department"],
          d["tags"], d["rotate"]) for d in data],
        ["name", "state", "address", "model", "department", "tags", "rotate"]))


@device.command("show")
@click.argument("name")
@common()
def device_show(name: str, config_file: str | None, as_json: bool) -> None:
    """Show a device's trust record."""
    row, history = run(config_file, lambda ctx: trust_record(ctx, name))
    d = {**render.device(row), "firmware_history": history}
    emit(as_json, d, lambda: fields([
        ("name", d["name"]), ("state", d["state"]), ("address", f"{d['host']}:{d['port']}"),
        ("login user", d["login_user"]), ("model", d["model"]), ("firmware", d["firmware"]),
        ("department", d["department"]), ("purpose", d["purpose"]), ("web url", d["web_url"]),
        ("tags", d["tags"]), ("rotate", d["rotate"]), ("host key", "pinned"
                                                       if d["host_key_pinned"] else "not yet seen"),
        *rotation_fields(d), *firmware_fields(d, history),
    ]))


@device.command("retire")
@click.argument("name")
@common()
def device_retire(name: str, config_file: str | None, as_json: bool) -> None:
    """Retire a device: revoke every grant on it and refuse all access from now on."""
    row, outcome = run(config_file, lambda ctx: retire_device(ctx, name, actor()))
    emit(as_json, {**render.device(row), "final_rotation": outcome_json(outcome)},
         f"device {name} retired; its grants are revoked; {retire_note(row, outcome)}")


@device.command("maintenance")
@click.argument("name")
@click.argument("switch", type=click.Choice(["on", "off"]))
@common()
def device_maintenance(name: str, switch: str, config_file: str | None, as_json: bool) -> None:
    """Put a device in maintenance (no new sessions) or take it out."""
    state = "maintenance" if switch == "on" else "active"
    row = run(config_file, lambda ctx: Directory(ctx, actor()).set_device_state(name, state))
    emit(as_json, render.device(row), f"device {name} is now {state}")


@device.command("rotate")
@click.argument("name")
@common()
def device_rotate(name: str, config_file: str | None, as_json: bool) -> None:
    """Rotate the device's credential now: on the device, verified, then in the vault."""
    rotate_command(name, config_file, as_json)


device.add_command(device_web)  # broker device web NAME ... (broker/webproxy/cli.py)
device.add_command(device_set)  # broker device set NAME --probe ... (broker/cli/firmware.py)
device.add_command(device_firmware)  # broker device firmware accept NAME ...
