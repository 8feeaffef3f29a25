"""Approver groups read from a real OpenLDAP slapd at decision time (issue #20): through the
signed approval link (in-process portal), the CLI's ``request approve`` and ``ldap check``
(the real console script); membership removed in the directory is refused once the cache
window has passed; a directory that is down, or refuses the bind, fails closed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from broker.config import load_config
from broker.directory.ldap import Directory, user_filter
from broker.services.context import Context
from broker.services.directory import Directory as People
from broker.testing import FakeClock
from tests.approval_kit import events, file_request, link_for, request_state, staff_and_device
from tests.conftest import Cli
from tests.ldap_kit import (
    GROUPS,
    PEOPLE,
    READER_DN,
    READER_PASSWORD,
    Slapd,
    group_dn,
    user_dn,
)
from tests.unit.staff_kit import csrf_of
from tests.web_kit import portal

PASSWORD_ENV = "TEST_LDAP_BIND_PASSWORD"
BIOMED_ONLY = """\
policies:
  - name: pumps-biomed
    devices: {tags: [infusion]}
    max_duration: 4h
    approvals:
      - {count: 1, groups: [biomed]}
"""


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    """bob and erin in biomed, carol in security, frank in broker-admins (a staff role)."""
    server = Slapd(tmp_path / "slapd").start()
    for uid in ("bob", "carol", "dave", "erin", "frank"):
        server.add_user(uid, f"{uid}@hospital.example")
    server.add_group("biomed", "bob", "erin")
    server.add_group("security", "carol")
    server.add_group("broker-admins", "frank")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def bind_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, READER_PASSWORD)


def use_directory(broker_dir: Path, slapd: Slapd, **settings: object) -> None:
    values: dict[str, object] = {
        "url": slapd.url, "bind_dn": READER_DN, "bind_password_env": PASSWORD_ENV,
        "user_base": PEOPLE, "cache_seconds": 60, "timeout": "3s", **settings}
    lines = ["", "[ldap]", *(f"{k} = {json.dumps(v)}" for k, v in values.items()),
             "", "[ldap.groups]", f"biomed = [{json.dumps(group_dn('biomed'))}]",
             f"security = [{json.dumps(group_dn('security'))}]",
             "", "[ldap.roles]", f"admin = [{json.dumps(group_dn('broker-admins'))}]",
             f"approver = [{json.dumps(group_dn('biomed'))}]", ""]
    with (broker_dir / "broker.toml").open("a") as f:
        f.write("\n".join(lines))
    (broker_dir / "policies" / "pumps.yaml").write_text(BIOMED_ONLY)


def env() -> dict[str, str]:
    return {PASSWORD_ENV: READER_PASSWORD}


async def prepare(broker_dir: Path) -> int:
    """approval_kit's people (bob biomed, dave radiology, ... in the database) and a request."""
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    try:
        await staff_and_device(ctx)
        await People(ctx, "test").add_approver("erin", "erin@hospital.example", [])
        return await file_request(ctx)
    finally:
        await ctx.close()


async def audit_of(broker_dir: Path, kind: str) -> list[tuple[str, str | None, dict]]:
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    try:
        return await events(ctx, kind)
    finally:
        await ctx.close()


# -- the signed link, with the cache window on the broker's (fake) clock ----------------------
async def test_link_approval_reads_the_directory_and_a_removed_member_is_refused_after_the_cache(
        broker_dir: Path, slapd: Slapd) -> None:
    use_directory(broker_dir, slapd, cache_seconds=60)
    clock = FakeClock()
    async with portal(broker_dir, clock=clock) as (client, ctx):
        await staff_and_device(ctx)
        await People(ctx, "test").add_approver("erin", "erin@hospital.example", [])
        first, second = await file_request(ctx), await file_request(ctx)

        # erin has no group in the database: the directory's biomed group lets her approve
        erin, _ = link_for(ctx, first, "erin")
        page = await (await client.get(erin)).text()
        response = await client.post(erin, data={"csrf": csrf_of(page), "decision": "approve"})
        assert response.status == 200, await response.text()
        assert await request_state(ctx, first) == "approved"

        # dave is in no directory group: his database groups do not count
        dave, _ = link_for(ctx, second, "dave")
        page = await (await client.get(dave)).text()
        assert "dave is in none of the groups this request needs (biomed), according to the" \
               f" directory ldap://127.0.0.1:{slapd.port}" in page
        assert 'name="csrf"' not in page

        # erin leaves biomed: within the cache window the broker has not asked again ...
        slapd.remove_member("biomed", "erin")
        erin2, _ = link_for(ctx, second, "erin")
        page = await (await client.get(erin2)).text()
        assert 'name="csrf"' in page
        # ... after it, her decision is refused with one line and an audit event
        clock.advance(timedelta(seconds=61))
        response = await client.post(erin2, data={"csrf": csrf_of(page), "decision": "approve"})
        assert response.status == 403
        assert "erin is in none of the groups this request needs (biomed)" in \
            await response.text()
        assert await request_state(ctx, second) == "pending"
        refused = await events(ctx, "decision.refused")
        assert refused[-1][1] == f"request:{second}"
        assert "erin is in none of the groups" in refused[-1][2]["reason"]
        assert refused[-1][2]["via"] == "link"

        # back in the group: allowed again once the cached "not a member" has expired
        slapd.add_member("biomed", "erin")
        clock.advance(timedelta(seconds=61))
        erin3, _ = link_for(ctx, second, "erin")
        page = await (await client.get(erin3)).text()
        response = await client.post(erin3, data={"csrf": csrf_of(page), "decision": "approve"})
        assert response.status == 200
        assert await request_state(ctx, second) == "approved"


async def test_answers_are_cached_for_cache_seconds(broker_dir: Path, slapd: Slapd) -> None:
    use_directory(broker_dir, slapd, cache_seconds=30)
    clock = FakeClock()
    directory = Directory.from_config(load_config(broker_dir / "broker.toml"), clock.now)
    for _ in range(3):
        user = await directory.find("bob", "bob@hospital.example")
        assert directory.broker_groups(user) == {"biomed"}
    assert directory.lookups == 1
    clock.advance(timedelta(seconds=31))
    await directory.find("bob", "bob@hospital.example")
    assert directory.lookups == 2
    # a directory that failed is asked again next time (failures are never cached)
    slapd.stop()
    with pytest.raises(Exception, match="cannot connect"):
        await directory.find("carol", "carol@hospital.example")
    slapd.restart()
    assert directory.broker_groups(await directory.find("carol", "")) == {"security"}


# -- the CLI (the real console script, a fresh process each time: no cache between) ----------
async def test_cli_approve_member_then_removed_member_refused(broker_dir: Path, slapd: Slapd,
                                                             cli: Cli) -> None:
    use_directory(broker_dir, slapd, cache_seconds=0)
    ident = await prepare(broker_dir)
    approved = cli("request", "approve", str(ident), "--as", "bob", env=env())
    assert approved.code == 0, approved.err
    assert json.loads(cli("request", "show", str(ident), "--json").out)["state"] == "approved"

    second = await prepare_again(broker_dir)
    slapd.remove_member("biomed", "bob")
    refused = cli("request", "approve", str(second), "--as", "bob", env=env())
    assert refused.code == 1 and len(refused.err_lines) == 1, refused.err
    assert refused.err_lines[0] == (
        f"broker: approver bob is in none of the groups this request needs (biomed), according"
        f" to the directory ldap://127.0.0.1:{slapd.port}")
    audit = await audit_of(broker_dir, "decision.refused")
    assert audit[-1][1] == f"request:{second}" and audit[-1][2]["via"] == "cli"


async def prepare_again(broker_dir: Path) -> int:
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    try:
        return await file_request(ctx)
    finally:
        await ctx.close()


# -- failing closed ------------------------------------------------------------------------
async def test_directory_down_refuses_every_decision_and_audits_it(broker_dir: Path,
                                                                  slapd: Slapd, cli: Cli) -> None:
    use_directory(broker_dir, slapd, cache_seconds=0)
    ident = await prepare(broker_dir)
    slapd.stop()
    where = f"directory ldap://127.0.0.1:{slapd.port}"
    for decision in ("approve", "deny"):
        result = cli("request", decision, str(ident), "--as", "bob", env=env())
        assert result.code == 1 and len(result.err_lines) == 1, result.err
        assert result.err_lines[0] == (
            f"broker: approver groups unknown: {where}: cannot connect: Connection refused;"
            " decisions are refused until the directory answers")
    assert json.loads(cli("request", "show", str(ident), "--json").out)["state"] == "pending"
    audit = await audit_of(broker_dir, "decision.refused")
    assert len(audit) == 2
    assert all(a[2]["directory"] == f"the {where}" and "cannot connect" in a[2]["reason"]
               for a in audit)
    # a link for an approver can't be issued either (refused now, not on the phone)
    link = cli("request", "link", str(ident), "--approver", "bob", env=env())
    assert link.code == 1 and "approver groups unknown" in link.err and len(link.err_lines) == 1

    # the approval page shows why, and offers no decision; a POST is refused without using
    # up the link, which works once the directory answers again
    async with portal(broker_dir) as (client, ctx):
        path, _ = link_for(ctx, ident, "bob")
        response = await client.get(path)
        page = await response.text()
        assert response.status == 200
        assert f"approver groups unknown: {where}: cannot connect" in page
        assert 'name="csrf"' not in page
        slapd.restart()
        csrf = csrf_of(await (await client.get(path)).text())
        slapd.stop()
        refused = await client.post(path, data={"csrf": csrf, "decision": "approve"})
        assert refused.status == 403 and "approver groups unknown" in await refused.text()
        assert len(await events(ctx, "decision.refused")) == 3
        slapd.restart()
        approved = await client.post(path, data={"csrf": csrf, "decision": "approve"})
        assert approved.status == 200, await approved.text()
        assert await request_state(ctx, ident) == "approved"


async def test_a_policy_without_groups_does_not_need_the_directory(broker_dir: Path,
                                                                  slapd: Slapd,
                                                                  cli: Cli) -> None:
    use_directory(broker_dir, slapd, cache_seconds=0)
    (broker_dir / "policies" / "pumps.yaml").unlink()  # the default: any one approver
    ident = await prepare(broker_dir)
    slapd.stop()
    result = cli("request", "approve", str(ident), "--as", "dave", env=env())
    assert result.code == 0, result.err


async def test_a_directory_that_does_not_answer_is_cut_off_by_the_timeout(
        broker_dir: Path, slapd: Slapd, cli: Cli) -> None:
    """slapd stopped with SIGSTOP: the TCP connect succeeds, nothing answers."""
    import os
    import signal
    import time

    use_directory(broker_dir, slapd, cache_seconds=0, timeout="2s")
    ident = await prepare(broker_dir)
    assert slapd.proc is not None
    os.kill(slapd.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = cli("request", "approve", str(ident), "--as", "bob", env=env())
        took = time.monotonic() - started
    finally:
        os.kill(slapd.proc.pid, signal.SIGCONT)
    assert result.code == 1 and len(result.err_lines) == 1, result.err
    assert "approver groups unknown" in result.err and "no answer within 2s" in result.err
    assert took < 30  # 2 s for the bind, plus a process start-up on a loaded host


async def test_wrong_bind_password_fails_closed_and_is_never_shown(broker_dir: Path,
                                                                   slapd: Slapd,
                                                                   cli: Cli) -> None:
    use_directory(broker_dir, slapd, cache_seconds=0)
    ident = await prepare(broker_dir)
    wrong = {PASSWORD_ENV: "Wr0ng-but-secret-pw"}
    check = cli("ldap", "check", env=wrong)
    assert check.code == 1 and check.err_lines == [
        f"broker: directory ldap://127.0.0.1:{slapd.port}: bind as {READER_DN} refused:"
        " invalidCredentials"]
    approve = cli("request", "approve", str(ident), "--as", "bob", env=wrong)
    assert approve.code == 1 and "bind as" in approve.err and "invalidCredentials" in approve.err
    unset = cli("ldap", "check", env={PASSWORD_ENV: ""})
    assert unset.code == 1 and unset.err_lines == [
        f"broker: directory ldap://127.0.0.1:{slapd.port}: the bind password:"
        f" ${PASSWORD_ENV} is not set"]
    assert json.loads(cli("request", "show", str(ident), "--json").out)["state"] == "pending"
    logged = (broker_dir / "data" / "broker.log").read_text()
    assert "decision.refused" in logged
    for secret in ("Wr0ng-but-secret-pw", READER_PASSWORD):
        assert secret not in logged + check.out + check.err + approve.err
    assert "Wr0ng" not in (broker_dir / "broker.toml").read_text()


# -- filter injection ----------------------------------------------------------------------
async def test_a_filter_injection_in_a_user_name_matches_nothing(broker_dir: Path,
                                                                 slapd: Slapd, cli: Cli) -> None:
    use_directory(broker_dir, slapd)
    directory = Directory.from_config(load_config(broker_dir / "broker.toml"), FakeClock().now)
    template = directory.settings.user_filter
    attack = "*)(uid=*"
    assert user_filter(template, attack, "*") == r"(|(uid=\2a\29\28uid=\2a)(mail=\2a))"
    for name, email in ((attack, "*"), ("*", "*"), ("bob)(|(uid=*", ""), ("b*", ""),
                        ("bob\\", ""), ("bob\x00", "")):
        assert await directory.find(name, email) is None, (name, email)
    # the same strings unescaped would have matched every user: the escaping is what holds
    raw = template.replace("{name}", attack).replace("{email}", "*")
    conn = directory._connect()
    try:
        conn.search(PEOPLE, raw, attributes=[])
        assert len(conn.entries) == 5
    finally:
        conn.unbind()
    result = cli("ldap", "check", "--user", attack, "--email", "*", env=env())
    assert result.code == 1 and len(result.err_lines) == 1
    assert "no entry matches user_filter for '*)(uid=*'" in result.err
    assert (await directory.find("bob", "")) is not None  # the real name still works


# -- broker ldap check ----------------------------------------------------------------------
async def test_ldap_check_plain_starttls_and_ldaps(broker_dir: Path, slapd: Slapd,
                                                   cli_for, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    await prepare(broker_dir)
    cases = {
        "plain": ({}, "connected (no TLS)"),
        "starttls": ({"start_tls": True, "ca_file": str(slapd.ca)}, "connected (StartTLS)"),
        "ldaps": ({"url": slapd.ldaps_url, "ca_file": str(slapd.ca)}, "connected (TLS)"),
    }
    for name, (settings, expected) in cases.items():
        directory = Path(shutil.copytree(broker_dir, tmp_path / name))
        use_directory(directory, slapd, **settings)
        run = cli_for(directory)
        result = run("ldap", "check", "--user", "frank", env=env())
        assert result.code == 0, result.err
        lines = result.out.splitlines()
        assert lines[0].endswith(f"{expected}, bound as {READER_DN}"), result.out
        assert f"entry:            {user_dn('frank')}" in result.out
        assert "(not a registered approver)" in result.out
        assert "staff role:       admin" in result.out
        assert "approver groups:  none ([ldap.groups])" in result.out
        data = json.loads(run("ldap", "check", "--user", "bob", "--json", env=env()).out)
        assert data["registered_approver"] is True
        assert data["email"] == "bob@hospital.example" and data["dn"] == user_dn("bob")
        assert data["directory_groups"] == [group_dn("biomed")]
        assert data["approver_groups"] == ["biomed"] and data["role"] == "approver"


async def test_ldap_check_refuses_an_untrusted_or_misnamed_certificate(
        broker_dir: Path, slapd: Slapd, cli_for, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    cases = {
        "system-store": ({"url": slapd.ldaps_url},
                         "TLS failed: the directory's certificate is not trusted"),
        "starttls-system-store": ({"start_tls": True},
                                  "TLS failed: the directory's certificate is not trusted"),
        "wrong-name": ({"url": f"ldaps://localhost:{slapd.tls_port}", "ca_file": str(slapd.ca)},
                       "TLS failed: the directory's certificate is not for localhost"),
    }
    for name, (settings, expected) in cases.items():
        directory = Path(shutil.copytree(broker_dir, tmp_path / name))
        use_directory(directory, slapd, **settings)
        result = cli_for(directory)("ldap", "check", env=env())
        assert result.code == 1 and len(result.err_lines) == 1, (name, result.err)
        assert expected in result.err, (name, result.err)


async def test_group_member_lookup_as_with_openldap_groups(broker_dir: Path, slapd: Slapd,
                                                           cli: Cli) -> None:
    """group_lookup = "member": no memberOf needed; groups found by their member attribute."""
    use_directory(broker_dir, slapd, group_lookup="member", group_base=GROUPS,
                  member_attribute="member", cache_seconds=0)
    ident = await prepare(broker_dir)
    data = json.loads(cli("ldap", "check", "--user", "carol", "--json", env=env()).out)
    assert data["directory_groups"] == [group_dn("security")]
    assert data["approver_groups"] == ["security"]
    refused = cli("request", "approve", str(ident), "--as", "carol", env=env())
    assert refused.code == 1 and "carol is in none of the groups" in refused.err
    assert cli("request", "approve", str(ident), "--as", "bob", env=env()).code == 0


async def test_group_of_unique_names_with_unique_member(broker_dir: Path, slapd: Slapd,
                                                         cli: Cli) -> None:
    slapd.add_unique_group("icu-biomed", "dave")
    use_directory(broker_dir, slapd, group_lookup="member", group_base=GROUPS,
                  member_attribute="uniqueMember", cache_seconds=0)
    text = (broker_dir / "broker.toml").read_text().replace(
        f"biomed = [{json.dumps(group_dn('biomed'))}]",
        f"biomed = [{json.dumps(group_dn('biomed'))}, {json.dumps(group_dn('icu-biomed'))}]", 1)
    (broker_dir / "broker.toml").write_text(text)
    ident = await prepare(broker_dir)
    data = json.loads(cli("ldap", "check", "--user", "dave", "--json", env=env()).out)
    assert data["directory_groups"] == [group_dn("icu-biomed")]
    assert data["approver_groups"] == ["biomed"]
    # bob's biomed group is a groupOfNames: with uniqueMember it is not found
    refused = cli("request", "approve", str(ident), "--as", "bob", env=env())
    assert refused.code == 1 and "bob is in none of the groups" in refused.err
    assert cli("request", "approve", str(ident), "--as", "dave", env=env()).code == 0


async def test_ldap_check_warns_of_policy_groups_the_directory_does_not_map(
        broker_dir: Path, slapd: Slapd, cli: Cli) -> None:
    use_directory(broker_dir, slapd)
    (broker_dir / "policies" / "xray.yaml").write_text(
        BIOMED_ONLY.replace("pumps-biomed", "xray").replace("infusion", "xray")
        .replace("[biomed]", "[radiology, security]"))
    result = cli("ldap", "check", env=env())
    assert result.code == 0, result.err
    assert result.out.splitlines()[1] == (
        "warning: no [ldap.groups] entry for radiology (named by a policy): nobody can approve"
        " for them")
    data = json.loads(cli("ldap", "check", "--json", env=env()).out)
    assert data["unmapped_groups"] == ["radiology"]


async def test_ldap_check_without_a_directory_and_with_bad_arguments(cli: Cli) -> None:
    off = cli("ldap", "check")
    assert off.code == 1 and len(off.err_lines) == 1
    assert "[ldap] url is empty: the directory is off" in off.err
    assert cli("ldap", "check", "--help").code == 0
    for args, expected in (
            (("--user", ""), "--user: expected 1-256 printable characters, got ''"),
            (("--user", "bob\x1b[2J"), "--user: expected 1-256 printable characters"),
            (("--user", "b" * 300), "--user: expected 1-256 printable characters"),
            (("--user", "bob", "--email", "a\nb"), "--email: expected 1-256 printable"),
            (("--bogus",), "No such option '--bogus'")):
        result = cli("ldap", "check", *args)
        assert result.code == 2 and len(result.err_lines) == 1, (args, result.err)
        assert expected in result.err, (args, result.err)


# -- staff roles ([ldap.roles]) at the password sign-in -----------------------------------------
async def test_staff_roles_come_from_the_directory_at_every_sign_in(broker_dir: Path,
                                                                    slapd: Slapd) -> None:
    from tests.unit.staff_kit import add_staff, post_login, sign_in

    use_directory(broker_dir, slapd, cache_seconds=0)
    async with portal(broker_dir) as (client, ctx):
        await staff_and_device(ctx)
        await People(ctx, "test").add_approver("frank", "frank@hospital.example", [])
        await add_staff(ctx, "frank", "auditor")  # the directory makes frank an admin
        await add_staff(ctx, "bob", "approver", approver="bob")
        await add_staff(ctx, "dave", "admin", approver="dave")  # in no mapped group
        await add_staff(ctx, "erin", "auditor")  # biomed: approver, but no approver account

        await sign_in(client, ctx, "frank")
        changed = await events(ctx, "staff.role_changed")
        assert changed[-1][1] == "staff:frank"
        assert (changed[-1][2]["old"], changed[-1][2]["new"]) == ("auditor", "admin")
        assert (await client.get("/staff/")).status == 200
        frank_cookies = client.session.cookie_jar.filter_cookies(client.make_url("/"))
        client.session.cookie_jar.clear()

        for name, reason in (
                ("dave", "no [ldap.roles] group of the directory"),
                ("erin", "makes erin an approver, but the account decides as no registered"
                         " approver")):
            response = await post_login(client, name, "correct-horse-battery-staple")
            assert response.status == 401, name
            failed = await events(ctx, "staff.login_failed")
            assert failed[-1][2]["step"] == "directory"
            assert reason in failed[-1][2]["reason"], failed[-1]

        # removed from the admins group: the next sign-in is refused, open sessions end
        slapd.remove_member("broker-admins", "frank")
        response = await post_login(client, "frank", "correct-horse-battery-staple")
        assert response.status == 401
        client.session.cookie_jar.clear()
        client.session.cookie_jar.update_cookies(frank_cookies)
        assert (await client.get("/staff/", allow_redirects=False)).status in (302, 303)
        client.session.cookie_jar.clear()

        # the directory down: nobody signs in with a password, and the log says why
        await sign_in(client, ctx, "bob")
        client.session.cookie_jar.clear()
        slapd.stop()
        response = await post_login(client, "bob", "correct-horse-battery-staple")
        assert response.status == 401
        failed = await events(ctx, "staff.login_failed")
        assert "staff role unknown:" in failed[-1][2]["reason"]
        assert "cannot connect" in failed[-1][2]["reason"]


async def test_the_staff_portal_decision_reads_the_directory_too(broker_dir: Path,
                                                                 slapd: Slapd) -> None:
    from tests.unit.staff_kit import add_staff, sign_in

    use_directory(broker_dir, slapd, cache_seconds=0)
    async with portal(broker_dir) as (client, ctx):
        await staff_and_device(ctx)
        first, second = await file_request(ctx), await file_request(ctx)
        await add_staff(ctx, "bob", "approver", approver="bob")
        csrf = await sign_in(client, ctx, "bob")
        done = await client.post(f"/staff/requests/{first}/decide", allow_redirects=False,
                                 data={"decision": "approve", "csrf": csrf})
        assert done.status == 303, await done.text()
        assert await request_state(ctx, first) == "approved"

        slapd.remove_member("biomed", "bob")  # the session goes on; the decision is refused
        refused = await client.post(f"/staff/requests/{second}/decide",
                                    data={"decision": "approve", "csrf": csrf})
        assert refused.status == 403
        assert "bob is in none of the groups this request needs (biomed), according to the" \
            " directory" in await refused.text()
        audit = await events(ctx, "decision.refused")
        assert audit[-1][1] == f"request:{second}" and audit[-1][2]["via"] == "web"
        slapd.stop()
        down = await client.post(f"/staff/requests/{second}/decide",
                                 data={"decision": "deny", "csrf": csrf})
        assert down.status == 403 and "approver groups unknown" in await down.text()
        assert await request_state(ctx, second) == "pending"


# -- who is mailed a link ---------------------------------------------------------------------
async def test_approval_mail_goes_to_the_directory_group_and_waits_while_it_is_down(
        broker_dir: Path, slapd: Slapd) -> None:
    from broker.approvals.notify import Notifier
    from broker.approvals.notify.dispatcher import outbox
    from tests.approval_kit import set_config, smtp_server

    use_directory(broker_dir, slapd, cache_seconds=0)
    with smtp_server() as (mailbox, port):
        set_config(broker_dir, "notify", smtp_host="127.0.0.1", smtp_port=port)
        ctx = Context.open(load_config(broker_dir / "broker.toml"))
        notifier = Notifier(ctx)
        try:
            await staff_and_device(ctx)
            await People(ctx, "test").add_approver("erin", "erin@hospital.example", [])
            await notifier.plan_new_events()
            await file_request(ctx)
            # bob and erin are in the directory's biomed; mallory (biomed in the database)
            # and dave are not, carol is in security
            assert await notifier.plan_new_events() == 2
            assert sorted(r.recipient for r in await outbox(ctx)) == [
                "bob@hospital.example", "erin@hospital.example"]

            # the directory down: the round fails and the event waits (no mail lost)
            slapd.stop()
            await file_request(ctx)
            with pytest.raises(Exception, match="approver groups unknown"):
                await notifier.plan_new_events()
            assert len(await outbox(ctx)) == 2
            slapd.restart()
            assert await notifier.plan_new_events() == 2
            assert await notifier.deliver_due() == 4
            assert sorted(str(m["To"]) for m in mailbox.messages) == [
                "bob <bob@hospital.example>", "bob <bob@hospital.example>",
                "erin <erin@hospital.example>", "erin <erin@hospital.example>"]
        finally:
            await notifier.close()
            await ctx.close()


# -- start-up ------------------------------------------------------------------------------------
async def test_serve_refuses_to_start_without_the_bind_password_or_the_ca_file(
        broker_dir: Path, slapd: Slapd, cli: Cli) -> None:
    use_directory(broker_dir, slapd, start_tls=True, ca_file="ldap-ca.pem")
    listen = {"BROKER_SSH_LISTEN": "127.0.0.1:0", "BROKER_HTTP_LISTEN": "127.0.0.1:0",
              "BROKER_WEBPROXY_LISTEN": "127.0.0.1:0"}
    config = broker_dir / "broker.toml"
    no_password = cli("serve", env={**listen, PASSWORD_ENV: ""}, timeout=90)
    assert no_password.code == 1 and no_password.err_lines == [
        f"broker: {config}: [ldap] bind_password_env = '{PASSWORD_ENV}': ${PASSWORD_ENV} is"
        " not set or empty"], no_password.err
    no_ca = cli("serve", env={**listen, **env()}, timeout=90)
    assert no_ca.code == 1 and no_ca.err_lines == [
        f"broker: {config}: [ldap] ca_file = 'ldap-ca.pem': {broker_dir / 'ldap-ca.pem'}:"
        " no such file"], no_ca.err
    # the same missing file at a check: one line too, never a traceback
    check = cli("ldap", "check", env=env())
    assert check.code == 1 and check.err_lines == [
        f"broker: directory ldap://127.0.0.1:{slapd.port}: ca_file {broker_dir / 'ldap-ca.pem'}:"
        " no such file"]
    (broker_dir / "ldap-ca.pem").write_text("not a certificate\n")
    check = cli("ldap", "check", env=env())
    assert check.code == 1 and check.err_lines == [
        f"broker: directory ldap://127.0.0.1:{slapd.port}: ca_file {broker_dir / 'ldap-ca.pem'}:"
        " holds no PEM certificate"]
    (broker_dir / "ldap-ca.pem").write_bytes(slapd.ca.read_bytes())
    assert cli("ldap", "check", env=env()).code == 0
