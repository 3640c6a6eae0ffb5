"""Storage of the relay: mailbox credentials, delegations, the durable queue, and the tracking of notifications."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mssecure.db import Base, UTCDateTime

__all__ = ["Delegation", "Mailbox", "PrescriptionDelivery", "QueuedMessage", "QueuedRecipient", "Tracking"]


class Mailbox(Base):
    """The credentials and delivery preferences of a local directory entry's mailbox.

    ``password_hash`` is an argon2id hash (PHC string, ``$argon2id$v=19$...``): Dovecot checks it too, as
    ``{ARGON2ID}`` + hash. ``end_to_end``: the entry holds its own key and receives mail still encrypted.
    """

    __tablename__ = "mailboxes"

    address: Mapped[str] = mapped_column(sa.String(254), primary_key=True)
    password_hash: Mapped[str | None] = mapped_column(sa.Text)
    end_to_end: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Delegation(Base):
    """A person allowed to send as (and read) an organizational mailbox."""

    __tablename__ = "delegations"
    __table_args__ = (sa.UniqueConstraint("organization", "delegate"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization: Mapped[str] = mapped_column(sa.String(254), index=True)
    delegate: Mapped[str] = mapped_column(sa.String(254), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(sa.String(254))


class PrescriptionDelivery(Base):
    """A prescription identifier delivered to a local mailbox: the index that flags (or refuses) a prescription
    delivered a second time to another mailbox. One row per (prescription, recipient), the first time."""

    __tablename__ = "prescription_deliveries"
    __table_args__ = (sa.UniqueConstraint("prescription_id", "recipient"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prescription_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    recipient: Mapped[str] = mapped_column(sa.String(254))
    sender: Mapped[str] = mapped_column(sa.String(254))
    message_id: Mapped[str | None] = mapped_column(sa.Text)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


QUEUE_STATES = ("queued", "delivering", "deferred", "delivered", "bounced")
PENDING_STATES = ("queued", "deferred", "delivering")


class QueuedMessage(Base):
    """One message to deliver to one destination (``local``, or a peer operator's domain), its bytes in the spool.

    ``origin``: submission (a mail client), inbound (a peer operator), notification (a DSN or MDN we made).
    """

    __tablename__ = "queue_messages"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)  # the queue id, also the spool file name
    origin: Mapped[str] = mapped_column(sa.String(16))
    kind: Mapped[str] = mapped_column(sa.String(8))  # message, mdn, dsn
    destination: Mapped[str] = mapped_column(sa.String(253))  # "local" or a peer's main domain
    sender: Mapped[str] = mapped_column(sa.String(254))  # envelope MAIL FROM ("" for a DSN)
    actor: Mapped[str] = mapped_column(sa.String(254))  # the authenticated user, or the peer operator
    message_id: Mapped[str | None] = mapped_column(sa.String(998))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size: Mapped[int] = mapped_column(sa.Integer)
    disposition_to: Mapped[str | None] = mapped_column(sa.String(254))  # MDN requested to this address
    final_delivery: Mapped[bool] = mapped_column(sa.Boolean, default=False)  # X-DIRECT-FINAL-DESTINATION-DELIVERY
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    recipients: Mapped[list[QueuedRecipient]] = relationship(
        back_populates="message", cascade="all, delete-orphan", order_by="QueuedRecipient.id"
    )


class QueuedRecipient(Base):
    """One recipient of a queued message: its state, attempts, next attempt time and last error."""

    __tablename__ = "queue_recipients"
    __table_args__ = (
        sa.CheckConstraint(f"state IN {QUEUE_STATES!r}", name="ck_queue_state"),
        sa.Index("ix_queue_recipients_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    queue_id: Mapped[str] = mapped_column(sa.ForeignKey("queue_messages.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(sa.String(254))
    state: Mapped[str] = mapped_column(sa.String(12))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    message: Mapped[QueuedMessage] = relationship(back_populates="recipients")


class Tracking(Base):
    """The sender's side of acknowledgments: one row per (message, recipient) whose sender asked for a notice, so
    the sender gets exactly one final notice (late duplicates are suppressed)."""

    __tablename__ = "notification_tracking"
    __table_args__ = (sa.UniqueConstraint("message_id", "recipient"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(sa.String(998))
    recipient: Mapped[str] = mapped_column(sa.String(254))
    sender: Mapped[str] = mapped_column(sa.String(254))
    final_delivery: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    outcome: Mapped[str | None] = mapped_column(sa.String(16))  # None while pending; the final notice's outcome
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
