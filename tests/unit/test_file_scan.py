"""Upload scanning: the ``[scan]`` settings and the ICAP client's handling of answers a real
scanner gives rarely (the verdicts of a real c-icap + ClamAV are tested end to end in
tests/security/test_file_scan.py). Misbehaving scanners are small asyncio servers here: no
real scanner can be made to send garbage or hang on purpose."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from textwrap import dedent

import pytest

from broker.config import load_config
from broker.errors import ConfigError
from broker.scan.hold import Held, Scanner, scanner_from
from broker.scan.icap import ICAPClient, ScanError, Verdict, _verdict
from tests.integration.harness import free_port


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def test_scan_settings_default_off(tmp_path):
    settings = load_config(config(tmp_path, ""), environ={}).settings.scan
    assert settings.icap_url == "" and settings.on_error == "refuse"
    assert scanner_from(settings, tmp_path) is None


def test_scan_settings(tmp_path):
    loaded = load_config(config(tmp_path, """
        [scan]
        icap_url = "icap://scanner.example:1344/srvclamav"
        on_error = "allow"
        timeout = "2m"
        max_size = "1G"
    """), environ={})
    scanner = scanner_from(loaded.settings.scan, loaded.data_dir)
    assert scanner is not None and scanner.on_error == "allow"
    assert scanner.max_bytes == 2**30 and scanner.client.timeout == 120
    assert (scanner.client.host, scanner.client.port) == ("scanner.example", 1344)
    assert scanner.spool == loaded.data_dir / "scan-spool"


@pytest.mark.parametrize(("text", "fragments"), [
    ('icap_url = "http://x/srv"', ["[scan] icap_url", "icap://HOST[:PORT]/SERVICE"]),
    ('icap_url = "icap://host:1344"', ["[scan] icap_url", "SERVICE"]),
    ('icap_url = "icap://host:99999/srv"', ["[scan] icap_url"]),
    ('on_error = "ignore"', ["[scan] on_error", "refuse or allow", "'ignore'"]),
    ('timeout = "forever"', ["[scan] timeout"]),
    ('max_size = "lots"', ["[scan] max_size", "'lots' is not a size"]),
    ('icap_ulr = "icap://h/s"', ["[scan]", "icap_ulr"]),
])
def test_bad_scan_settings_are_one_line(tmp_path, text, fragments):
    path = config(tmp_path, f"[scan]\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_bad_scan_override_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="BROKER_SCAN_ON_ERROR"):
        load_config(config(tmp_path, ""), environ={"BROKER_SCAN_ON_ERROR": "maybe"})


# -- verdicts ------------------------------------------------------------------------------

def test_verdict_headers():
    assert _verdict(b"ICAP/1.0 204 No Content\r\nISTag: x\r\n\r\n") == Verdict(True)
    infected = (b"ICAP/1.0 200 OK\r\nX-Infection-Found: Type=0; Resolution=2;"
                b" Threat=Win.Test.EICAR_HDB-1;\r\n\r\n")
    assert _verdict(infected) == Verdict(False, "Win.Test.EICAR_HDB-1")
    violations = (b"ICAP/1.0 200 OK\r\nX-Violations-Found: 1\r\n\tupload.exe\r\n"
                  b"\tTrojan.Agent\r\n\t1\r\n\t0\r\nEncapsulated: null-body=0\r\n\r\n")
    assert _verdict(violations) == Verdict(False, "Trojan.Agent")
    assert _verdict(b"ICAP/1.0 200 OK\r\nX-Virus-ID: Bad.Thing\r\n\r\n") == \
        Verdict(False, "Bad.Thing")
    assert _verdict(b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=20\r\n\r\n") \
        is None  # the body is read: see the server tests below


@pytest.mark.parametrize(("head", "fragment"), [
    (b"HTTP/1.1 200 OK\r\n\r\n", "not ICAP"),
    (b"ICAP/1.0 500 Server Error\r\n\r\n", "ICAP/1.0 500 Server Error"),
    (b"ICAP/1.0 404 ICAP Service not found\r\n\r\n", "404"),
    (b"ICAP/1.0 200 OK\r\nEncapsulated: null-body=0\r\n\r\n", "without a verdict"),
])
def test_unusable_answers_are_scan_errors(head, fragment):
    with pytest.raises(ScanError, match=fragment):
        _verdict(head)


# -- misbehaving scanners ------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future[None] | None"]


async def serve(handler) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"icap://127.0.0.1:{port}/srv"
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = await reader.read(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(200_000))
    return path


async def scan_with(handler, upload: Path, timeout: float = 5) -> Verdict:  # type: ignore[no-untyped-def]
    async for url in serve(handler):
        return await ICAPClient(url, timeout=timeout).scan(upload, "file.bin")
    raise AssertionError


async def test_the_request_is_a_chunked_respmod(upload):
    seen: list[bytes] = []

    async def handler(reader, writer):
        seen.append(await read_request(reader))
        writer.write(b"ICAP/1.0 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    assert await scan_with(handler, upload) == Verdict(True)
    request = seen[0]
    assert request.startswith(b"RESPMOD icap://127.0.0.1:")
    assert b"Allow: 204\r\n" in request and b"res-body=" in request
    assert b"Content-Length: 200000\r\n" in request
    assert upload.read_bytes()[:1000] in request


async def test_a_returned_body_is_clean_when_whole_and_blocked_when_replaced(upload):
    async def whole(reader, writer):
        await read_request(reader)
        writer.write(b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def blocked(reader, writer):
        await read_request(reader)
        writer.write(b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=26\r\n\r\n"
                     b"HTTP/1.0 403 Forbidden\r\n\r\n4\r\ndeny\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def cut(reader, writer):
        await read_request(reader)
        writer.write(b"ICAP/1.0 200 OK\r\nEncapsulated: res-hdr=0, res-body=19\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\n\r\n100\r\nshort")
        await writer.drain()
        writer.close()

    assert await scan_with(whole, upload) == Verdict(True)
    assert await scan_with(blocked, upload) == Verdict(False, "blocked by the scanner (HTTP 403)")
    with pytest.raises(ScanError, match="cut the file off"):
        await scan_with(cut, upload)


async def test_a_scanner_that_hangs_or_hangs_up_is_a_scan_error(upload):
    async def silent(reader, writer):
        await read_request(reader)
        await asyncio.sleep(10)

    async def hangs_up(reader, writer):
        await read_request(reader)
        writer.close()

    with pytest.raises(ScanError, match=r"did not answer within 0\.5s"):
        await scan_with(silent, upload, timeout=0.5)
    with pytest.raises(ScanError, match="closed the connection without an answer"):
        await scan_with(hangs_up, upload)
    with pytest.raises(ScanError, match="unreachable"):
        await ICAPClient(f"icap://127.0.0.1:{free_port()}/srv", timeout=5).scan(upload)


# -- holding and judging -------------------------------------------------------------------

def test_held_files_are_private_and_removed(tmp_path):
    held = Held(tmp_path / "spool", "/var/log/x.bin")
    held.write_at(5, b"world")
    held.write_at(0, b"hello")
    assert held.read_at(0, 100) == b"helloworld" and held.size == 10 and held.start == 0
    assert stat.S_IMODE(held.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    held.discard()
    assert not held.path.exists()


async def test_a_hold_the_spool_cannot_take_is_refused_whatever_on_error_says(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    subprocess.run(["chattr", "+i", str(spool)], check=True)  # no new entry, even for root
    try:
        held = Held(spool, "/up/file.bin")
        held.append(b"never kept")
    finally:
        subprocess.run(["chattr", "-i", str(spool)], check=True)
    assert held.failed == "Operation not permitted" and held.size == 10
    down = ICAPClient(f"icap://127.0.0.1:{free_port()}/srv", timeout=2)
    allow = Scanner(down, on_error="allow", max_bytes=10**9, spool=spool)
    judged = await allow.judge(held)
    assert not judged.allowed and judged.event == "file.scan_failed"
    assert judged.message == ("broker: '/up/file.bin' refused: the broker could not hold it"
                              " for the malware scan (Operation not permitted)")
    held.discard()
    assert list(spool.iterdir()) == []


async def test_judgements(tmp_path, upload):
    down = ICAPClient(f"icap://127.0.0.1:{free_port()}/srv", timeout=2)
    refuse = Scanner(down, on_error="refuse", max_bytes=10**9, spool=tmp_path / "s")
    allow = Scanner(down, on_error="allow", max_bytes=10**9, spool=tmp_path / "s")
    held = refuse.hold("/up/file.bin")
    held.append(upload.read_bytes())
    refused = await refuse.judge(held)
    assert not refused.allowed and refused.event == "file.scan_failed"
    assert refused.message is not None and "could not be scanned" in refused.message
    passed = await allow.judge(held)
    assert passed.allowed and passed.message is not None and "unscanned" in passed.message
    small = Scanner(down, on_error="refuse", max_bytes=1000, spool=tmp_path / "s")
    too_big = await small.judge(held)
    assert not too_big.allowed and "larger than the scan limit of 1000" in str(too_big.message)
    held.discard()
