"""Find named objects or say clearly that they don't exist."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import bindparam
from sqlmodel import Session, SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from broker.errors import NotFound
from broker.store.models import AccessRequest, Approver, Device, Grant, Technician, Vendor

_Named = TypeVar("_Named", Technician, Approver, Device, Vendor)
_Numbered = TypeVar("_Numbered", AccessRequest, Grant)

_KIND = {Technician: "technician", Approver: "approver", Device: "device",
         AccessRequest: "request", Grant: "grant", Vendor: "vendor"}


# Built once, the name bound at each run: a login looks up its technician and device by name,
# and building and keying a statement costs more than running it.
_BY_NAME: dict[type[SQLModel], SelectOfScalar[Any]] = {
    model: select(model).where(model.name == bindparam("name"))
    for model in (Technician, Approver, Device, Vendor)}


def _named(model: type[_Named]) -> SelectOfScalar[_Named]:
    return _BY_NAME[model]


async def by_name(db: AsyncSession, model: type[_Named], name: str) -> _Named:
    row = (await db.exec(_named(model), params={"name": name})).first()
    if row is None:
        raise NotFound(f"no {_KIND[model]} named {name!r}")
    return row


async def maybe_by_name(db: AsyncSession, model: type[_Named], name: str) -> _Named | None:
    return (await db.exec(_named(model), params={"name": name})).first()


def maybe_named(db: Session, model: type[_Named], name: str) -> _Named | None:
    """:func:`maybe_by_name` inside a unit written as a plain function (``Store.run``)."""
    return db.exec(_named(model), params={"name": name}).first()


async def by_id(db: AsyncSession, model: type[_Numbered], ident: int) -> _Numbered:
    row = await db.get(model, ident)
    if row is None:
        raise NotFound(f"no {_KIND[model]} with id {ident}")
    return row


def kind_of(model: type[SQLModel]) -> str:
    return _KIND.get(model, model.__name__.lower())
