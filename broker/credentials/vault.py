"""The device secret vault: secrets encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256).

The key file holds one Fernet key per line, newest first; decryption tries them all, so the
key can be rotated without re-encrypting everything at once (``MultiFernet``). A vault read
from a file notices when the file is replaced (``broker vault rotate-key``) and reloads it.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from broker.errors import ConfigError, StoreError


class Vault:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigError("the vault key file holds no key")
        self._fernet = MultiFernet([Fernet(key) for key in keys])
        self._path: Path | None = None
        self._stamp: tuple[int, int, int] | None = None

    @classmethod
    def from_file(cls, path: Path) -> Vault:
        stamp = _stamp(path)  # before reading: a change in between shows up as a new stamp
        vault = cls(read_keys(path))
        vault._path, vault._stamp = path, stamp
        return vault

    def _fresh(self) -> MultiFernet:
        if self._path is not None and (stamp := _stamp(self._path)) != self._stamp:
            self._fernet = MultiFernet([Fernet(key) for key in read_keys(self._path)])
            self._stamp = stamp
        return self._fernet

    def seal(self, secret: bytes) -> bytes:
        return self._fresh().encrypt(secret)

    def open(self, token: bytes) -> bytes:
        try:
            return self._fresh().decrypt(token)
        except InvalidToken:
            raise StoreError("a vaulted secret cannot be decrypted with the vault key") from None


def read_keys(path: Path) -> list[bytes]:
    try:
        lines = path.read_bytes().split()
    except FileNotFoundError:
        raise ConfigError(f"{path}: vault key is missing (run 'broker init')") from None
    keys = [line.strip() for line in lines if line.strip()]
    if not keys:
        raise ConfigError(f"{path}: the vault key file holds no key")
    for key in keys:
        try:
            Fernet(key)
        except ValueError:
            raise ConfigError(f"{path}: not a vault key file (one Fernet key per line)"
                              ) from None
    return keys


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    """What changes when the key file is replaced or rewritten."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
