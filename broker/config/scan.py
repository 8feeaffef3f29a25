"""``[scan]``: malware scanning of uploads over ICAP."""

from __future__ import annotations

from pydantic import (
    field_validator,
)

from broker.config._base import _duration_text, _Section, _url_parts
from broker.domain.file_rules import parse_size


class ScanSection(_Section):
    """Malware scanning of uploads over ICAP (``broker/scan/icap.py``); empty icap_url = off."""

    icap_url: str = ""  # icap://HOST[:PORT]/SERVICE, e.g. icap://127.0.0.1:1344/srvclamav
    on_error: str = "refuse"  # the scanner unreachable or failing: refuse | allow the file
    timeout: str = "60s"  # for one file's scan, from connecting to the verdict
    max_size: str = "100M"  # larger files cannot be scanned: on_error decides

    _timeout = field_validator("timeout")(
        classmethod(lambda cls, v: _duration_text(v, at_most="1h", at_least="1s")))

    @field_validator("icap_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value:
            return value
        parts, port = _url_parts(value)
        if (parts.scheme != "icap" or not parts.hostname or port == -1
                or parts.path.strip("/") == "" or parts.query or parts.fragment):
            raise ValueError(f"expected icap://HOST[:PORT]/SERVICE, got {value!r}")
        return value

    @field_validator("on_error")
    @classmethod
    def _on_error(cls, value: str) -> str:
        if value not in ("refuse", "allow"):
            raise ValueError(f"expected refuse or allow, got {value!r}")
        return value

    @field_validator("max_size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    @property
    def max_bytes(self) -> int:
        return parse_size(self.max_size)
