"""The broker's own keys, created by ``broker init`` and loaded by ``broker serve``."""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from broker.config import Config
from broker.credentials.files import write_public, write_secret
from broker.errors import ConfigError

if TYPE_CHECKING:
    import asyncssh


@dataclass(frozen=True)
class KeyPaths:
    host_key: Path
    user_ca: Path
    recording_key: Path
    tls_cert: Path | None  # None: the portal serves plain HTTP
    tls_key: Path | None
    vault_key: Path
    web_key: Path

    @classmethod
    def of(cls, config: Config) -> KeyPaths:
        s = config.settings
        return cls(
            host_key=config.path(s.ssh.host_key),
            user_ca=config.path(s.ssh.user_ca),
            recording_key=config.path(s.recording.signing_key),
            tls_cert=config.path(s.http.tls_cert) if s.http.tls_cert else None,
            tls_key=config.path(s.http.tls_key) if s.http.tls_key else None,
            vault_key=config.path(s.vault.key_file),
            web_key=config.path(s.http.secret_key),
        )


def create_keys(paths: KeyPaths, hostname: str) -> list[Path]:
    """Create every missing key; never touch one that exists. Returns the files created."""
    import asyncssh  # here: most commands use the keys that exist, and need no SSH

    created: list[Path] = []

    def ssh_key(path: Path) -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        if write_secret(path, key.export_private_key()):
            # a new private key: a .pub left over from a lost one would no longer match it
            _write_derived(path.with_name(path.name + ".pub"), key.export_public_key())
            created.append(path)

    ssh_key(paths.host_key)
    ssh_key(paths.user_ca)
    recording = ed25519.Ed25519PrivateKey.generate()
    if write_secret(paths.recording_key, recording.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )):
        created.append(paths.recording_key)
    if write_secret(paths.vault_key, Fernet.generate_key() + b"\n"):
        created.append(paths.vault_key)
    if write_secret(paths.web_key, secrets.token_bytes(32)):
        created.append(paths.web_key)
    if paths.tls_key and paths.tls_cert and not paths.tls_key.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _self_signed(key, hostname)
        write_secret(paths.tls_key, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        _write_derived(paths.tls_cert, cert.public_bytes(serialization.Encoding.PEM))
        created.append(paths.tls_key)
    return created


def _write_derived(path: Path, data: bytes) -> None:
    """Write the public half of a key just created, replacing a stale one."""
    path.unlink(missing_ok=True)
    write_public(path, data)


def _self_signed(key: ec.EllipticCurvePrivateKey, hostname: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )


def load_ssh_key(path: Path, what: str) -> asyncssh.SSHKey:
    import asyncssh

    try:
        return asyncssh.read_private_key(str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} is missing (run 'broker init')") from None
    except (OSError, asyncssh.KeyImportError) as exc:
        raise ConfigError(f"{path}: cannot load {what}: {exc}") from None


def subkey(master: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose (``"approval-jwt"``, ``"csrf"``, ``"cookie"`` ...),
    derived from a master secret (HKDF-SHA256), so that no two uses ever share a key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=f"broker/{purpose}".encode()).derive(master)


def load_secret_bytes(path: Path, what: str, size: int = 32) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} is missing (run 'broker init')") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    if len(data) < size:
        raise ConfigError(f"{path}: {what} is shorter than {size} bytes")
    return data
