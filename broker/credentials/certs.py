"""Short-lived OpenSSH user certificates signed by the broker's user CA.

A certificate names one technician (its only principal) and lives no longer than the grant it
was issued for. The database grant stays authoritative: the SSH server checks it at every login
and by timer, because asyncssh cannot consult a revocation list for certificates.
"""

from __future__ import annotations

from datetime import datetime

import asyncssh


def certificate_key_id(grant_id: int, technician: str) -> str:
    return f"broker-grant-{grant_id}-{technician}"


def issue_certificate(ca_key: asyncssh.SSHKey, user_key: asyncssh.SSHKey, *, technician: str,
                      grant_id: int, serial: int, valid_after: datetime,
                      valid_before: datetime, allow_forwarding: bool
                      ) -> asyncssh.SSHCertificate:
    """Sign ``user_key`` for ``technician`` over ``[valid_after, valid_before)``.

    The certificate permits a pty; agent and X11 forwarding and ~/.ssh/rc never; TCP port
    forwarding only when the grant allows the ``forward`` protocol.
    """
    if valid_after.tzinfo is None or valid_before.tzinfo is None:
        raise ValueError("certificate validity needs timezone-aware times")
    if valid_before <= valid_after:
        raise ValueError(f"empty certificate validity: {valid_after} .. {valid_before}")
    return ca_key.generate_user_certificate(
        user_key, certificate_key_id(grant_id, technician), serial=serial,
        principals=[technician], valid_after=valid_after, valid_before=valid_before,
        permit_x11_forwarding=False, permit_agent_forwarding=False,
        permit_port_forwarding=allow_forwarding, permit_pty=True, permit_user_rc=False,
        comment=certificate_key_id(grant_id, technician))
