"""The relay pump between two streams, on memory streams."""

from __future__ import annotations

from broker.ssh.streams import pump
from broker.testing import MemoryReceiveStream, MemorySendStream


async def test_pump_moves_every_chunk_in_order_taps_it_and_forwards_eof() -> None:
    chunks = [b"status\r", b"\xe2\x82", b"\xac", b"x" * 100_000]
    source = MemoryReceiveStream(chunks, closed=True)
    sink = MemorySendStream()
    tapped: list[bytes] = []
    moved = await pump(source, sink, tapped.append)
    assert moved == sum(map(len, chunks))
    assert sink.data == b"".join(chunks)
    assert tapped == chunks
    assert sink.eof


async def test_pump_of_an_empty_stream_only_sends_eof() -> None:
    sink = MemorySendStream()
    assert await pump(MemoryReceiveStream(closed=True), sink) == 0
    assert sink.data == b"" and sink.eof
