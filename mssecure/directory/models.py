"""Storage of the directory: one row per certified address, and the history of every change made to it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mssecure.db import Base, UTCDateTime
from mssecure.directory.records import DATA_FIELDS, EntryData, Kind, Status

__all__ = ["Entry", "EntryChange"]

_TEXT = sa.String(200)


class Entry(Base):
    """A certified address of the trust space (columns mirror ``EntryData``)."""

    __tablename__ = "directory_entries"
    __table_args__ = (
        sa.CheckConstraint("kind IN ('personal', 'organizational', 'applicative')", name="ck_entry_kind"),
        sa.CheckConstraint("status IN ('active', 'suspended', 'revoked')", name="ck_entry_status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(sa.String(254), unique=True)  # always lowercase
    domain: Mapped[str] = mapped_column(sa.String(253), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    identifier_type: Mapped[str | None] = mapped_column(sa.String(8))
    identifier: Mapped[str | None] = mapped_column(sa.String(16))
    national_id: Mapped[str | None] = mapped_column(sa.String(17), index=True)
    civility: Mapped[str | None] = mapped_column(_TEXT)
    last_name: Mapped[str | None] = mapped_column(_TEXT)
    first_name: Mapped[str | None] = mapped_column(_TEXT)
    category_code: Mapped[str | None] = mapped_column(_TEXT)
    category_label: Mapped[str | None] = mapped_column(_TEXT)
    profession_code: Mapped[str | None] = mapped_column(_TEXT)
    profession_label: Mapped[str | None] = mapped_column(_TEXT)
    specialty_code: Mapped[str | None] = mapped_column(_TEXT)
    specialty_label: Mapped[str | None] = mapped_column(_TEXT)
    structure_id_type: Mapped[str | None] = mapped_column(sa.String(8))
    structure_id: Mapped[str | None] = mapped_column(sa.String(16), index=True)
    organization: Mapped[str | None] = mapped_column(_TEXT)
    trade_name: Mapped[str | None] = mapped_column(_TEXT)
    service: Mapped[str | None] = mapped_column(_TEXT)
    address_complement: Mapped[str | None] = mapped_column(_TEXT)
    address_distribution: Mapped[str | None] = mapped_column(_TEXT)
    street_number: Mapped[str | None] = mapped_column(_TEXT)
    street_number_suffix: Mapped[str | None] = mapped_column(_TEXT)
    street_type: Mapped[str | None] = mapped_column(_TEXT)
    street_name: Mapped[str | None] = mapped_column(_TEXT)
    locality: Mapped[str | None] = mapped_column(_TEXT)
    routing_line: Mapped[str | None] = mapped_column(_TEXT)
    postal_code: Mapped[str | None] = mapped_column(_TEXT)
    department: Mapped[str | None] = mapped_column(_TEXT)
    country: Mapped[str | None] = mapped_column(_TEXT)
    dematerialisation: Mapped[bool | None] = mapped_column(sa.Boolean)
    unlisted: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    search_text: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    changes: Mapped[list[EntryChange]] = relationship(
        back_populates="entry", order_by="EntryChange.id", cascade="all, delete-orphan"
    )

    def to_data(self) -> EntryData:
        values: dict[str, Any] = {f: getattr(self, f) for f in DATA_FIELDS}
        values["kind"], values["status"] = Kind(self.kind), Status(self.status)
        return EntryData(**values)


class EntryChange(Base):
    """One change to an entry by an operator: who, when, what (``changes``: field → [before, after])."""

    __tablename__ = "directory_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    entry_id: Mapped[int] = mapped_column(sa.ForeignKey("directory_entries.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(sa.String(200))
    action: Mapped[str] = mapped_column(sa.String(32))  # created, updated, suspended, reactivated, revoked
    source: Mapped[str] = mapped_column(sa.String(300))  # the command, or "import <format> <file>"
    reason: Mapped[str | None] = mapped_column(sa.String(500))
    changes: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)

    entry: Mapped[Entry] = relationship(back_populates="changes")
