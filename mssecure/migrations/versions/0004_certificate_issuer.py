"""Certificates are unique per (issuer, serial), no longer per serial: peers' CAs choose their serials too.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# 0002 left the constraint on serial unnamed: PostgreSQL named it certificates_serial_key, SQLite keeps no name.
# Batch mode (SQLite rebuilds the table) gives an unnamed constraint the name of this convention so it can be dropped.
_NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _serial_constraint() -> str:
    for constraint in sa.inspect(op.get_bind()).get_unique_constraints("certificates"):
        if constraint["column_names"] == ["serial"]:
            return constraint["name"] or "uq_certificates_serial"
    raise RuntimeError("the certificates table has no unique constraint on serial to replace")


def upgrade() -> None:
    serial_constraint = _serial_constraint()
    with op.batch_alter_table("certificates", naming_convention=_NAMING) as batch_op:
        batch_op.drop_constraint(serial_constraint, type_="unique")
        batch_op.create_unique_constraint("uq_certificates_issuer_serial", ["issuer", "serial"])
        batch_op.create_index("ix_certificates_serial", ["serial"])


def downgrade() -> None:
    # Fails, as it should, when two issuers' certificates share a serial.
    with op.batch_alter_table("certificates", naming_convention=_NAMING) as batch_op:
        batch_op.drop_index("ix_certificates_serial")
        batch_op.drop_constraint("uq_certificates_issuer_serial", type_="unique")
        batch_op.create_unique_constraint("certificates_serial_key", ["serial"])
