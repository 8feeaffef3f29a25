"""Staff roles from the directory (``[ldap.roles]``), applied at every password sign-in.

Like ``[oidc.roles]`` for single sign-on: the highest role a directory group maps to
(admin, then auditor, then approver) becomes the account's role when its password is right;
someone removed from every mapped group can no longer sign in (and their open sessions end);
a directory that cannot answer refuses the sign-in (fail closed: the CLI stays the way in).
The account is found in the directory by its name and, when it decides as a registered
approver, that approver's e-mail address (``user_filter``). Accounts made by single sign-on
keep the roles the identity provider gives them.
"""

from __future__ import annotations

from sqlmodel import col, delete

from broker.errors import Refused
from broker.services.context import Context
from broker.services.groups import DirectoryGroups, group_source
from broker.services.lookup import maybe_by_name
from broker.store.models import Approver, StaffSession, StaffUser


class RoleRefused(Refused):
    """The directory gives this account no usable role (or cannot say)."""


async def apply_directory_role(ctx: Context, user: StaffUser) -> StaffUser:
    """``user`` with the role the directory gives it now (updated and audited when it
    changed); RoleRefused, and the account's sessions ended, when it gives none."""
    settings = ctx.config.settings.ldap
    source = group_source(ctx)
    if not settings.roles or user.oidc_subject or not isinstance(source, DirectoryGroups):
        return user
    from broker.directory.ldap import DirectoryError

    directory = source.directory
    async with ctx.store.session() as db:
        approver = (await maybe_by_name(db, Approver, user.approver_name)
                    if user.approver_name else None)
    try:
        found = await directory.find(user.name, approver.email if approver else "")
    except DirectoryError as exc:
        raise RoleRefused(f"staff role unknown: {exc}") from None
    role = directory.role(found)
    problem = None
    if role is None:
        problem = (f"no [ldap.roles] group of the {directory.where} has {user.name}"
                   + ("" if found else " (no entry matches user_filter)"))
    elif role == "approver" and approver is None:
        problem = (f"the {directory.where} makes {user.name} an approver, but the account"
                   " decides as no registered approver (broker staff add --approver)")
    async with ctx.store.session() as db:
        if problem is not None:
            await db.exec(delete(StaffSession).where(col(StaffSession.user_id) == user.id))
            await db.commit()
            raise RoleRefused(problem)
        if role != user.role:
            stored = await db.get(StaffUser, user.id)
            assert stored is not None and role is not None
            await ctx.audit(db, "staff.role_changed", "ldap", f"staff:{user.name}",
                            old=stored.role, new=role, via="ldap")
            stored.role = role
            db.add(stored)
            await db.flush()
            await db.refresh(stored)
            user = stored
    return user
