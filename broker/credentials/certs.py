"""Short-lived OpenSSH user certificates signed by the broker's user CA.

A certificate is bound to one grant: its only principal is ``grant-<id>`` and its key id
``broker-grant-<id>-<technician>`` (both signed by the CA; asyncssh cannot write custom
extensions, so the key id carries the grant and the technician). It lives no longer than the
grant, and opens only that grant's device. The database grant stays authoritative: the SSH
server checks it (and the certificate's serial) at every login and by timer.
"""

from __future__ import annotations

from datetime import datetime

import asyncssh


def certificate_key_id(grant_id: int, technician: str) -> str:
    return f"broker-grant-{grant_id}-{technician}"


def grant_principal(grant_id: int) -> str:
    return f"grant-{grant_id}"


def principal_grant(principal: str) -> int | None:
    """The grant id of a ``grant-<id>`` principal, else None."""
    number = principal.removeprefix("grant-")
    if number == principal or not number.isascii() or not number.isdigit() or len(number) > 18:
        return None
    return int(number)


def issue_certificate(ca_key: asyncssh.SSHKey, user_key: asyncssh.SSHKey, *, technician: str,
                      grant_id: int, serial: int, valid_after: datetime,
                      valid_before: datetime, allow_forwarding: bool
                      ) -> asyncssh.SSHCertificate:
    """Sign ``user_key`` for ``technician``'s grant over ``[valid_after, valid_before)``.

    The certificate permits a pty; agent and X11 forwarding and ~/.ssh/rc never; TCP port
    forwarding only when the grant allows the ``forward`` protocol.
    """
    if valid_after.tzinfo is None or valid_before.tzinfo is None:
        raise ValueError("certificate validity needs timezone-aware times")
    if valid_before <= valid_after:
        raise ValueError(f"empty certificate validity: {valid_after} .. {valid_before}")
    return ca_key.generate_user_certificate(
        user_key, certificate_key_id(grant_id, technician), serial=serial,
        principals=[grant_principal(grant_id)], valid_after=valid_after, valid_before=valid_before,
        permit_x11_forwarding=False, permit_agent_forwarding=False,
        permit_port_forwarding=allow_forwarding, permit_pty=True, permit_user_rc=False,
        comment=certificate_key_id(grant_id, technician))
