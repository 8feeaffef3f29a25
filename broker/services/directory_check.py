"""``broker ldap check``: connect and bind to the directory, and resolve one user's groups
and staff role the way decisions and sign-ins do."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from broker.errors import Refused, UsageError
from broker.services.context import Context
from broker.services.lookup import maybe_by_name
from broker.store.models import Approver


@dataclass(frozen=True)
class DirectoryReport:
    connection: str
    name: str | None = None
    email: str | None = None
    registered_approver: bool = False
    dn: str | None = None
    directory_groups: tuple[str, ...] = ()
    approver_groups: tuple[str, ...] = ()
    role: str | None = None
    # groups the policies name that [ldap.groups] does not map: nobody can approve for them
    unmapped_groups: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _check_input(option: str, value: str) -> str:
    if not value or len(value) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UsageError(f"{option}: expected 1-256 printable characters, got {value[:60]!r}")
    return value


async def check_directory(ctx: Context, name: str | None = None, email: str | None = None
                          ) -> DirectoryReport:
    """Connect and bind; with ``name``, find that user (a registered approver's e-mail
    address is used unless ``email`` is given) and resolve their groups and staff role."""
    if name is not None:
        name = _check_input("--user", name)
    if email is not None:
        email = _check_input("--email", email)
    settings = ctx.config.settings.ldap
    if not settings.url:
        raise Refused(f"{ctx.config.source}: [ldap] url is empty: the directory is off"
                      " (approver groups come from the broker's database)")
    from broker.directory.ldap import Directory, DirectoryError

    directory = Directory.from_config(ctx.config, ctx.now)
    named = {group for policy in ctx.policies() for rule in policy.rules.approvals
             for group in rule.groups}
    unmapped = tuple(sorted(named - set(settings.groups)))
    try:
        connection = await directory.check()
        if name is None:
            return DirectoryReport(connection, unmapped_groups=unmapped)
        registered = False
        if email is None:
            async with ctx.store.session() as db:
                approver = await maybe_by_name(db, Approver, name)
            registered = approver is not None
            email = approver.email if approver is not None else ""
        user = await directory.find(name, email)
    except DirectoryError as exc:
        raise Refused(str(exc)) from None
    if user is None:
        raise Refused(f"{directory.where}: no entry matches user_filter for {name!r}"
                      f" (e-mail {email or 'none'}) under {settings.user_base}")
    return DirectoryReport(
        connection, name, email or None, registered, user.dn, user.groups,
        tuple(sorted(directory.broker_groups(user))), directory.role(user), unmapped)
