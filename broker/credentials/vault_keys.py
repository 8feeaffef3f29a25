"""``broker vault rotate-key``: a new vault key, every secret re-encrypted with it, the old
key gone from the key file.

Crash-safe in three steps: (1) the key file gets the new key *in front of* the old ones, so
whatever happens next every secret still decrypts; (2) one transaction re-encrypts every
sealed column with the new key; (3) the key file is replaced by one holding only the new key.
Running broker processes notice the replaced file and reload it (``Vault._fresh``). No copy
of the old key is kept: a backup of a retired key would defeat the rotation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlmodel import SQLModel, col, select

from broker.credentials.vault import read_keys
from broker.errors import StoreError
from broker.fileio import write_atomically
from broker.services.context import Context
from broker.store.models import DeviceCredential, Technician

# Every column holding a vault-sealed value. A feature that seals a new column adds it here.
SEALED: list[tuple[type[SQLModel], str]] = [(DeviceCredential, "secret"),
                                             (Technician, "totp_secret")]


async def rotate_key(ctx: Context, actor: str) -> int:
    """Rotate the vault key; returns how many secrets were re-encrypted."""
    path = ctx.config.path(ctx.config.settings.vault.key_file)
    old = read_keys(path)
    new = Fernet.generate_key()
    write_key_file(path, [new, *old])
    both, only_new = MultiFernet([Fernet(k) for k in (new, *old)]), Fernet(new)
    async with ctx.store.session() as db:
        count = 0
        for model, column in SEALED:
            for row in await _sealed_rows(db, model, column):
                _reseal(row, column, both)
                db.add(row)
                count += 1
        await ctx.audit(db, "vault.key_rotated", actor, "vault", secrets=count)
    # a process may have sealed a value with the old key just before it saw the new file
    async with ctx.store.session() as db:
        for model, column in SEALED:
            for row in await _sealed_rows(db, model, column):
                try:
                    only_new.decrypt(getattr(row, column))
                except InvalidToken:
                    _reseal(row, column, both)
                    db.add(row)
    write_key_file(path, [new])
    return count


async def _sealed_rows(db: Any, model: type[SQLModel], column: str) -> list[Any]:
    field = getattr(model, column)
    return list((await db.exec(select(model).where(col(field).is_not(None)))).all())


def _reseal(row: Any, column: str, fernet: MultiFernet) -> None:
    try:
        setattr(row, column, fernet.rotate(getattr(row, column)))
    except InvalidToken:
        raise StoreError(f"{type(row).__tablename__} {row.id}: its secret cannot be decrypted"
                         " with the vault key; nothing was re-encrypted") from None


def write_key_file(path: Path, keys: list[bytes]) -> None:
    """Replace the key file atomically (0600, synced): readers see the old or the new file."""
    write_atomically(path, b"".join(key + b"\n" for key in keys), mode=0o600)
