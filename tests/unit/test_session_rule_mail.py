"""The e-mails approvers get for a command alert and for a session waiting for a supervisor:
every approver is an addressee, and the templates render with a link to the Supervise page."""

from __future__ import annotations

from broker.approvals.notify.plan import EVERY_APPROVER_MAIL, WEBHOOK_KINDS
from broker.approvals.notify.render import environment, render_email


def facts(kind: str, data: dict[str, object]) -> dict[str, object]:
    return {"event": {"seq": 7, "kind": kind, "ts": "2026-05-04T10:00:00+00:00",
                      "actor": "technician:bob", "subject": "pump-1", "data": data},
            "broker": "https://broker.example.org"}


def test_both_kinds_go_to_every_approver_and_the_webhook() -> None:
    for kind in ("command.alert", "session.supervision_wanted"):
        assert kind in EVERY_APPROVER_MAIL and kind in WEBHOOK_KINDS


def test_the_alert_mail_names_the_command_and_links_the_session() -> None:
    subject, body = render_email(environment(None), "command.alert", {
        "to_name": "Alice", "facts": facts("command.alert", {
            "command": "cat /etc/shadow\x1b[2J", "message": "password file read",
            "session_id": "abc123"})})
    assert subject == "Command alert: technician:bob on pump-1"
    assert "cat /etc/shadow\\x1b[2J" in body  # control characters shown, never sent raw
    assert "password file read" in body
    assert "https://broker.example.org/staff/sessions/abc123/supervise" in body


def test_the_supervisor_mail_links_the_supervise_page() -> None:
    subject, body = render_email(environment(None), "session.supervision_wanted", {
        "to_name": "Alice", "facts": facts("session.supervision_wanted", {
            "waiting_for": "this session", "session_id": "abc123"})})
    assert subject == "Supervisor needed: technician:bob on pump-1"
    assert "this session needs one watching" in body
    assert "https://broker.example.org/staff/sessions/abc123/supervise" in body
