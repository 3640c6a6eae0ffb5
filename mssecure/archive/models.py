"""Storage of the archive: the event log, its chain head, the signed checkpoints.

Nothing here is ever updated or deleted by mssecure, except the one row of ``archive_head`` (the chain head, which
serialises appends). Every text column is unbounded (``Text``): an event is never lost to a length limit; the archive
clips absurdly long values itself, before hashing (``log.MAX_FIELD``).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from mssecure.db import Base, UTCDateTime

__all__ = ["ArchiveCheckpointRecord", "ArchiveEventRecord", "ArchiveHead"]


class ArchiveEventRecord(Base):
    """One archived event; ``hash`` covers every other column (see ``records``), ``prev_hash`` links the chain."""

    __tablename__ = "archive_events"

    sequence: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)  # 1, 2, 3… no gaps
    time: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    type: Mapped[str] = mapped_column(sa.Text, index=True)
    outcome: Mapped[str] = mapped_column(sa.Text)
    actor: Mapped[str | None] = mapped_column(sa.Text)
    peer: Mapped[str | None] = mapped_column(sa.Text)
    queue_id: Mapped[str | None] = mapped_column(sa.Text, index=True)
    message_id: Mapped[str | None] = mapped_column(sa.Text, index=True)
    sha256: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    sender: Mapped[str | None] = mapped_column(sa.Text, index=True)
    recipients: Mapped[str] = mapped_column(sa.Text)  # the canonical JSON array of the recipients, as hashed
    reason: Mapped[str | None] = mapped_column(sa.Text)
    reply: Mapped[str | None] = mapped_column(sa.Text)
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64), index=True)


class ArchiveHead(Base):
    """The chain head: one row (``id`` 1), locked by every append, holding the last sequence, its hash and the
    Merkle frontier of the events so far (the roots of its perfect subtrees, concatenated: see ``merkle``)."""

    __tablename__ = "archive_head"
    __table_args__ = (sa.CheckConstraint("id = 1", name="ck_archive_head_single"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    sequence: Mapped[int] = mapped_column(sa.BigInteger)
    hash: Mapped[str] = mapped_column(sa.String(64))
    frontier: Mapped[bytes] = mapped_column(sa.LargeBinary)


class ArchiveCheckpointRecord(Base):
    """A signed statement of the archive's state: after event ``sequence`` (``tree_size`` events), the chain hash
    was ``hash`` and the Merkle root ``root``; Ed25519 ``signature`` over its canonical form (``checkpoint``)."""

    __tablename__ = "archive_checkpoints"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    sequence: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    tree_size: Mapped[int] = mapped_column(sa.BigInteger)
    hash: Mapped[str] = mapped_column(sa.String(64))
    root: Mapped[str] = mapped_column(sa.String(64))
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    origin: Mapped[str] = mapped_column(sa.Text)
    key_id: Mapped[str] = mapped_column(sa.String(64))
    signature: Mapped[str] = mapped_column(sa.Text)
