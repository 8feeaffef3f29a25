"""Uploads held at the broker until the malware scanner has judged them.

Each uploaded file is spooled to a 0600 temporary file under the data directory
(``DATA/scan-spool``), never to the device, then scanned over ICAP. Only a clean file (or,
with ``on_error = "allow"``, one the scanner could not judge) is then written to the device by
the relay; the spool file is removed either way. A file the spool cannot take is refused
(never passed on unscanned).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from broker.config import ScanSection
from broker.domain.durations import parse_duration
from broker.domain.file_rules import format_size
from broker.scan.icap import ICAPClient, ScanError


def _shown(name: str) -> str:
    return repr(name if len(name) <= 200 else name[:200] + "...")


class Held:
    """One uploaded file at the broker. A spool that takes no more (the data directory full,
    read-only, failing) marks it ``failed``: it takes nothing more, and its judgement is a
    refusal, so the file never reaches the device."""

    def __init__(self, directory: Path, name: str) -> None:
        self.fd, self.path, self.name = -1, directory / "upload-unmade", name
        self.size = 0
        self.start: int | None = None  # the lowest offset written (a resumed upload's start)
        self.failed: str | None = None
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, path = tempfile.mkstemp(prefix="upload-", dir=directory)  # mode 0600
        except OSError as exc:
            self.failed = exc.strerror or str(exc)
            return
        self.fd, self.path = fd, Path(path)

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        if self.failed is None:
            try:
                os.pwrite(self.fd, data, offset)
            except OSError as exc:
                self.failed = exc.strerror or str(exc)
                self.discard()  # what it held is of no use now
        self.size = max(self.size, offset + len(data))
        self.start = offset if self.start is None else min(self.start, offset)

    @property
    def refusal(self) -> str | None:
        """The one line refusing a file the spool could not take (None while it holds it)."""
        if self.failed is None:
            return None
        return (f"broker: {_shown(self.name)} refused: the broker could not hold it for the"
                f" malware scan ({self.failed})")

    def append(self, data: bytes | memoryview) -> None:
        self.write_at(self.size, data)

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Judgement:
    allowed: bool
    message: str | None  # the refusal (or the unscanned pass) in one line
    event: str | None  # the audit event: file.infected | file.scan_failed


class Scanner:
    """The ``[scan]`` settings in use: hold uploads, then judge them."""

    def __init__(self, client: ICAPClient, *, on_error: str, max_bytes: int,
                 spool: Path) -> None:
        self.client, self.on_error, self.max_bytes, self.spool = client, on_error, max_bytes, spool

    def hold(self, name: str) -> Held:
        return Held(self.spool, name)

    async def judge(self, held: Held) -> Judgement:
        shown = _shown(held.name)
        if held.refusal is not None:  # whatever [scan] on_error says: the broker lacks it
            return Judgement(False, held.refusal, "file.scan_failed")
        try:
            if held.size > self.max_bytes:
                raise ScanError(f"the file is larger than the scan limit of"
                                f" {format_size(self.max_bytes)}")
            verdict = await self.client.scan(held.path, held.name.rsplit("/", 1)[-1])
        except ScanError as exc:
            if self.on_error == "allow":
                return Judgement(True, f"broker: {shown} passed unscanned: {exc}",
                                 "file.scan_failed")
            return Judgement(False, f"broker: {shown} refused: it could not be scanned for"
                             f" malware: {exc}", "file.scan_failed")
        if verdict.clean:
            return Judgement(True, None, None)
        return Judgement(False, f"broker: {shown} refused: the malware scanner found"
                         f" {verdict.threat}", "file.infected")


def scanner_from(settings: ScanSection, data_dir: Path) -> Scanner | None:
    """The scanner of the ``[scan]`` settings; None when scanning is off."""
    if not settings.icap_url:
        return None
    client = ICAPClient(settings.icap_url,
                        timeout=parse_duration(settings.timeout).total_seconds())
    return Scanner(client, on_error=settings.on_error, max_bytes=settings.max_bytes,
                   spool=data_dir / "scan-spool")
