"""How vendors, their technicians and invitations are shown (portal, vendor page, API, CLI):
one place for the contract state, the technician rows and the invitation record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.domain.invitations import PENDING, REJECTED, state_of_contract
from broker.services.invitations import InvitationView, shown_state
from broker.services.vendors import VendorView, technician_state

ENDING_SOON = timedelta(days=30)


@dataclass(frozen=True)
class TechRow:
    name: str
    email: str | None
    state: str  # technician_state, or pending / rejected for an invited one not approved
    last_login_at: datetime | None
    expires_at: datetime | None


def contract_state(view: VendorView, now: datetime) -> str:
    """active, ending soon (within 30 days), ended, disabled."""
    end = view.vendor.contract_end
    return state_of_contract(view.vendor.disabled, end is not None and end <= now,
                             end is not None and end <= now + ENDING_SOON)


def tech_rows(view: VendorView, invitations: list[InvitationView], now: datetime
              ) -> list[TechRow]:
    waiting = {i.technician: i.invitation.state for i in invitations
               if i.technician and i.invitation.state in (PENDING, REJECTED)}
    return [TechRow(t.name, t.email, waiting.get(t.name) or technician_state(now, t,
                                                                            view.vendor),
                    t.last_login_at, t.expires_at) for t in view.technicians]


def pending_names(view: VendorView, invitations: list[InvitationView]) -> list[str]:
    return [i.technician for i in invitations if i.vendor == view.vendor.name
            and i.invitation.state == PENDING and i.technician]


def invitation_record(view: InvitationView, now: datetime) -> dict[str, Any]:
    """An invitation as the CLI's --json and the API show it (never its link)."""
    row = view.invitation
    return {"id": row.id, "vendor": view.vendor, "email": row.email, "name": row.name,
            "state": shown_state(row, now), "technician": view.technician,
            "expires_at": row.expires_at, "created_by": row.created_by,
            "created_at": row.created_at, "used_at": row.used_at,
            "decided_by": row.decided_by, "decided_at": row.decided_at}


def vendor_record(view: VendorView, invitations: list[InvitationView], now: datetime
                  ) -> dict[str, Any]:
    v = view.vendor
    mine = [i for i in invitations if i.vendor == v.name]
    return {"id": v.id, "name": v.name, "domains": v.domains, "contact": v.contact,
            "contract_end": v.contract_end, "contract_state": contract_state(view, now),
            "disabled": v.disabled,
            "technicians": [t.__dict__ for t in tech_rows(view, mine, now)],
            "pending": pending_names(view, mine)}
