"""``broker vault ...``: the device secret vault's key."""

from __future__ import annotations

import click

from broker.cli._base import actor, common, emit, run
from broker.credentials.vault_keys import rotate_key


@click.group("vault")
def vault() -> None:
    """The vault that holds device secrets, encrypted at rest."""


@vault.command("rotate-key")
@common()
def vault_rotate_key(config_file: str | None, as_json: bool) -> None:
    """New vault key: re-encrypt every secret with it, then drop the old key from the file."""
    count = run(config_file, lambda ctx: rotate_key(ctx, actor()))
    emit(as_json, {"secrets": count}, f"vault key rotated; {count} secrets re-encrypted")
