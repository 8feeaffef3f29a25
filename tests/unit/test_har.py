"""The streaming HAR writer: valid HAR 1.2 at close, readable after a crash, big bodies in
files named by their SHA-256, WebSocket messages, and flushed while the session runs."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from haralyzer import HarParser

from broker.recording.flusher import Flusher
from broker.recording.har import HarWriter, body_fields, read_har


def entry(url: str, body: dict | None = None, mime: str = "text/plain") -> dict:
    content = {"size": body["size"] if body else 0,
               **(body_fields(body, mime) if body else {"mimeType": mime})}
    return {"startedDateTime": "2026-11-24T09:30:12.000Z", "time": 1.0,
            "request": {"method": "GET", "url": url, "httpVersion": "HTTP/1.1", "cookies": [],
                        "headers": [], "queryString": [], "headersSize": -1, "bodySize": 0},
            "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1",
                         "cookies": [], "headers": [], "content": content, "redirectURL": "",
                         "headersSize": -1, "bodySize": content["size"]},
            "cache": {}, "timings": {"send": 0, "wait": 1, "receive": 0}}


async def test_a_closed_har_is_valid_and_parses(tmp_path: Path) -> None:
    flusher = Flusher()
    writer = HarWriter(tmp_path / "web.har", body_limit=16, flusher=flusher, comment="t")
    small = writer.body()
    small.feed(b"hello ")
    small.feed(b"world")
    writer.add(entry("http://dev/small", small.finish()))
    binary = writer.body()
    binary.feed(b"\xff\x00\x01")
    writer.add(entry("http://dev/bin", binary.finish(), "application/octet-stream"))
    writer.close()
    await flusher.stop()
    document = json.loads((tmp_path / "web.har").read_text())
    assert document == read_har(tmp_path / "web.har")
    [page] = HarParser(document).pages  # entries without a page: haralyzer's "unknown" page
    assert [(e.url, e.status) for e in page.entries] == [("http://dev/small", 200),
                                                         ("http://dev/bin", 200)]
    assert page.entries[0].response.text == "hello world"
    entries = document["log"]["entries"]
    assert document["log"]["version"] == "1.2" and document["log"]["comment"] == "t"
    assert entries[0]["response"]["content"]["text"] == "hello world"
    content = entries[1]["response"]["content"]
    assert content["encoding"] == "base64" and base64.b64decode(content["text"]) == b"\xff\x00\x01"


async def test_bodies_over_the_limit_go_to_files_named_by_sha256(tmp_path: Path) -> None:
    writer = HarWriter(tmp_path / "web.har", body_limit=1000, flusher=Flusher())
    data = bytes(range(256)) * 20
    for limit_case in (data, data):  # the same body twice is stored once
        capture = writer.body()
        for start in range(0, len(limit_case), 300):
            capture.feed(limit_case[start:start + 300])
        writer.add(entry("http://dev/big", capture.finish(), "application/octet-stream"))
    writer.close()
    digest = hashlib.sha256(data).hexdigest()
    stored = tmp_path / "bodies" / digest
    assert stored.read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "bodies").iterdir()) == [digest]
    content = read_har(tmp_path / "web.har")["log"]["entries"][0]["response"]["content"]
    assert content == {"size": len(data), "mimeType": "application/octet-stream",
                       "_file": f"bodies/{digest}", "_sha256": digest}


async def test_a_crash_loses_at_most_the_unflushed_tail(tmp_path: Path) -> None:
    flusher = Flusher(interval=0.05)
    writer = HarWriter(tmp_path / "web.har", body_limit=10, flusher=flusher)
    writer.add(entry("http://dev/1"))
    writer.add(entry("http://dev/2"))
    assert await flusher.flush_now() == 1  # what the background task does every interval
    # the broker dies here: no close, and a half-written line at the end
    with (tmp_path / "web.har").open("a") as handle:
        handle.write('\n,{"startedDateTime": "2026-11-')
    document = read_har(tmp_path / "web.har")
    assert [e["request"]["url"] for e in document["log"]["entries"]] == ["http://dev/1",
                                                                         "http://dev/2"]
    assert document["log"]["_truncated"] is True
    assert len(HarParser(document).pages[0].entries) == 2


async def test_websocket_messages_are_logged_as_they_pass(tmp_path: Path) -> None:
    flusher = Flusher()
    writer = HarWriter(tmp_path / "web.har", body_limit=8, flusher=flusher)
    socket = writer.websocket()
    socket.message("send", "hi", writer.body_limit)
    socket.message("receive", b"\x00\x01", writer.body_limit)
    socket.message("receive", "a much longer text", writer.body_limit)
    await flusher.flush_now()
    lines = [json.loads(line) for line in socket.path.read_text().splitlines()]
    assert [(m["type"], m["opcode"]) for m in lines] == [("send", 1), ("receive", 2),
                                                         ("receive", 1)]
    assert lines[2]["data"] == "a much l" and lines[2]["_truncated"] is True
    assert lines[2]["_sha256"] == hashlib.sha256(b"a much longer text").hexdigest()
    assert socket.messages == lines
    socket.close()
    writer.close()
