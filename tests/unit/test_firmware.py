"""Firmware drift: normalising and comparing probe output (pure), the trust record's service
(readings, drift, accepting it, the history, bad probes), the approvers' e-mail through a
real aiosmtpd server, and the device page's Accept button (admin only, CSRF-checked)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import col, select

from broker.approvals.notify import Notifier
from broker.config import load_config
from broker.domain.firmware import OUTPUT_CAP, Reading, Verdict, check_probe, compare, normalise
from broker.domain.text import TextError
from broker.errors import BadText, Conflict, NotFound, Refused
from broker.services import firmware
from broker.services.context import Context
from broker.services.directory import Directory
from broker.store.models import AuditEvent, Device
from broker.testing import FakeClock
from tests.approval_kit import Mailbox, body_text, set_config, smtp_server, staff_and_device
from tests.unit.staff_kit import add_staff, csrf_of, sign_in
from tests.web_kit import portal


# -- the pure part --------------------------------------------------------------------------
def test_normalise_unifies_line_ends_and_drops_surrounding_blank_space() -> None:
    assert normalise(b"2.4.1\n") == "2.4.1"
    assert normalise(b"\r\n  \nPumpOS 2.4.1   \r\nbuild 77\t\r\n\n") == "PumpOS 2.4.1\nbuild 77"
    assert normalise(b"  indented\n") == "  indented"
    assert normalise(b"a\rb") == "a\nb"
    assert normalise(b"") == ""


def test_normalise_escapes_control_characters_and_bad_utf8() -> None:
    assert normalise(b"v1\x1b[31m red") == "v1\\x1b[31m red"
    assert normalise(b"v\xff1") == "v\ufffd1"
    assert normalise("v\u202e1".encode()) == "v\\u202e1"


@pytest.mark.parametrize("probe", ["cat /etc/firmware-version", "  uname -r  ",
                                   "dpkg-query -W -f='${Version}' pump-fw"])
def test_good_probes_are_kept_as_given(probe: str) -> None:
    assert check_probe(probe) == probe.strip()


@pytest.mark.parametrize(("probe", "message"), [
    ("", "probe: must not be empty"),
    ("   ", "probe: must not be empty"),
    ("cat /etc/fw\nreboot", "line feed"),
    ("cat /etc/fw\x1b", "ESC"),
    ("cat \u202e/etc/fw", "bidirectional override"),
    ("x" * 501, "longer than 500 characters"),
])
def test_bad_probes_say_what_is_wrong(probe: str, message: str) -> None:
    with pytest.raises(TextError) as caught:
        check_probe(probe)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_compare_against_the_trust_record() -> None:
    ok = Reading.ok(b"2.4.1\n")
    assert compare(None, None, ok) is Verdict.FIRST
    assert compare("2.4.1", None, ok) is Verdict.SAME
    assert compare(" 2.4.1 ", None, ok) is Verdict.SAME  # a typed baseline, spaces around
    assert compare("2.4.0", None, ok) is Verdict.CHANGED
    assert compare("2.4.0", "2.4.1", ok) is Verdict.SAME      # already observed, still so
    assert compare("2.4.0", "2.5.0", ok) is Verdict.CHANGED   # changed again
    assert compare("2.4.1", "2.5.0", ok) is Verdict.RESTORED  # back to the baseline
    assert compare("2.4.1", None, Reading.failed("exit status 1")) is Verdict.FAILED


def test_a_reading_has_either_a_value_or_an_error() -> None:
    assert Reading.failed("exit status 1\n(no such file)").text == \
        "probe failed: exit status 1 (no such file)"
    assert Reading.failed("x" * 500).error == "x" * 200
    assert Reading.failed("").error == "unknown error"
    assert Reading.ok(b"v2\n").text == "v2"
    with pytest.raises(ValueError):
        Reading()
    with pytest.raises(ValueError):
        Reading(value="a", error="b")
    assert OUTPUT_CAP == 4096


# -- the service ----------------------------------------------------------------------------
async def open_ctx(broker_dir: Path) -> Context:
    return Context.open(load_config(broker_dir / "broker.toml"), clock=FakeClock())


async def audit_rows(ctx: Context, prefix: str) -> list[tuple[str, str, str | None, dict]]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).where(col(AuditEvent.kind).startswith(prefix))
                              .order_by(col(AuditEvent.seq)))).all()
    return [(r.kind, r.actor, r.subject, json.loads(r.data)) for r in rows]


async def device_named(ctx: Context, name: str) -> Device:
    return await Directory(ctx, "test").device(name)


async def add_probe_device(ctx: Context, name: str = "pump1", firmware_: str | None = None,
                           probe: str = "cat /etc/firmware-version") -> Device:
    return await Directory(ctx, "cli:admin").add_device(Device(
        name=name, host="127.0.0.1", port=22, login_user="svc", firmware=firmware_,
        probe=probe), "password", b"pw")


async def test_readings_record_drift_until_an_admin_accepts_it(broker_dir: Path) -> None:
    ctx = await open_ctx(broker_dir)
    try:
        device = await add_probe_device(ctx)
        assert device.probe == "cat /etc/firmware-version"
        (added,) = await audit_rows(ctx, "device.added")
        assert added[3]["probe"] == "cat /etc/firmware-version"
        ident = device.id or 0
        # no baseline yet: the first reading becomes it
        first = await firmware.record_reading(ctx, ident, "s1", "before", Reading.ok(b"1.0\n"))
        assert first.verdict is Verdict.FIRST
        assert (await device_named(ctx, "pump1")).firmware == "1.0"
        same = await firmware.record_reading(ctx, ident, "s1", "after", Reading.ok(b"1.0"))
        assert same.verdict is Verdict.SAME
        # the vendor updates the firmware during session s2
        await firmware.record_reading(ctx, ident, "s2", "before", Reading.ok(b"1.0"))
        changed = await firmware.record_reading(ctx, ident, "s2", "after", Reading.ok(b"2.0"))
        assert (changed.verdict, changed.before, changed.after) == (Verdict.CHANGED, "1.0",
                                                                    "2.0")
        row = await device_named(ctx, "pump1")
        assert (row.firmware, row.firmware_observed, row.firmware_observed_session) == (
            "1.0", "2.0", "s2")
        events = await audit_rows(ctx, "device.firmware")
        assert [e[0] for e in events] == ["device.firmware_recorded", "device.firmware_changed"]
        assert events[1][1:] == ("broker", "pump1", {
            "session_id": "s2", "phase": "after", "before": "1.0", "after": "2.0",
            "baseline": "1.0"})
        # the same new value again is no new change; the drift stays until accepted
        again = await firmware.record_reading(ctx, ident, "s3", "before", Reading.ok(b"2.0"))
        assert again.verdict is Verdict.SAME
        assert (await device_named(ctx, "pump1")).firmware_observed == "2.0"
        # accept: what the admin saw must still be what the device reported
        with pytest.raises(Conflict, match="reported another firmware since"):
            await firmware.accept(ctx, "staff:adm", "pump1", seen=firmware.fingerprint("1.5"))
        accepted = await firmware.accept(ctx, "cli:admin", "pump1",
                                         seen=firmware.fingerprint("2.0"))
        assert (accepted.firmware, accepted.firmware_observed) == ("2.0", None)
        (event,) = await audit_rows(ctx, "device.firmware_accepted")
        assert event[1:] == ("cli:admin", "pump1", {"previous": "1.0", "accepted": "2.0"})
        with pytest.raises(Conflict, match="no firmware change to accept"):
            await firmware.accept(ctx, "cli:admin", "pump1")
        with pytest.raises(NotFound):
            await firmware.accept(ctx, "cli:admin", "nope")
        history = await firmware.history(ctx, "pump1")
        assert [(h.phase, h.text, h.changed) for h in history] == [
            ("accepted", "2.0", False), ("before", "2.0", False), ("after", "2.0", True),
            ("before", "1.0", False), ("after", "1.0", False), ("before", "1.0", False)]
        assert history[0].actor == "cli:admin"
    finally:
        await ctx.close()


async def test_back_to_the_baseline_clears_the_drift_and_failures_are_audited(
        broker_dir: Path) -> None:
    ctx = await open_ctx(broker_dir)
    try:
        ident = (await add_probe_device(ctx, firmware_="1.0")).id or 0
        await firmware.record_reading(ctx, ident, "s1", "after", Reading.ok(b"1.1"))
        restored = await firmware.record_reading(ctx, ident, "s2", "before",
                                                 Reading.ok(b"1.0\n"))
        assert restored.verdict is Verdict.RESTORED
        assert (await device_named(ctx, "pump1")).firmware_observed is None
        changes = await audit_rows(ctx, "device.firmware_changed")
        assert changes[-1][3]["restored"] is True and changes[-1][3]["after"] == "1.0"
        failed = await firmware.record_reading(ctx, ident, "s3", "after",
                                               Reading.failed("no answer within 10 s"),
                                               internal="127.0.0.1:22: timeout")
        assert failed.verdict is Verdict.FAILED
        row = await device_named(ctx, "pump1")
        assert (row.firmware, row.firmware_observed) == ("1.0", None)  # a failure changes none
        (event,) = await audit_rows(ctx, "device.probe_failed")
        assert event[1:] == ("broker", "pump1", {
            "session_id": "s3", "phase": "after", "reason": "no answer within 10 s",
            "internal": "127.0.0.1:22: timeout"})
        assert (await firmware.history(ctx, "pump1"))[0].text == \
            "probe failed: no answer within 10 s"
    finally:
        await ctx.close()


async def test_bad_probes_are_refused_and_audited(broker_dir: Path) -> None:
    ctx = await open_ctx(broker_dir)
    try:
        with pytest.raises(BadText, match=r"^--probe: contains a control character U\+000A"):
            await add_probe_device(ctx, probe="cat /etc/fw\nreboot")
        with pytest.raises(BadText, match=r"^--probe: must not be empty"):
            await add_probe_device(ctx, probe="  ")
        assert await Directory(ctx, "t").devices() == []  # nothing half-added
        refused = await audit_rows(ctx, "input.refused")
        assert [(e[2], e[3]["field"]) for e in refused] == [("pump1", "probe"),
                                                            ("pump1", "probe")]
        await add_probe_device(ctx)
        with pytest.raises(BadText, match="longer than 500"):
            await firmware.set_probe(ctx, "cli:admin", "pump1", "x" * 501)
        row = await firmware.set_probe(ctx, "cli:admin", "pump1", "uname -r")
        assert row.probe == "uname -r"
        assert (await firmware.set_probe(ctx, "cli:admin", "pump1", None)).probe is None
        sets = await audit_rows(ctx, "device.probe_set")
        assert [e[3] for e in sets] == [
            {"probe": "uname -r", "previous": "cat /etc/firmware-version"},
            {"probe": None, "previous": "uname -r"}]
        await Directory(ctx, "cli:admin").set_device_state("pump1", "retired")
        with pytest.raises(Refused, match="retired"):
            await firmware.set_probe(ctx, "cli:admin", "pump1", "uname -r")
    finally:
        await ctx.close()


# -- the approvers' e-mail --------------------------------------------------------------------
@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


async def test_a_firmware_change_mails_every_approver(broker_dir: Path,
                                                      smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    set_config(broker_dir, "notify", smtp_host="127.0.0.1", smtp_port=port)
    ctx = await open_ctx(broker_dir)
    notifier = Notifier(ctx)
    try:
        await staff_and_device(ctx)  # pump1, firmware 12.1.3; four approvers
        device = await device_named(ctx, "pump1")
        await firmware.record_reading(ctx, device.id or 0, "abc123", "after",
                                      Reading.ok(b"12.2.0\n"))
        await firmware.record_reading(ctx, device.id or 0, "abc124", "before",
                                      Reading.failed("exit status 1"))
        await notifier.plan_new_events()
        await notifier.deliver_due()
        to = sorted(str(m["To"]).split("<")[1].rstrip(">").lower() for m in mailbox.messages)
        assert to == ["alice@bd.example", "bob@hospital.example", "carol@hospital.example",
                      "dave@hospital.example"]  # a probe failure mails nobody
        message = mailbox.messages[0]
        assert message["Subject"] == "Firmware changed on pump1"
        text = body_text(message)
        assert "after session abc123" in text
        assert "Expected:  12.1.3" in text and "Reported:  12.2.0" in text
        assert "broker device firmware accept pump1" in text
        assert "/staff/devices/pump1" in text
    finally:
        await notifier.close()
        await ctx.close()


# -- the device page ------------------------------------------------------------------------
async def test_the_device_page_shows_drift_and_an_admin_accepts_it(broker_dir: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        device = await add_probe_device(ctx, firmware_="1.0")
        await firmware.record_reading(ctx, device.id or 0, "s1", "after",
                                      Reading.ok(b"1.1 <b>beta</b>\n"))
        for name, role in (("aud", "auditor"), ("adm", "admin")):
            await add_staff(ctx, name, role)
        await sign_in(client, ctx, "aud")
        listing = await (await client.get("/staff/devices")).text()
        assert 'id="drift-pump1"' in listing and "firmware changed, not accepted" in listing
        page = await (await client.get("/staff/devices/pump1")).text()
        assert 'id="firmware-drift"' in page and "not accepted yet" in page
        assert "1.1 &lt;b&gt;beta&lt;/b&gt;" in page and "<b>beta" not in page
        assert 'id="accept-firmware"' not in page  # an auditor sees it, cannot accept it
        denied = await client.post("/staff/devices/pump1/firmware/accept",
                                   data={"csrf": csrf_of(page), "observed": "0" * 64},
                                   allow_redirects=False)
        assert denied.status == 403
        client.session.cookie_jar.clear()
        await sign_in(client, ctx, "adm")
        page = await (await client.get("/staff/devices/pump1")).text()
        assert 'id="accept-firmware"' in page
        seen = firmware.fingerprint("1.1 <b>beta</b>")
        assert f'name="observed" value="{seen}"' in page
        no_csrf = await client.post("/staff/devices/pump1/firmware/accept",
                                    data={"observed": seen}, allow_redirects=False)
        assert no_csrf.status == 403
        bad = await client.post("/staff/devices/pump1/firmware/accept",
                                data={"csrf": csrf_of(page), "observed": "1.1"},
                                allow_redirects=False)
        assert bad.status == 400 and "observed:" in await bad.text()
        stale = await client.post("/staff/devices/pump1/firmware/accept",
                                  data={"csrf": csrf_of(page), "observed": "a" * 64},
                                  allow_redirects=False)
        assert stale.status == 409
        assert (await device_named(ctx, "pump1")).firmware == "1.0"
        done = await client.post("/staff/devices/pump1/firmware/accept",
                                 data={"csrf": csrf_of(page), "observed": seen},
                                 allow_redirects=False)
        assert done.status == 303
        assert done.headers["Location"] == "/staff/devices/pump1?done=firmware-accepted"
        row = await device_named(ctx, "pump1")
        assert (row.firmware, row.firmware_observed) == ("1.1 <b>beta</b>", None)
        (event,) = await audit_rows(ctx, "device.firmware_accepted")
        assert event[1] == "staff:adm"
        page = await (await client.get(done.headers["Location"])).text()
        assert 'id="firmware-accepted"' in page and 'id="firmware-drift"' not in page
        assert 'id="drift-pump1"' not in await (await client.get("/staff/devices")).text()
        assert (await client.post("/staff/devices/pump1/firmware/accept",
                                  data={"csrf": csrf_of(page), "observed": seen},
                                  allow_redirects=False)).status == 409
