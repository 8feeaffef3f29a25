"""RFC 5424 syslog messages, RFC 6587 octet-counted framing, and the TCP or TLS (RFC 5425)
connection to the SIEM's syslog receiver.

A message is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [audit@32473 seq="…" hash="…"
prev_hash="…"] MSG``: MSGID is the audit event's kind, the structured data carries the chain
links (32473 is the private enterprise number RFC 5612 reserves for examples), MSG is the OCSF
JSON or the CEF line. On the wire each message is ``LENGTH SP MESSAGE`` (RFC 6587 3.4.1, which
RFC 5425 uses over TLS as well), so messages may contain newlines and any length.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from datetime import UTC
from urllib.parse import urlsplit

from broker.aio import within
from broker.siem.mapping import SYSLOG_SEVERITY, AuditRow, mapping_for, ocsf_json, to_cef

SD_ID = "audit@32473"
NILVALUE = "-"
DEFAULT_PORTS = {"tcp": 514, "tls": 6514}


class SendError(Exception):
    """The SIEM could not be reached, or a write to it failed (one line, for last_error)."""


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most ``limit`` long."""
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return cleaned or NILVALUE


def _sd_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def message(row: AuditRow, *, fmt: str, facility: int, app_name: str, hostname: str,
            product_version: str = "") -> bytes:
    """One RFC 5424 message (without framing) for one audit row."""
    severity = SYSLOG_SEVERITY.get(mapping_for(row.kind).severity_id, 5)
    ts = row.ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sd = (f'[{SD_ID} seq="{row.seq}" hash="{_sd_value(row.hash)}"'
          f' prev_hash="{_sd_value(row.prev_hash)}"]')
    body = ocsf_json(row, product_version) if fmt == "ocsf" else to_cef(row, product_version)
    header = (f"<{facility * 8 + severity}>1 {ts} {_header_field(hostname, 255)}"
              f" {_header_field(app_name, 48)} {NILVALUE} {_header_field(row.kind, 32)}")
    return f"{header} {sd} {body}".encode()


def frame(msg: bytes) -> bytes:
    """RFC 6587 octet counting: the message's length in bytes, a space, the message."""
    return b"%d %s" % (len(msg), msg)


@dataclass(frozen=True)
class Target:
    scheme: str  # tcp | tls
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        assert parts.hostname is not None  # checked by broker.config.SiemSection
        return cls(parts.scheme, parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme])

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None
                ) -> ssl.SSLContext:
    """Verify the SIEM's certificate and host name (against ``ca_file`` or the system's trust
    store); present a client certificate when one is given. Raises OSError/ssl.SSLError on an
    unreadable file."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file or None)
    return context


class Connection:
    """One stream to the receiver. Syslog over TCP has no acknowledgement: a send counts as
    done when the write is drained (handed to the kernel, through TLS if used). Before each
    send the connection is checked for an end the peer already announced (a restarting
    receiver closes its side), so the batch goes on a fresh connection instead of into one
    that is gone."""

    def __init__(self, target: Target, tls: ssl.SSLContext | None, timeout: float) -> None:
        self.target, self.tls, self.timeout = target, tls, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def open(self) -> bool:
        return self._writer is not None

    async def connect(self) -> None:
        try:
            self._reader, self._writer = await within(self.timeout, asyncio.open_connection(
                self.target.host, self.target.port, ssl=self.tls,
                server_hostname=self.target.host if self.tls else None,
                ssl_handshake_timeout=self.timeout if self.tls else None))
        except TimeoutError:
            raise SendError(f"{self.target}: no connection within {self.timeout:g}s") from None
        except ssl.SSLError as exc:
            raise SendError(f"{self.target}: TLS handshake failed: {exc.reason or exc}"
                            ) from None
        except OSError as exc:
            raise SendError(f"{self.target}: cannot connect: {exc.strerror or exc}") from None

    def _peer_gone(self) -> bool:
        reader, writer = self._reader, self._writer
        if reader is None or writer is None:
            return True
        return writer.is_closing() or reader.at_eof() or reader.exception() is not None

    async def send(self, frames: list[bytes]) -> None:
        """Write ``frames`` and wait until they are drained; raises :class:`SendError`."""
        await asyncio.sleep(0)  # let a pending FIN/RST from the receiver be noticed first
        if self._writer is not None and self._peer_gone():
            await self.close()
        if self._writer is None:
            await self.connect()
        writer = self._writer
        assert writer is not None
        try:
            writer.write(b"".join(frames))
            await within(self.timeout, writer.drain())
        except TimeoutError:
            await self.close()
            raise SendError(f"{self.target}: write not accepted within {self.timeout:g}s"
                            ) from None
        except (OSError, ssl.SSLError) as exc:
            await self.close()
            raise SendError(f"{self.target}: write failed: {exc}") from None
        if self._peer_gone():  # closed under us while writing: do not count the batch as sent
            await self.close()
            raise SendError(f"{self.target}: the receiver closed the connection")

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await within(2, writer.wait_closed())
