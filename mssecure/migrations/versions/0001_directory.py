"""The directory of certified addresses and its change history.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from mssecure.db import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TEXT_COLUMNS = (
    "civility",
    "last_name",
    "first_name",
    "category_code",
    "category_label",
    "profession_code",
    "profession_label",
    "specialty_code",
    "specialty_label",
)
_STRUCTURE_TEXT = (
    "organization",
    "trade_name",
    "service",
    "address_complement",
    "address_distribution",
    "street_number",
    "street_number_suffix",
    "street_type",
    "street_name",
    "locality",
    "routing_line",
    "postal_code",
    "department",
    "country",
)


def upgrade() -> None:
    op.create_table(
        "directory_entries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("address", sa.String(254), nullable=False),
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("identifier_type", sa.String(8)),
        sa.Column("identifier", sa.String(16)),
        sa.Column("national_id", sa.String(17)),
        *(sa.Column(name, sa.String(200)) for name in _TEXT_COLUMNS),
        sa.Column("structure_id_type", sa.String(8)),
        sa.Column("structure_id", sa.String(16)),
        *(sa.Column(name, sa.String(200)) for name in _STRUCTURE_TEXT),
        sa.Column("dematerialisation", sa.Boolean),
        sa.Column("unlisted", sa.Boolean, nullable=False),
        sa.Column("search_text", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("address"),
        sa.CheckConstraint("kind IN ('personal', 'organizational', 'applicative')", name="ck_entry_kind"),
        sa.CheckConstraint("status IN ('active', 'suspended', 'revoked')", name="ck_entry_status"),
    )
    op.create_index("ix_directory_entries_domain", "directory_entries", ["domain"])
    op.create_index("ix_directory_entries_status", "directory_entries", ["status"])
    op.create_index("ix_directory_entries_national_id", "directory_entries", ["national_id"])
    op.create_index("ix_directory_entries_structure_id", "directory_entries", ["structure_id"])
    op.create_table(
        "directory_changes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("entry_id", sa.Integer, sa.ForeignKey("directory_entries.id"), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("source", sa.String(300), nullable=False),
        sa.Column("reason", sa.String(500)),
        sa.Column("changes", sa.JSON),
    )
    op.create_index("ix_directory_changes_entry_id", "directory_changes", ["entry_id"])


def downgrade() -> None:
    op.drop_table("directory_changes")
    op.drop_table("directory_entries")
