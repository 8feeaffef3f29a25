"""What every service needs: settings, the store, the vault, the clock, and who is acting."""

from __future__ import annotations

import functools
import getpass
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import audit
from broker.clock import Clock, SystemClock
from broker.config import Config
from broker.credentials.vault import Vault
from broker.domain.policy import Policy
from broker.errors import ConfigError
from broker.store.engine import Store

# The one transaction a service call runs in, as protocol code names it (a hook such as
# ``Requests.decide(within=...)`` joins it) without importing the ORM itself.
Transaction = AsyncSession


def default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


@dataclass
class Context:
    config: Config
    store: Store
    clock: Clock = field(default_factory=SystemClock)
    node: str = "node-1"
    # added to every audit event this process writes (a broker worker: its index and pid)
    audit_tags: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, config: Config, clock: Clock | None = None) -> Context:
        return cls(config=config, store=Store(config.database_url), clock=clock or SystemClock(),
                   node=config.node)

    async def close(self) -> None:
        await self.store.close()

    def now(self) -> datetime:
        return self.clock.now()

    @functools.cached_property
    def vault(self) -> Vault:
        return Vault.from_file(self.config.path(self.config.settings.vault.key_file))

    def policies(self) -> list[Policy]:
        from broker.policy.loader import PolicyError, load_policies

        try:
            return load_policies(self.config.policy_dir)
        except PolicyError as exc:
            more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
            raise ConfigError(f"{exc.problems[0]}{more}; run 'broker policy check'") from None

    async def audit(self, db: AsyncSession, kind: str, actor: str,
                    subject: str | None = None, **data: Any) -> None:
        await audit.record(db, self.now(), kind, actor, subject, **{**self.audit_tags, **data})

    def append_audit(self, db: Session, kind: str, actor: str, subject: str | None = None,
                     **data: Any) -> None:
        """:meth:`audit` inside a unit written as a plain function (``Store.run_write``)."""
        audit.append(db, self.now(), kind, actor, subject, **{**self.audit_tags, **data})

    async def audit_alone(self, kind: str, actor: str, subject: str | None = None,
                          **data: Any) -> None:
        """One audit event in a transaction of its own (nothing else is written with it)."""
        async with self.store.session() as db:
            await self.audit(db, kind, actor, subject, **data)
