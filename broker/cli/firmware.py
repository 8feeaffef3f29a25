"""``broker device set NAME --probe ...`` and ``broker device firmware accept|history NAME``:
the firmware part of a device's trust record (broker/services/firmware.py)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from broker.cli._base import actor, common, emit, run, table
from broker.errors import UsageError
from broker.services import firmware, render
from broker.services.context import Context
from broker.services.directory import Directory
from broker.store.models import Device


async def trust_record(ctx: Context, name: str) -> tuple[Device, list[dict[str, Any]]]:
    """The device and its latest firmware readings (for ``device show``)."""
    device = await Directory(ctx, actor()).device(name)
    return device, [asdict(line) for line in await firmware.history(ctx, name)]


def firmware_fields(d: dict[str, Any], history: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The firmware lines of ``device show``: the probe, and a drift nobody accepted yet."""
    if d["firmware_drift"]:
        drift = (f"CHANGED: the device reported {d['firmware_observed']!r}"
                 f" ({d['firmware_observed_at']:%Y-%m-%d %H:%M:%SZ}, session"
                 f" {d['firmware_observed_session']}); not accepted yet:"
                 f" broker device firmware accept {d['name']}")
    else:
        drift = "none" if d["probe"] else "- (no probe)"
    last = history[0] if history else None
    return [("firmware probe", d["probe"]), ("firmware drift", drift),
            ("last probe", None if last is None else
             f"{last['at']:%Y-%m-%d %H:%M:%SZ} {last['phase']}: {last['text']}")]


@click.command("set")
@click.argument("name")
@click.option("--probe", default=None, metavar="COMMAND",
              help="read-only command whose output is the device's firmware")
@click.option("--no-probe", is_flag=True, help="run no probe on this device any more")
@common()
def device_set(name: str, probe: str | None, no_probe: bool, config_file: str | None,
               as_json: bool) -> None:
    """Change a device's trust record (its firmware probe)."""
    if (probe is None) == (not no_probe):
        raise UsageError("give exactly one of --probe COMMAND or --no-probe")
    row = run(config_file, lambda ctx: firmware.set_probe(ctx, actor(), name, probe))
    emit(as_json, render.device(row),
         f"device {name}: probe {row.probe!r}" if row.probe else f"device {name}: no probe")


@click.group("firmware")
def device_firmware() -> None:
    """The firmware baseline: accept a change a probe saw, show the history."""


@device_firmware.command("accept")
@click.argument("name")
@common()
def firmware_accept(name: str, config_file: str | None, as_json: bool) -> None:
    """Make the firmware the device last reported its new baseline."""
    row = run(config_file, lambda ctx: firmware.accept(ctx, actor(), name))
    emit(as_json, render.device(row), f"device {name}: firmware baseline is now {row.firmware!r}")


@device_firmware.command("history")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 1000), default=firmware.HISTORY,
              show_default=True, help="how many readings, newest first")
@common()
def firmware_history(name: str, limit: int, config_file: str | None, as_json: bool) -> None:
    """The device's probe readings and accepted baselines, newest first."""
    lines = [asdict(line) for line in run(config_file,
                                          lambda ctx: firmware.history(ctx, name, limit))]
    emit(as_json, lines, lambda: table(
        [(line["at"], line["phase"], line["session"], line["text"],
          "changed" if line["changed"] else "", line["actor"]) for line in lines],
        ["at", "phase", "session", "firmware", "", "by"]))

