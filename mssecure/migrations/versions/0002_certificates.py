"""Certificates of directory entries (S/MIME) and of the relay (TLS).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from mssecure.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(500), nullable=False),
        sa.Column("address", sa.String(254), nullable=False),
        sa.Column("purpose", sa.String(8), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("key_type", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(100), nullable=False),
        sa.Column("not_before", UTCDateTime, nullable=False),
        sa.Column("not_after", UTCDateTime, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("revoked_at", UTCDateTime),
        sa.Column("revocation_reason", sa.String(32)),
        sa.Column("certificate_pem", sa.Text, nullable=False),
        sa.Column("private_key_pem", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("serial"),
        sa.CheckConstraint("status IN ('valid', 'hold', 'revoked')", name="ck_certificate_status"),
        sa.CheckConstraint("purpose IN ('smime', 'tls')", name="ck_certificate_purpose"),
    )
    op.create_index("ix_certificates_address", "certificates", ["address"])
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"])
    op.create_index("ix_certificates_status", "certificates", ["status"])


def downgrade() -> None:
    op.drop_table("certificates")
