"""The audit archive: hash-chained events, the chain head, signed checkpoints.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from mssecure.db import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_GENESIS_HASH = "0" * 64  # mssecure.archive.records.GENESIS_HASH, frozen here as the migration must be


def upgrade() -> None:
    op.create_table(
        "archive_events",
        sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("time", UTCDateTime, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("outcome", sa.Text, nullable=False),
        sa.Column("actor", sa.Text),
        sa.Column("peer", sa.Text),
        sa.Column("queue_id", sa.Text),
        sa.Column("message_id", sa.Text),
        sa.Column("sha256", sa.String(64)),
        sa.Column("sender", sa.Text),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("reply", sa.Text),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    for column in ("time", "type", "queue_id", "message_id", "sha256", "sender", "hash"):
        op.create_index(f"ix_archive_events_{column}", "archive_events", [column])
    head = op.create_table(
        "archive_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("frontier", sa.LargeBinary, nullable=False),
        sa.CheckConstraint("id = 1", name="ck_archive_head_single"),
    )
    op.bulk_insert(head, [{"id": 1, "sequence": 0, "hash": _GENESIS_HASH, "frontier": b""}])
    op.create_table(
        "archive_checkpoints",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("tree_size", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("time", UTCDateTime, nullable=False),
        sa.Column("origin", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
    )
    op.create_index("ix_archive_checkpoints_sequence", "archive_checkpoints", ["sequence"])


def downgrade() -> None:
    op.drop_index("ix_archive_checkpoints_sequence", "archive_checkpoints")
    op.drop_table("archive_checkpoints")
    op.drop_table("archive_head")
    for column in ("time", "type", "queue_id", "message_id", "sha256", "sender", "hash"):
        op.drop_index(f"ix_archive_events_{column}", "archive_events")
    op.drop_table("archive_events")
