"""The relay: mailbox credentials, delegations, the durable queue, notification tracking.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from mssecure.db import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mailboxes",
        sa.Column("address", sa.String(254), primary_key=True),
        sa.Column("password_hash", sa.Text),
        sa.Column("end_to_end", sa.Boolean, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "delegations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("organization", sa.String(254), nullable=False, index=True),
        sa.Column("delegate", sa.String(254), nullable=False, index=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("created_by", sa.String(254), nullable=False),
        sa.UniqueConstraint("organization", "delegate"),
    )
    op.create_table(
        "queue_messages",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("destination", sa.String(253), nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("actor", sa.String(254), nullable=False),
        sa.Column("message_id", sa.String(998)),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("disposition_to", sa.String(254)),
        sa.Column("final_delivery", sa.Boolean, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "queue_recipients",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "queue_id",
            sa.String(32),
            sa.ForeignKey("queue_messages.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("address", sa.String(254), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(
            "state IN ('queued', 'delivering', 'deferred', 'delivered', 'bounced')", name="ck_queue_state"
        ),
    )
    op.create_index("ix_queue_recipients_due", "queue_recipients", ["state", "next_attempt_at"])
    op.create_table(
        "notification_tracking",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("message_id", sa.String(998), nullable=False),
        sa.Column("recipient", sa.String(254), nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("final_delivery", sa.Boolean, nullable=False),
        sa.Column("outcome", sa.String(16)),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("message_id", "recipient"),
    )


def downgrade() -> None:
    op.drop_table("notification_tracking")
    op.drop_index("ix_queue_recipients_due", "queue_recipients")
    op.drop_table("queue_recipients")
    op.drop_table("queue_messages")
    op.drop_table("delegations")
    op.drop_table("mailboxes")
