"""The trust space: peer operators imported from their trust bundles.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from mssecure.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trusted_operators",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("domains", sa.JSON, nullable=False),
        sa.Column("hostname", sa.String(253), nullable=False),
        sa.Column("relay", sa.String(300), nullable=False),
        sa.Column("ca_pem", sa.Text, nullable=False),
        sa.Column("ca_fingerprint", sa.String(100), nullable=False),
        sa.Column("crl_der", sa.LargeBinary),
        sa.Column("dkim_selector", sa.String(63), nullable=False),
        sa.Column("dkim_record", sa.Text, nullable=False),
        sa.Column("bundle_created_at", UTCDateTime, nullable=False),
        sa.Column("imported_at", UTCDateTime, nullable=False),
        sa.Column("entries", sa.Integer, nullable=False),
        sa.UniqueConstraint("domain"),
    )


def downgrade() -> None:
    op.drop_table("trusted_operators")
