"""Notifications: the audit chain is followed (``dispatcher``), each event kind planned into
deliveries (``plan``) kept in an outbox table, and delivered by webhook or e-mail
(``channels``) with retries and backoff, rendered from admin-editable templates (``render``)."""

from broker.approvals.notify.dispatcher import Notifier

__all__ = ["Notifier"]
