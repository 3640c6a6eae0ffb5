"""The index of prescription identifiers delivered to local mailboxes (duplicates are flagged or refused).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from mssecure.db import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prescription_deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("prescription_id", sa.String(128), nullable=False),
        sa.Column("recipient", sa.String(254), nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("message_id", sa.Text),
        sa.Column("first_seen_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("prescription_id", "recipient"),
    )
    op.create_index("ix_prescription_deliveries_prescription_id", "prescription_deliveries", ["prescription_id"])


def downgrade() -> None:
    op.drop_index("ix_prescription_deliveries_prescription_id", table_name="prescription_deliveries")
    op.drop_table("prescription_deliveries")
