"""Firmware drift: the device's probe command, its output, and how a reading compares with
the trust record.

A device may name a read-only *probe* (``cat /etc/firmware-version``). The broker runs it on
the device before and after each session; each run is a :class:`Reading`. The trust record
keeps the accepted *baseline* (the device's ``firmware``) and, until an admin accepts it, the
last *observed* value that differs from it. Pure logic, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from broker.domain.text import TextError, check_text, visible

PROBE_LIMIT = 500        # characters of a probe command
OUTPUT_CAP = 4096        # bytes of probe output the broker reads
PROBE_TIMEOUT = 10.0     # seconds a probe may run (and, after a session, to log in first)
ERROR_LIMIT = 200        # characters of a failure's reason kept
FAILED_PREFIX = "probe failed: "


def check_probe(text: str) -> str:
    """The probe command as it will be stored (surrounding spaces removed), or
    :class:`TextError` naming ``probe``: non-empty, one printable line, at most
    :data:`PROBE_LIMIT` characters."""
    return check_text("probe", text, PROBE_LIMIT, required=True)


def normalise(output: bytes) -> str:
    """A probe's output as the trust record keeps and compares it: UTF-8 (undecodable bytes
    replaced), line ends unified, trailing spaces of each line and blank lines around the
    text dropped, and control characters written as visible escapes (``\\x1b``)."""
    text = output.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    lines = [visible(line.rstrip()) for line in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


@dataclass(frozen=True)
class Reading:
    """One run of the probe: its normalised output, or why there is none."""

    value: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.error is None):
            raise ValueError("a reading has either a value or an error")

    @classmethod
    def ok(cls, output: bytes) -> Reading:
        return cls(value=normalise(output))

    @classmethod
    def failed(cls, reason: str) -> Reading:
        reason = visible(" ".join(reason.split()))[:ERROR_LIMIT] or "unknown error"
        return cls(error=reason)

    @property
    def text(self) -> str:
        """What the session row and the recording say: the output, or ``probe failed: ...``."""
        return self.value if self.value is not None else f"{FAILED_PREFIX}{self.error}"


class Verdict(enum.Enum):
    FIRST = "first"        # no baseline yet: this value becomes it (trust on first use)
    SAME = "same"          # as expected: nothing to do
    CHANGED = "changed"    # differs from what the trust record expects: drift, to accept
    RESTORED = "restored"  # back to the accepted baseline: the pending drift is gone
    FAILED = "failed"      # no output to compare


def expected(baseline: str | None, observed: str | None) -> str | None:
    """What the next reading should say: the last observed value while a change waits for
    acceptance, else the baseline."""
    return observed if observed is not None else baseline


def same(a: str, b: str) -> bool:
    """Equal after normalisation, spaces around the whole text aside (a baseline typed with
    ``--firmware`` has no trailing newline; a file's content usually does)."""
    return normalise(a.encode()).strip() == normalise(b.encode()).strip()


def compare(baseline: str | None, observed: str | None, reading: Reading) -> Verdict:
    if reading.value is None:
        return Verdict.FAILED
    if baseline is None and observed is None:
        return Verdict.FIRST
    if observed is not None and baseline is not None and same(reading.value, baseline):
        return Verdict.RESTORED
    reference = expected(baseline, observed)
    assert reference is not None
    return Verdict.SAME if same(reading.value, reference) else Verdict.CHANGED


def probe_error(exc: TextError) -> str:
    """The one line for a refused ``--probe``."""
    return f"--probe: {exc.detail}"
