"""Storage of the message store: one sealed body per distinct message (addressed by its SHA-256), and the copies
that say which message, as received or as delivered, those bytes were.

A body row outlives its purge: the ciphertext and everything needed to open it are set to NULL (a check constraint
makes a half-purged row impossible), while the hash, the size and the times stay, so the store can answer "purged
on …" and the archived events that name the hash keep something to point at.

``last_received_at`` / ``last_delivered_at`` are the newest copy of each kind: purge decides on the body row alone,
which lets one UPDATE both decide and delete, racing safely with a relay storing a new copy of the same bytes
(that relay's update of the row makes the purge see the new time, see ``store``).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from mssecure.db import Base, UTCDateTime

__all__ = ["ArchiveBody", "ArchiveCopy"]

_SEALED_OR_PURGED = (
    "(purged_at IS NULL AND ciphertext IS NOT NULL AND nonce IS NOT NULL AND wrapped_key IS NOT NULL "
    "AND ephemeral_key IS NOT NULL) OR "
    "(purged_at IS NOT NULL AND ciphertext IS NULL AND nonce IS NULL AND wrapped_key IS NULL "
    "AND ephemeral_key IS NULL)"
)


class ArchiveBody(Base):
    """One distinct message, sealed for the store key ``key_id`` (see ``store`` for the scheme)."""

    __tablename__ = "archive_bodies"
    __table_args__ = (sa.CheckConstraint(_SEALED_OR_PURGED, name="ck_archive_bodies_sealed_or_purged"),)

    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)  # of the plaintext, lower-case hex
    size: Mapped[int] = mapped_column(sa.BigInteger)  # of the plaintext
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime)  # first stored (or stored again after a purge)
    version: Mapped[int] = mapped_column(sa.SmallInteger)  # of the sealing scheme
    key_id: Mapped[str] = mapped_column(sa.String(64))  # SHA-256 of the raw X25519 store public key
    ephemeral_key: Mapped[bytes | None] = mapped_column(sa.LargeBinary)  # raw X25519 public key, 32 bytes
    wrapped_key: Mapped[bytes | None] = mapped_column(sa.LargeBinary)  # RFC 3394 wrap of the data key, 40 bytes
    nonce: Mapped[bytes | None] = mapped_column(sa.LargeBinary)  # AES-GCM, 12 bytes
    ciphertext: Mapped[bytes | None] = mapped_column(sa.LargeBinary)  # AES-256-GCM, tag appended
    last_received_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ArchiveCopy(Base):
    """A message stored as received (from a client or a peer) or as delivered (to a mailbox or a peer)."""

    __tablename__ = "archive_copies"
    __table_args__ = (sa.CheckConstraint("kind IN ('received', 'delivered')", name="ck_archive_copies_kind"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("archive_bodies.sha256"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    queue_id: Mapped[str] = mapped_column(sa.Text, index=True)
    message_id: Mapped[str | None] = mapped_column(sa.Text, index=True)
    recipient: Mapped[str | None] = mapped_column(sa.Text)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime)
