"""The Watch view's stream: following a growing .cast (reset, then new events, partial lines
held back), and the SSE endpoint end to end in-process until the session ends."""

from __future__ import annotations

import json
import os
from pathlib import Path

from aiohttp import ClientResponse

from broker.aio import within
from broker.http.staff.watch import CastTail
from broker.services.sessions import close_session
from tests.unit.staff_kit import add_staff, live_session, recording, sign_in, world
from tests.web_kit import portal

HEADER = {"version": 2, "width": 100, "height": 30, "timestamp": 0}


def cast_line(*event: object) -> bytes:
    return json.dumps(list(event)).encode() + b"\n"


def test_tail_sends_a_reset_with_earlier_output_then_each_new_event(tmp_path: Path) -> None:
    cast = tmp_path / "term-0.cast"
    cast.write_bytes(json.dumps(HEADER).encode() + b"\n" + cast_line(0.1, "o", "$ ")
                     + cast_line(0.2, "i", "secret-typed") + cast_line(0.3, "o", "ls\r\n"))
    tail = CastTail(tmp_path)
    (reset,) = tail.poll()
    assert reset == {"cols": 100, "rows": 30, "time": 0.3, "init": "$ ls\r\n"}
    assert tail.poll() == []
    with cast.open("ab") as handle:
        handle.write(cast_line(0.5, "o", "file-a\r\n") + b'[0.6, "o", "fi')  # half written
    assert tail.poll() == [[0.5, "o", "file-a\r\n"]]
    with cast.open("ab") as handle:
        handle.write(b'le-b"]\n' + cast_line(0.7, "i", "x") + cast_line(0.8, "r", "120x40"))
    assert tail.poll() == [[0.6, "o", "file-b"], [0.8, "r", "120x40"]]  # input never sent


def test_tail_waits_for_the_header_and_follows_a_newer_terminal(tmp_path: Path) -> None:
    tail = CastTail(tmp_path / "not-yet")
    assert tail.poll() == []
    tail = CastTail(tmp_path)
    first = tmp_path / "term-0.cast"
    first.write_bytes(b'{"version": 2, "wid')
    assert tail.poll() == []
    first.write_bytes(json.dumps(HEADER).encode() + b"\n" + cast_line(1.0, "o", "one"))
    assert tail.poll()[0]["init"] == "one"  # type: ignore[index]
    second = tmp_path / "term-1.cast"
    second.write_bytes(json.dumps({**HEADER, "width": 80}).encode() + b"\n"
                       + cast_line(0.1, "o", "two"))
    os.utime(second, (first.stat().st_mtime + 5, first.stat().st_mtime + 5))
    (reset,) = tail.poll()
    assert reset == {"cols": 80, "rows": 30, "time": 0.1, "init": "two"}


async def read_event(response: ClientResponse) -> tuple[str, object]:
    name, data = "message", None
    while True:
        line = (await within(10, response.content.readline())).decode()
        if line.startswith("event: "):
            name = line[7:].strip()
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "\n" and data is not None:
            return name, data


async def test_the_stream_follows_a_live_session_until_it_ends(broker_dir: Path,
                                                               ssh_pubkey: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        ids = await world(ctx, ssh_pubkey)
        path = await recording(ctx, "w1", "before-watching", live=True)
        await live_session(ctx, "w1", ids["grant"], path.name)
        await add_staff(ctx, "appr", "approver", "alice")
        await add_staff(ctx, "aud", "auditor")
        await sign_in(client, ctx, "appr")
        assert (await client.get("/staff/sessions/w1/stream")).status == 403
        client.session.cookie_jar.clear()
        await sign_in(client, ctx, "aud")
        page = await client.get("/staff/sessions/w1/watch")
        assert 'data-stream="/staff/sessions/w1/stream"' in await page.text()
        assert "'wasm-unsafe-eval'" in page.headers["Content-Security-Policy"]
        stream = await client.get("/staff/sessions/w1/stream")
        assert stream.headers["Content-Type"] == "text/event-stream"
        name, reset = await read_event(stream)
        assert name == "message" and isinstance(reset, dict)
        assert "before-watching" in reset["init"] and reset["cols"] == 80
        with (path / "term-0.cast").open("ab") as handle:
            handle.write(cast_line(9.5, "o", "typed-while-watching\r\n"))
        assert await read_event(stream) == ("message", [9.5, "o", "typed-while-watching\r\n"])
        await close_session(ctx, "w1", "client closed the session")
        assert (await read_event(stream))[0] == "done"
        stream.close()
        assert (await client.get("/staff/sessions/none/stream")).status == 404
