"""A small asyncio ICAP client (RFC 3507) for malware scanning of uploaded files.

No maintained asyncio ICAP library exists on PyPI, and the part needed is small: one
``RESPMOD`` per file, the file sent as the body of an HTTP response (chunked), ``Allow: 204``
so that a clean file comes back as ``204 No Content`` without its body. An infected file gets
``200`` with the scanner's verdict in ``X-Infection-Found`` (``Threat=NAME;``, as c-icap and
most scanners send) or ``X-Violations-Found`` (count, then filename / threat / id / action
lines). Anything else (connection refused, timeout, a 4xx/5xx, a 200 without a verdict that
the broker could read) is a :class:`ScanError`: the caller's ``on_error`` decides.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from broker.aio import within

DEFAULT_PORT = 1344
CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024
_THREAT = re.compile(r"Threat=([^;]+)")


class ScanError(Exception):
    """The scanner could not give a verdict (one line, safe to show)."""


@dataclass(frozen=True)
class Verdict:
    clean: bool
    threat: str | None = None  # the scanner's name for what it found


class ICAPClient:
    def __init__(self, url: str, *, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "icap" or not parts.hostname:
            raise ValueError(f"not an icap:// URL: {url!r}")
        self.url, self.timeout = url, timeout
        self.host, self.port = parts.hostname, parts.port or DEFAULT_PORT

    async def scan(self, path: Path, name: str = "upload") -> Verdict:
        """Scan the file at ``path``; ``name`` is shown to the scanner as the URL's file."""
        try:
            return await within(self.timeout, self._scan(path, name))
        except TimeoutError:
            raise ScanError(f"the scanner at {self.host}:{self.port} did not answer within"
                            f" {self.timeout:g}s") from None
        except OSError as exc:
            raise ScanError(f"the connection to the scanner at {self.host}:{self.port}"
                            f" broke: {exc.strerror or exc}") from None

    async def _scan(self, path: Path, name: str) -> Verdict:
        size = path.stat().st_size
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise ScanError(f"the scanner at {self.host}:{self.port} is unreachable:"
                            f" {exc.strerror or exc}") from None
        try:
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[-100:] or "upload"
            http = (f"GET /{safe} HTTP/1.1\r\nHost: broker\r\n\r\n").encode()
            response = (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                        f"Content-Length: {size}\r\n\r\n").encode()
            head = (f"RESPMOD {self.url} ICAP/1.0\r\nHost: {self.host}\r\nAllow: 204\r\n"
                    f"Connection: close\r\nEncapsulated: req-hdr=0, res-hdr={len(http)},"
                    f" res-body={len(http) + len(response)}\r\n\r\n").encode()
            writer.write(head + http + response)
            with path.open("rb") as source:
                while chunk := source.read(CHUNK):
                    writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise ScanError("the scanner's answer has an oversized header") from None
            except asyncio.IncompleteReadError:
                raise ScanError("the scanner closed the connection without an answer") \
                    from None
            verdict = _verdict(raw)
            if verdict is not None:
                return verdict
            return await _returned(reader)
        finally:
            writer.close()


async def _returned(reader: asyncio.StreamReader) -> Verdict:
    """A 200 without a named threat: the scanner sent the response back (c-icap does so for
    large files while it scans). Clean when it is the HTTP 200 sent, whole; blocked when the
    scanner replaced it by an error page."""
    try:
        http = await reader.readuntil(b"\r\n\r\n")
        status = http.split(b"\r\n", 1)[0].split(b" ")
        code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"x", 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        raise ScanError("the scanner cut the file off without a verdict") from None
    if 200 <= code < 300:
        return Verdict(clean=True)
    return Verdict(clean=False, threat=f"blocked by the scanner (HTTP {code})")


def _verdict(raw: bytes) -> Verdict | None:
    """The verdict in the ICAP answer's head; None when the body must be read."""
    lines = raw.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("ICAP/") or not status[1].isdigit():
        raise ScanError(f"the scanner's answer is not ICAP: {lines[0][:80]!r}")
    code = int(status[1])
    if code == 204:
        return Verdict(clean=True)
    if code != 200:
        raise ScanError(f"the scanner answered {lines[0][:80]!r}")
    headers: dict[str, list[str]] = {}
    current = ""
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and current:  # a folded continuation line
            headers[current][-1] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        current = key.strip().lower()
        headers.setdefault(current, []).append(value.strip())
    for value in headers.get("x-infection-found", []):
        if match := _THREAT.search(value):
            return Verdict(clean=False, threat=match.group(1).strip())
    for value in headers.get("x-violations-found", []):
        parts = [p.strip() for p in value.split("\n") if p.strip()]
        if len(parts) >= 3:  # count, filename, threat, ...
            return Verdict(clean=False, threat=parts[2])
    for key in ("x-virus-id", "x-virus-name"):
        if headers.get(key):
            return Verdict(clean=False, threat=headers[key][0])
    if "res-body" not in " ".join(headers.get("encapsulated", [])):
        raise ScanError("the scanner answered 200 without a verdict or a body")
    return None
