"""Vendors and the technician lifecycle: pure rules, no I/O.

* A vendor's mail domains: a technician's e-mail (when given) must be in one of them
  (case-insensitive, sub-domains not included); a vendor with no domains accepts any.
* Dates: ``2026-12-31`` means "through that day" (access ends at the next midnight UTC); an
  ISO 8601 time with a zone is an exact end.
* Who is refused, and the one line saying why: a disabled vendor, a vendor whose contract
  ended, an expired technician, a disabled technician.
* The contract-end warnings (:data:`CONTRACT_WARN_DAYS` before the end, once each; when
  several are due at once, only the nearest to the end is given).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from broker.domain.errors import InvariantViolation
from broker.domain.grants import Refusal
from broker.domain.identity import normalise_address

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


class VendorError(InvariantViolation):
    """Bad vendor input (one line, naming the option)."""


def check_domain(text: str) -> str:
    """A mail domain, lower-cased; ``@vendor.example`` is accepted as ``vendor.example``."""
    domain = text.strip().removeprefix("@").rstrip(".").casefold()
    if not _DOMAIN.match(domain):
        raise VendorError(f"--domain {ascii(text)[:80]}: not a mail domain"
                          " (expected e.g. vendor.example)")
    return domain


def email_in_domains(email: str, domains: list[str]) -> bool:
    """Whether ``email`` is in one of ``domains`` (any, if there are none)."""
    if not domains:
        return True
    _, _, domain = normalise_address(email).rpartition("@")
    return domain.rstrip(".") in {d.casefold() for d in domains}


def parse_end(option: str, text: str) -> datetime:
    """``YYYY-MM-DD`` (through that day, UTC) or an ISO 8601 time with a zone."""
    value = text.strip()
    try:
        day = date.fromisoformat(value)
    except ValueError:
        pass
    else:
        if len(value) == 10:
            return datetime.combine(day + timedelta(days=1), time(), UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise VendorError(f"{option}: {ascii(text)[:60]} is not a date (expected YYYY-MM-DD,"
                          " or an ISO 8601 time such as 2026-12-31T18:00:00+01:00)") from None
    if moment.tzinfo is None:
        raise VendorError(f"{option}: {ascii(text)[:60]} needs a timezone (e.g. ...Z or"
                          " +01:00), or give a plain date YYYY-MM-DD")
    return moment.astimezone(UTC)


def shown_end(moment: datetime) -> str:
    """An end as an admin wrote it: a midnight end is 'through' the day before."""
    moment = moment.astimezone(UTC)
    if moment.time() == time():
        return (moment - timedelta(days=1)).date().isoformat()
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class VendorState:
    name: str
    disabled: bool
    contract_end: datetime | None


PENDING_TEXT = "your technician account is waiting for the hospital's approval"


def refusal_for(now: datetime, vendor: VendorState | None, tech_disabled: bool,
                tech_expires_at: datetime | None, tech_pending: bool = False
                ) -> tuple[Refusal, str] | None:
    """Why a technician may not connect or sign in at all now, or None. ``tech_pending``:
    it enrolled by invitation and no admin has decided yet (it is disabled until then)."""
    if vendor is not None and vendor.disabled:
        return Refusal.VENDOR_DISABLED, f"your company's access ({vendor.name}) is disabled"
    if vendor is not None and vendor.contract_end is not None and vendor.contract_end <= now:
        return (Refusal.CONTRACT_ENDED, f"your company's contract ({vendor.name}) ended on"
                f" {shown_end(vendor.contract_end)}")
    if tech_expires_at is not None and tech_expires_at <= now:
        return (Refusal.ACCOUNT_EXPIRED,
                f"your technician account expired on {shown_end(tech_expires_at)}")
    if tech_disabled:
        return Refusal.DISABLED, PENDING_TEXT if tech_pending else \
            "your technician account is disabled"
    return None


def inactive_deadline(created_at: datetime, last_login_at: datetime | None,
                      enabled_at: datetime | None, inactive_days: int) -> datetime:
    """When a technician who does not log in again is disabled for inactivity."""
    since = max(m for m in (created_at, last_login_at, enabled_at) if m is not None)
    return since + timedelta(days=inactive_days)


def tech_state(now: datetime, vendor: VendorState | None, tech_disabled: bool,
               tech_expires_at: datetime | None, tech_pending: bool = False) -> str:
    """One word for listings: enabled, disabled, pending (approval), expired,
    vendor-disabled, contract-ended."""
    refusal = refusal_for(now, vendor, tech_disabled, tech_expires_at)
    if refusal is not None and refusal[0] is Refusal.DISABLED and tech_pending:
        return "pending"
    return {None: "enabled", Refusal.VENDOR_DISABLED: "vendor-disabled",
            Refusal.CONTRACT_ENDED: "contract-ended", Refusal.ACCOUNT_EXPIRED: "expired",
            Refusal.DISABLED: "disabled"}[refusal[0] if refusal else None]


CONTRACT_WARN_DAYS = (14, 1)  # vendor.contract_ending this many days before the contract end


def contract_warning_due(now: datetime, end: datetime, given: set[int]) -> int | None:
    """Which warning (days before ``end``) to give now, if any: the nearest to the end among
    those due and not yet ``given`` (a contract set to end in 12 hours gets the 1-day warning
    only; the 14-day one is not sent late). None once the contract has ended."""
    if end <= now:
        return None
    due = [d for d in CONTRACT_WARN_DAYS if end - timedelta(days=d) <= now]
    if not due or min(due) in given:
        return None
    return min(due)


def next_contract_warning(now: datetime, end: datetime) -> datetime | None:
    """When the next warning for a contract ending at ``end`` falls due, if still to come."""
    moments = [end - timedelta(days=d) for d in CONTRACT_WARN_DAYS]
    return min((m for m in moments if m > now), default=None)
