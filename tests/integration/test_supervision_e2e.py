"""Supervised sessions end to end: a policy with ``supervision: required``; the technician's
real `ssh` (in a pseudo-terminal) is held until a hospital approver, signed in to the staff
portal in real headless Chromium, opens the Supervise page; the approver pauses input (what is
typed does not run), resumes it, leaves (input is held again), comes back and ends the
session. Each step is audited and marked in the recording."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser_kit import chromium, screenshot
from tests.integration.harness import BrokerProcess, SshdDevice, wait_for_port
from tests.integration.test_command_rules import Terminal

PASSWORD = "supervisor-password-long"
ID = uuid.uuid4().hex[:10]
POLICY = """\
policies:
  - name: supervised
    supervision: required
    forward_ports: [22]
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice
           ) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    (proc.root / "policies").mkdir(exist_ok=True)
    (proc.root / "policies" / "supervised.yaml").write_text(POLICY)
    proc.one_grant(sshd_device, "2h")
    proc.cli("staff", "add", "sue", "--role", "approver", "--approver", "approver",
             "--password-env", "STAFF_PW", env={"STAFF_PW": PASSWORD})
    proc.serve()
    wait_for_port(proc.http_port, proc.proc)
    yield proc
    proc.stop()


async def until(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise TimeoutError("condition never held")


def audit_kinds(proc: BrokerProcess) -> list[tuple[str, str]]:
    events = proc.cli_json("audit", "tail", "-n", "500")
    assert isinstance(events, list)
    return [(e["kind"], e["actor"]) for e in events]


def cast_markers(proc: BrokerProcess) -> list[str]:
    found = []
    for directory in proc.recordings():
        for path in directory.glob("term-*.cast"):
            for line in path.read_text().splitlines()[1:]:
                event = json.loads(line)
                if event[1] == "m":
                    found.append(event[2])
    return found


async def supervise(page: Any, base: str) -> None:
    await page.goto(f"{base}/staff/supervise")
    await page.click("td.row-actions a:text('Supervise')")
    await page.wait_for_url("**/staff/sessions/*/supervise")


@pytest.mark.timeout(300)  # a browser and a terminal, step by step, on a loaded CI host
async def test_a_supervised_session_waits_for_a_supervisor_who_pauses_resumes_and_ends_it(
        broker: BrokerProcess, tmp_path: Path) -> None:
    base = f"https://127.0.0.1:{broker.http_port}"
    early, paused, resumed, alone = (tmp_path / f"{name}-{ID}"
                                     for name in ("early", "paused", "resumed", "alone"))
    term = Terminal(broker.ssh_args("tech+dev", "tech", tty=True))
    try:
        await asyncio.to_thread(term.read_until, b"waiting up to")
        assert b"this session needs a hospital supervisor watching" in term.seen
        term.type(f"touch {early}\r".encode())  # typed while nobody watches: dropped
        async with chromium() as context:
            page = await context.new_page()  # type: ignore[attr-defined]
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            await page.goto(f"{base}/staff/")
            await page.fill("#name", "sue")
            await page.fill("#password", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{base}/staff/")
            await page.click("nav.staff-nav >> text=Supervise")
            assert "supervision required" in await page.inner_text("main")
            await supervise(page, base)
            screen = page.locator("#watch-player .ap-term")

            # the session goes on: the shell starts and what is typed runs
            await asyncio.to_thread(term.read_until, b"hospital supervisor sue is now watching")
            term.settle()
            term.type(f"echo joined-$((6*7))-{ID}\r".encode())
            await asyncio.to_thread(term.read_until, f"joined-42-{ID}".encode())
            await screen.filter(has_text=f"joined-42-{ID}").wait_for(timeout=20_000)
            await screenshot(page, "supervise-joined")

            # pause: input is dropped, and the technician is told
            await page.click("#pause")
            await page.wait_for_url("**/supervise?done=paused")
            assert "paused" in await page.inner_text("#supervise-state")
            term.type(f"touch {paused}\r".encode())
            await asyncio.to_thread(term.read_until, b"input is paused by hospital supervisor sue")

            # resume: input flows again
            await page.click("#resume")
            await page.wait_for_url("**/supervise?done=resumed")
            term.type(f"touch {resumed}\r".encode())
            await until(resumed.exists)
            await screenshot(page, "supervise-resumed")

            # the supervisor leaves: input is held until someone joins again
            await page.close()
            await asyncio.to_thread(term.read_until, b"supervisor sue stopped watching")
            term.type(f"touch {alone}\r".encode())
            await asyncio.to_thread(term.read_until, b"what you type is dropped until one joins")

            # back, then End: the technician's ssh exits with the reason
            page = await context.new_page()  # type: ignore[attr-defined]
            await supervise(page, base)
            await until(lambda: term.settle(0.2, 0.5) or
                        term.seen.count(b"sue is now watching this session") >= 2)
            await page.click("#end")
            await page.wait_for_url("**/staff/supervise?ended=*")
            code = await asyncio.to_thread(term.proc.wait, 15)
            term.settle(0.3, 3)  # what the terminal still holds
            assert problems == [], problems
    finally:
        term.close()
    assert code == 1
    assert b"hospital supervisor sue ended this session" in term.seen
    await asyncio.sleep(1)
    assert not early.exists() and not paused.exists() and not alone.exists()
    assert resumed.exists()
    kinds = audit_kinds(broker)
    for kind in ("supervision.joined", "supervision.paused", "supervision.resumed",
                 "supervision.left", "supervision.ended"):
        assert (kind, "staff:sue") in kinds, kind
    assert ("session.supervision_wanted", "technician:tech") in kinds
    marks = cast_markers(broker)
    for label in ("supervision.paused: sue", "supervision.resumed: sue",
                  "supervision.left: sue", "supervision.ended: sue"):
        assert label in marks, marks


def test_file_transfers_and_forwards_are_refused_in_a_supervised_session(
        broker: BrokerProcess, tmp_path: Path) -> None:
    source = tmp_path / "f.txt"
    source.write_text("x")
    options = ["-i", str(broker.tech_keys["tech"]), "-o", "IdentitiesOnly=yes",
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes"]
    scp = subprocess.run(["scp", "-P", str(broker.port), *options, "-O", str(source),
                          "tech+dev@127.0.0.1:/tmp/"], capture_output=True, text=True,
                         timeout=60)
    assert scp.returncode != 0
    assert "file transfers are not available in a supervised session" in scp.stderr
    sftp = subprocess.run(["sftp", "-P", str(broker.port), *options, "-b", "-",
                           "tech+dev@127.0.0.1"], input="ls\n", capture_output=True,
                          text=True, timeout=60)
    assert sftp.returncode != 0
    forward = subprocess.run(["ssh", "-p", str(broker.port), *options, "-W", "localhost:22",
                              "tech+dev@127.0.0.1"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60)
    assert forward.returncode != 0
    assert "port forwarding is not available in a supervised session" in forward.stderr
    events = broker.cli_json("audit", "tail", "-n", "500")
    assert isinstance(events, list)
    refusals = [str(e["data"]) for e in events
                if e["kind"] in ("session.refused", "channel.refused")]
    assert sum("supervis" in r for r in refusals) >= 3, refusals
