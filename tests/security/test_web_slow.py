"""Slow HTTP clients cannot hold connections: on both listeners (portal and device origin,
real TLS as ``broker serve`` runs them) a TLS handshake that never finishes and a request
head that never finishes are cut at ``[http] handshake_timeout`` / ``head_timeout``."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest

from broker.aio import within
from tests.security.web_origin_kit import both_listeners

LIMIT = 1.0  # the test's short limits ("1s"); the default is 10s
SLACK = 2.5  # the broker must close within LIMIT + this


async def closed_after(reader: asyncio.StreamReader) -> float:
    """Seconds until the broker closes the connection (EOF or reset)."""
    started = time.monotonic()
    try:
        while await within(LIMIT + SLACK + 5, reader.read(1024)):
            pass
    except (ConnectionError, ssl.SSLError):
        pass
    return time.monotonic() - started


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.mark.parametrize("listener", ["portal", "devices"])
async def test_slow_clients_are_cut(broker_dir: Path, listener: str) -> None:
    async with both_listeners(broker_dir, head="1s", handshake="1s") as broker:
        port = broker.portal_port if listener == "portal" else broker.devices_port
        # 1. TCP open, nothing sent: the TLS handshake never starts
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert LIMIT - 0.2 <= await closed_after(reader) <= LIMIT + SLACK
        writer.close()
        # 2. half a TLS record (the start of a ClientHello), then silence
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x16\x03\x01\x02\x00\x01")
        await writer.drain()
        assert LIMIT - 0.2 <= await closed_after(reader) <= LIMIT + SLACK
        writer.close()
        # 3. TLS done, half a request head, then silence
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls())
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: broker.test\r\nX-Slow: ")
        await writer.drain()
        assert LIMIT - 0.2 <= await closed_after(reader) <= LIMIT + SLACK
        writer.close()
        # 4. TLS done, nothing at all
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls())
        assert await closed_after(reader) <= LIMIT + SLACK
        writer.close()
        # a prompt client is served as before (and its kept-alive idle connection cut too)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls())
        path = "/healthz" if listener == "portal" else "/w/_broker/broker.css"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: broker.test\r\n\r\n".encode())
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        assert await closed_after(reader) <= LIMIT + SLACK
        writer.close()
