"""``broker cert issue``, ``broker cert list`` and ``broker cert revoke``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from broker.cli._base import actor, common, emit, run
from broker.errors import BrokerError, UsageError
from broker.fileio import write_atomically
from broker.services.certs import Certificates
from broker.store.models import IssuedCertificate


@click.group("cert")
def cert() -> None:
    """Short-lived OpenSSH user certificates."""


@cert.command("issue")
@click.option("--grant", "grant_id", required=True, type=int, metavar="ID",
              help="the grant the certificate is for")
@click.option("--key", "key_file", required=True, metavar="PUBKEY_FILE",
              help="the technician's OpenSSH public key file (one key)")
@click.option("--out", "out_file", default=None, metavar="FILE",
              help="write the certificate here (e.g. ~/.ssh/id_ed25519-cert.pub)")
@common()
def cert_issue(grant_id: int, key_file: str, out_file: str | None, config_file: str | None,
               as_json: bool) -> None:
    """Sign a user certificate valid until the grant ends (never longer)."""
    text = _read_key_file(key_file)
    out = Path(out_file) if out_file else None
    if out is not None and not out.parent.is_dir():
        raise UsageError(f"--out {out_file}: directory {out.parent} does not exist")
    if out is not None and out.is_dir():
        raise UsageError(f"--out {out_file}: is a directory")
    row, certificate = run(config_file, lambda ctx: Certificates(ctx, actor()).issue(
        grant_id, text, source=f"--key {key_file}"))
    if out is not None:
        _write_certificate(out, certificate)
    summary = (f"certificate for {_technician(row)} (grant {grant_id}, serial {row.serial}) "
               "valid "
               f"{row.valid_after:%Y-%m-%d %H:%M:%SZ} to {row.valid_before:%Y-%m-%d %H:%M:%SZ}"
               + (f", written to {out}" if out is not None else ""))
    if as_json:
        emit(True, _certificate_json(row, certificate, out))
        return
    if out is None:
        click.echo(certificate)
    click.echo(summary, err=True)


def _read_key_file(key_file: str) -> str:
    try:
        return Path(key_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--key {key_file}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--key {key_file}: not a text file (expected an OpenSSH public key)"
                         ) from None


def _write_certificate(path: Path, certificate: str) -> None:
    """Replace ``path`` atomically with the certificate, mode 0644 (a certificate is public)."""
    try:
        write_atomically(path, (certificate + "\n").encode("utf-8"), mode=0o644)
    except OSError as exc:
        raise BrokerError(f"--out {path}: cannot write the certificate: "
                          f"{exc.strerror or exc}") from None


def _certificate_json(row: IssuedCertificate, certificate: str, out: Path | None
                      ) -> dict[str, Any]:
    return {"id": row.id, "serial": row.serial, "grant": row.grant_id,
            "technician": _technician(row), "key_id": row.key_id,
            "key_fingerprint": row.key_fingerprint, "valid_after": row.valid_after,
            "valid_before": row.valid_before, "issued_at": row.issued_at,
            "issued_by": row.issued_by, "certificate": certificate,
            "file": str(out) if out is not None else None}


def _technician(row: IssuedCertificate) -> str:
    return row.key_id.removeprefix(f"broker-grant-{row.grant_id}-")
