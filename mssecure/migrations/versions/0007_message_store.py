"""The archive's message store: sealed bodies addressed by SHA-256, and the copies that name them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from mssecure.db import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# mssecure.archive.store_models, frozen here as the migration must be
_SEALED_OR_PURGED = (
    "(purged_at IS NULL AND ciphertext IS NOT NULL AND nonce IS NOT NULL AND wrapped_key IS NOT NULL "
    "AND ephemeral_key IS NOT NULL) OR "
    "(purged_at IS NOT NULL AND ciphertext IS NULL AND nonce IS NULL AND wrapped_key IS NULL "
    "AND ephemeral_key IS NULL)"
)


def upgrade() -> None:
    op.create_table(
        "archive_bodies",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("stored_at", UTCDateTime, nullable=False),
        sa.Column("version", sa.SmallInteger, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("ephemeral_key", sa.LargeBinary),
        sa.Column("wrapped_key", sa.LargeBinary),
        sa.Column("nonce", sa.LargeBinary),
        sa.Column("ciphertext", sa.LargeBinary),
        sa.Column("last_received_at", UTCDateTime),
        sa.Column("last_delivered_at", UTCDateTime),
        sa.Column("purged_at", UTCDateTime),
        sa.CheckConstraint(_SEALED_OR_PURGED, name="ck_archive_bodies_sealed_or_purged"),
    )
    op.create_table(
        "archive_copies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sha256", sa.String(64), sa.ForeignKey("archive_bodies.sha256"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("queue_id", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("recipient", sa.Text),
        sa.Column("stored_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("kind IN ('received', 'delivered')", name="ck_archive_copies_kind"),
    )
    for column in ("sha256", "queue_id", "message_id"):
        op.create_index(f"ix_archive_copies_{column}", "archive_copies", [column])


def downgrade() -> None:
    for column in ("sha256", "queue_id", "message_id"):
        op.drop_index(f"ix_archive_copies_{column}", "archive_copies")
    op.drop_table("archive_copies")
    op.drop_table("archive_bodies")
