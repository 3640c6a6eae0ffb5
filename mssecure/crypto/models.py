"""Storage of certificates: ours (issued by the operator CA, with their encrypted private keys) and peers'."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from mssecure.db import Base, UTCDateTime

__all__ = ["CertificateRecord", "TrustedOperator"]


class CertificateRecord(Base):
    """One certificate bound to a directory address. ``status``: valid, hold (suspended), revoked.

    A certificate is identified by its issuer and serial number together (RFC 5280 §4.1.2.2: a serial is unique per
    CA only): peers' certificates, or ours after a change of CA, may share a serial with one of ours."""

    __tablename__ = "certificates"
    __table_args__ = (
        sa.UniqueConstraint("issuer", "serial", name="uq_certificates_issuer_serial"),
        sa.CheckConstraint("status IN ('valid', 'hold', 'revoked')", name="ck_certificate_status"),
        sa.CheckConstraint("purpose IN ('smime', 'tls')", name="ck_certificate_purpose"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    serial: Mapped[str] = mapped_column(sa.String(64), index=True)  # hex, uppercase, no leading zero
    issuer: Mapped[str] = mapped_column(sa.String(500))  # RFC 4514
    address: Mapped[str] = mapped_column(sa.String(254), index=True)
    purpose: Mapped[str] = mapped_column(sa.String(8))
    subject: Mapped[str] = mapped_column(sa.String(500))
    key_type: Mapped[str] = mapped_column(sa.String(16))
    fingerprint: Mapped[str] = mapped_column(sa.String(100))
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    status: Mapped[str] = mapped_column(sa.String(8), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revocation_reason: Mapped[str | None] = mapped_column(sa.String(32))
    certificate_pem: Mapped[str] = mapped_column(sa.Text)
    private_key_pem: Mapped[str | None] = mapped_column(sa.Text)  # encrypted PKCS#8; None for peers' certificates
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TrustedOperator(Base):
    """A peer operator of the trust space, as its last imported trust bundle describes it."""

    __tablename__ = "trusted_operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    domain: Mapped[str] = mapped_column(sa.String(253), unique=True)  # the peer's main domain
    domains: Mapped[list[str]] = mapped_column(sa.JSON)  # every domain it serves (main included)
    hostname: Mapped[str] = mapped_column(sa.String(253))
    relay: Mapped[str] = mapped_column(sa.String(300))  # host:port of its inbound relay
    ca_pem: Mapped[str] = mapped_column(sa.Text)
    ca_fingerprint: Mapped[str] = mapped_column(sa.String(100))
    crl_der: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    dkim_selector: Mapped[str] = mapped_column(sa.String(63))
    dkim_record: Mapped[str] = mapped_column(sa.Text)  # TXT value "v=DKIM1; k=rsa; p=..."
    bundle_created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime)
    entries: Mapped[int] = mapped_column(sa.Integer)
