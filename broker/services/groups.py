"""Where approvers' groups come from: the broker's database (``broker approver add --group``)
or, with ``[ldap] url`` set, the hospital's directory, read at decision time.

Every question about an approver's groups (may they decide this request, do the approvals so
far satisfy the policy, who gets the approval mail) goes through :func:`group_source`. With a
directory, the database groups are not consulted at all: someone removed from the directory
group can no longer approve once the cache window (``[ldap] cache_seconds``) has passed. A
directory that cannot answer refuses the decision (:class:`GroupsUnavailable`): fail closed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.errors import ConfigError, Refused
from broker.services.context import Context
from broker.store.models import Approver, ApproverGroup

if TYPE_CHECKING:  # ldap3 is imported only when a directory is configured
    from broker.directory.ldap import Directory

_KEY = "_broker_group_source"  # where a Context keeps its source (one directory cache each)


class GroupsUnavailable(Refused):
    """The directory could not say which groups an approver is in."""


class GroupSource(Protocol):
    @property
    def where(self) -> str:
        """Where the groups come from, for messages (``the broker's database``)."""

    async def groups_of(self, db: AsyncSession, approvers: Sequence[Approver]
                        ) -> dict[str, frozenset[str]]:
        """Each approver's groups by name; raises GroupsUnavailable when unknowable now."""


class LocalGroups:
    """The groups given with ``broker approver add --group``."""

    where = "the broker's database"

    async def groups_of(self, db: AsyncSession, approvers: Sequence[Approver]
                        ) -> dict[str, frozenset[str]]:
        result: dict[str, set[str]] = {a.name: set() for a in approvers}
        ids = [a.id for a in approvers if a.id is not None]
        if ids:
            rows = (await db.exec(select(Approver.name, ApproverGroup.group)
                                  .join(ApproverGroup)
                                  .where(col(Approver.id).in_(ids)))).all()
            for name, group in rows:
                result.setdefault(name, set()).add(group)
        return {name: frozenset(groups) for name, groups in result.items()}


class DirectoryGroups:
    """The ``[ldap.groups]`` an approver's directory groups map to, found by name and e-mail."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    @property
    def where(self) -> str:
        return f"the {self.directory.where}"

    async def groups_of(self, db: AsyncSession, approvers: Sequence[Approver]
                        ) -> dict[str, frozenset[str]]:
        from broker.directory.ldap import DirectoryError

        result: dict[str, frozenset[str]] = {}
        for approver in approvers:
            try:
                user = await self.directory.find(approver.name, approver.email)
            except DirectoryError as exc:
                raise GroupsUnavailable(
                    f"approver groups unknown: {exc}; decisions are refused until the"
                    " directory answers") from None
            result[approver.name] = self.directory.broker_groups(user)
        return result


class Prefetched:
    """Answers read before a decision's transaction (so that no database write lock waits on
    the directory); anyone else is asked of ``source`` as usual."""

    def __init__(self, source: GroupSource, known: dict[str, frozenset[str]]) -> None:
        self.source, self.known = source, known

    @property
    def where(self) -> str:
        return self.source.where

    async def groups_of(self, db: AsyncSession, approvers: Sequence[Approver]
                        ) -> dict[str, frozenset[str]]:
        result = {a.name: self.known[a.name] for a in approvers if a.name in self.known}
        missing = [a for a in approvers if a.name not in self.known]
        if missing:
            result.update(await self.source.groups_of(db, missing))
        return result


def check_directory_settings(ctx: Context) -> None:
    """At start-up: the bind password's variable is set and the CA file exists (fail now,
    not at the first decision). The directory itself is not asked: it may be down now."""
    settings, source = ctx.config.settings.ldap, ctx.config.source
    if not settings.url:
        return
    env = settings.bind_password_env
    if settings.bind_dn and not os.environ.get(env):
        raise ConfigError(f"{source}: [ldap] bind_password_env = {env!r}: ${env} is not set"
                          " or empty")
    if settings.ca_file and not ctx.config.path(settings.ca_file).is_file():
        raise ConfigError(f"{source}: [ldap] ca_file = {settings.ca_file!r}:"
                          f" {ctx.config.path(settings.ca_file)}: no such file")


def group_source(ctx: Context) -> GroupSource:
    """The context's source of approver groups (one per context, so one directory cache)."""
    found: GroupSource | None = vars(ctx).get(_KEY)
    if found is None:
        if ctx.config.settings.ldap.url:
            from broker.directory.ldap import Directory

            found = DirectoryGroups(Directory.from_config(ctx.config, ctx.now))
        else:
            found = LocalGroups()
        vars(ctx)[_KEY] = found
    return found
