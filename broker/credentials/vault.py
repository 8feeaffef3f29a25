"""The device secret vault: secrets encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256).

The key file holds one Fernet key per line, newest first; decryption tries them all, so the
key can be rotated without re-encrypting everything at once (``MultiFernet``).
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

    @classmethod
    def from_file(cls, path: Path) -> Vault:
        try:
            lines = path.read_bytes().split()
        except FileNotFoundError:
            raise ConfigError(f"{path}: vault key is missing (run 'broker init')") from None
        try:
            return cls([line.strip() for line in lines if line.strip()])
        except ValueError:
            raise ConfigError(f"{path}: not a vault key file (one Fernet key per line)") from None

    def seal(self, secret: bytes) -> bytes:
        return self._fernet.encrypt(secret)

    def open(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise StoreError("a vaulted secret cannot be decrypted with the vault key") from None
