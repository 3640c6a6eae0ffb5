"""The operator's cryptographic material on disk, and the certificates it issues to directory entries.

Layout under the data directory (all private keys encrypted under the master secret, see ``keys``)::

    master.key                   the master secret (unless $MSSECURE_MASTER_KEY), 0600
    keys/{ca,tls,dkim,archive}.key
    pki/ca.crt  pki/tls.crt      the operator CA and the relay's certificate (PEM)
    pki/ca.crl                   the CA's CRL (DER), rewritten on every revocation, hold or release
    dkim/<selector>.txt          the DNS TXT record that publishes the DKIM public key
    archive.pub                  the archive's Ed25519 public key (PEM), for auditors

S/MIME certificates and their (encrypted) keys live in the database, so that every relay node sharing it can sign
and decrypt for any local address.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy.orm import Session

from mssecure.config import Config
from mssecure.crypto.keys import KeyStore, write_private_file
from mssecure.crypto.models import CertificateRecord
from mssecure.crypto.pki import (
    REVOCATION_REASONS,
    Issued,
    KeyType,
    Revocation,
    build_crl,
    check_ca,
    fingerprint,
    issue_smime,
    issue_tls,
    new_archive_key,
    new_ca,
    new_dkim_key,
    serial_hex,
)
from mssecure.db import utcnow
from mssecure.directory.models import Entry
from mssecure.directory.records import Status
from mssecure.errors import CertificateError, KeyStoreError

__all__ = ["CertificateService", "OperatorMaterial"]

_FINGERPRINT = re.compile(r"[0-9A-F]{64}")  # SHA-256; a serial has at most 40 hex digits (RFC 5280 §4.1.2.2)


class OperatorMaterial:
    """The operator's own keys and certificates (files under the data directory)."""

    def __init__(self, config: Config, keystore: KeyStore | None = None) -> None:
        self.config = config
        self.data_dir = config.data_dir
        self.keystore = keystore or KeyStore(config.data_dir)
        self._ca: Issued | None = None

    @property
    def ca_cert_path(self) -> Path:
        return self.data_dir / "pki" / "ca.crt"

    @property
    def tls_cert_path(self) -> Path:
        return self.data_dir / "pki" / "tls.crt"

    @property
    def crl_path(self) -> Path:
        return self.data_dir / "pki" / "ca.crl"

    @property
    def dkim_record_path(self) -> Path:
        return self.data_dir / "dkim" / f"{self.config.dkim.selector}.txt"

    @property
    def archive_public_path(self) -> Path:
        return self.data_dir / "archive.pub"

    def create(self, *, now: datetime, imported_ca: tuple[bytes, bytes] | None = None) -> str:
        """Create the master secret (unless in the environment), the CA (or take ``imported_ca``: PEM
        certificate and key), the TLS certificate, the DKIM and archive keys; returns the DKIM TXT record."""
        self.keystore.create_master_secret()
        ca = new_ca(self.config.operator.domain, now=now) if imported_ca is None else _load_ca(*imported_ca, now=now)
        self.keystore.save("ca", ca.key)
        _write_public(self.ca_cert_path, ca.certificate.public_bytes(serialization.Encoding.PEM))
        self._ca = ca
        tls = issue_tls(ca, self.config.operator.hostname, now=now)
        self.keystore.save("tls", tls.key)
        _write_public(self.tls_cert_path, tls.certificate.public_bytes(serialization.Encoding.PEM))
        dkim = new_dkim_key()
        self.keystore.save("dkim", dkim)
        record = self.dkim_txt_record(dkim.public_key())
        _write_public(self.dkim_record_path, (record + "\n").encode())
        archive = new_archive_key()
        self.keystore.save("archive", archive)
        _write_public(
            self.archive_public_path,
            archive.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        self.write_crl(build_crl(ca, [], now=now))
        return record

    def dkim_txt_record(self, public_key: Any) -> str:
        """``<selector>._domainkey.<domain>. IN TXT "v=DKIM1; k=rsa; p=..."`` (RFC 6376 §3.6.1)."""
        der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        name = f"{self.config.dkim.selector}._domainkey.{self.config.operator.domain}."
        return f'{name} IN TXT "v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"'

    def ca(self) -> Issued:
        if self._ca is None:
            certificate = _read_certificate(self.ca_cert_path)
            self._ca = Issued(certificate, self.keystore.load("ca"))
        return self._ca

    def ca_certificate(self) -> x509.Certificate:
        return self._ca.certificate if self._ca else _read_certificate(self.ca_cert_path)

    def tls(self) -> Issued:
        return Issued(_read_certificate(self.tls_cert_path), self.keystore.load("tls"))

    def write_crl(self, crl: x509.CertificateRevocationList) -> Path:
        _write_public(self.crl_path, crl.public_bytes(serialization.Encoding.DER))
        return self.crl_path

    def crl(self) -> x509.CertificateRevocationList:
        try:
            return x509.load_der_x509_crl(self.crl_path.read_bytes())
        except FileNotFoundError:
            raise CertificateError(f"no CRL at {self.crl_path} (run `mssecure certs crl`)") from None


def _write_public(path: Path, data: bytes) -> None:
    write_private_file(path, data, mode=0o644)


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise KeyStoreError(
            f"missing {path}: this operator has no PKI yet (was it created by `mssecure init`?)"
        ) from None


def _load_ca(certificate_pem: bytes, key_pem: bytes, *, now: datetime) -> Issued:
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError:
        raise CertificateError("--ca-cert is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise CertificateError("--ca-key is not an unencrypted PEM private key") from None
    check_ca(certificate, key, now=now)
    return Issued(certificate, key)


@dataclass(frozen=True)
class Renewal:
    old: list[CertificateRecord]
    new: CertificateRecord


class CertificateService:
    """Issue, list, renew, revoke, suspend S/MIME certificates of directory entries; publish the CRL."""

    def __init__(self, session: Session, material: OperatorMaterial, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.session = session
        self.material = material
        self.clock = clock

    def _local_entry(self, address: str) -> Entry:
        entry = self.session.scalars(sa.select(Entry).where(Entry.address == address.strip().lower())).one_or_none()
        if entry is None:
            raise CertificateError(f"no directory entry for {address}")
        if entry.domain not in self.material.config.operator.domains:
            raise CertificateError(f"{entry.address} is a peer operator's address: its certificates come from them")
        if entry.status != Status.ACTIVE:
            raise CertificateError(f"{entry.address} is {entry.status}: certificates are issued to active entries only")
        return entry

    def issue(self, address: str, *, key_type: KeyType = "rsa", days: int | None = None) -> CertificateRecord:
        entry = self._local_entry(address)
        now = self.clock()
        issued = issue_smime(
            self.material.ca(),
            entry.to_data(),
            now=now,
            crl_url=self.material.config.crl_url,
            key_type=key_type,
            days=days or self.material.config.pki.smime_validity_days,
        )
        certificate = issued.certificate
        record = CertificateRecord(
            serial=serial_hex(certificate),
            issuer=certificate.issuer.rfc4514_string(),
            address=entry.address,
            purpose="smime",
            subject=certificate.subject.rfc4514_string(),
            key_type=key_type,
            fingerprint=fingerprint(certificate),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            status="valid",
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
            private_key_pem=self.material.keystore.seal(issued.key).decode(),
            created_at=now,
        )
        self.session.add(record)
        self.session.flush()
        return record

    def records(
        self, *, address: str | None = None, status: str | None = None, expiring_within: int | None = None
    ) -> Iterator[CertificateRecord]:
        query = sa.select(CertificateRecord).order_by(CertificateRecord.address, CertificateRecord.not_after)
        if address:
            query = query.where(CertificateRecord.address == address.strip().lower())
        if status:
            query = query.where(CertificateRecord.status == status)
        if expiring_within is not None:
            limit = self.clock() + timedelta(days=expiring_within)
            query = query.where(CertificateRecord.not_after <= limit, CertificateRecord.status != "revoked")
        yield from self.session.scalars(query)

    def find(self, serial_or_address: str) -> list[CertificateRecord]:
        """The certificates of an address (newest first), or the one with this serial number (hex, colons allowed)
        or this SHA-256 fingerprint (64 hex digits). A serial is unique per issuer only (RFC 5280 §4.1.2.2): when
        certificates of several issuers have it, the lookup is refused and names them by fingerprint."""
        key = serial_or_address.strip()
        if "@" in key:
            found = list(self.records(address=key))
            found.reverse()
        else:
            compact = key.upper().replace(":", "").replace(" ", "")
            found = []
            if _FINGERPRINT.fullmatch(compact):
                colons = ":".join(compact[i : i + 2] for i in range(0, len(compact), 2))
                by_fingerprint = sa.select(CertificateRecord).where(CertificateRecord.fingerprint == colons)
                found = list(self.session.scalars(by_fingerprint))
            if not found:
                serial = compact.lstrip("0") or "0"
                query = sa.select(CertificateRecord).where(CertificateRecord.serial == serial)
                found = list(self.session.scalars(query.order_by(CertificateRecord.issuer)))
                if len(found) > 1:
                    which = "; ".join(f"{r.fingerprint} issued by {r.issuer} to {r.address}" for r in found)
                    raise CertificateError(
                        f"serial {serial} is ambiguous: {len(found)} certificates of different issuers have it "
                        f"({which}); name one by its SHA-256 fingerprint"
                    )
        if not found:
            raise CertificateError(f"no certificate for {serial_or_address}")
        return found

    def current(self, address: str) -> CertificateRecord:
        """The newest valid certificate of an address that has a private key here."""
        now = self.clock()
        for record in self.find(address):
            if record.status == "valid" and record.private_key_pem and record.not_before <= now <= record.not_after:
                return record
        raise CertificateError(f"{address} has no valid certificate (issue one with `mssecure certs issue`)")

    def for_encryption(self, address: str) -> x509.Certificate:
        """The certificate to encrypt to ``address``: its newest valid one (ours or a peer's)."""
        now = self.clock()
        for record in self.find(address):
            if record.status == "valid" and record.not_before <= now <= record.not_after:
                return _certificate_of(record)
        raise CertificateError(f"{address} has no valid certificate to encrypt to")

    def credential(self, record: CertificateRecord) -> tuple[x509.Certificate, Any]:
        """The record's certificate and its private key, decrypted under the master secret."""
        return _certificate_of(record), self.key_of(record)

    def signing_key(self, address: str) -> tuple[x509.Certificate, Any]:
        """The certificate and key ``address`` signs with: its current ones (see ``current``)."""
        return self.credential(self.current(address))

    def decryption_keys(self, address: str) -> list[tuple[x509.Certificate, Any]]:
        """Every (certificate, key) of ``address`` that may have been encrypted to, newest first (revoked ones
        too: mail encrypted before a revocation must stay readable)."""
        pairs = [self.credential(r) for r in self.find(address) if r.private_key_pem is not None]
        if not pairs:
            raise CertificateError(f"{address} has no private key here")
        return pairs

    def renew(self, address: str, *, key_type: KeyType | None = None) -> Renewal:
        previous = [r for r in self.records(address=address) if r.status != "revoked"]
        new = self.issue(address, key_type=key_type or (previous[-1].key_type if previous else "rsa"))  # type: ignore[arg-type]
        for record in previous:
            self._revoke(record, "superseded")
        self.publish_crl()
        return Renewal(previous, new)

    def revoke(self, serial_or_address: str, *, reason: str) -> list[CertificateRecord]:
        if reason not in REVOCATION_REASONS or reason == "certificateHold":
            known = ", ".join(r for r in REVOCATION_REASONS if r != "certificateHold")
            raise CertificateError(f"unknown revocation reason {reason!r} (expected one of {known})")
        records = [r for r in self.find(serial_or_address) if r.status != "revoked"]
        if any(r.private_key_pem is None for r in records):
            raise CertificateError(
                "a peer operator's certificate is revoked by its operator (its CRL comes with its trust bundle); "
                "to stop trusting the address here, revoke its directory entry"
            )
        if not records:
            raise CertificateError(f"{serial_or_address}: every certificate is already revoked")
        for record in records:
            self._revoke(record, reason)
        self.publish_crl()
        return records

    def _revoke(self, record: CertificateRecord, reason: str) -> None:
        record.status, record.revoked_at, record.revocation_reason = "revoked", self.clock(), reason

    def entry_status_changed(self, address: str, status: Status) -> None:
        """Follow the directory: suspension holds the entry's certificates, reactivation releases them,
        revocation revokes them (reason cessationOfOperation). The CRL is republished when anything changed."""
        changed = False
        for record in self.session.scalars(sa.select(CertificateRecord).where(CertificateRecord.address == address)):
            if record.status == "revoked" or record.private_key_pem is None:
                continue
            if status is Status.SUSPENDED and record.status == "valid":
                record.status, record.revoked_at, record.revocation_reason = "hold", self.clock(), "certificateHold"
            elif status is Status.ACTIVE and record.status == "hold":
                record.status, record.revoked_at, record.revocation_reason = "valid", None, None
            elif status is Status.REVOKED:
                self._revoke(record, "cessationOfOperation")
            else:
                continue
            changed = True
        if changed:
            self.publish_crl()

    def publish_crl(self) -> Path:
        """Rewrite the CRL: every revoked or held certificate issued by our CA."""
        self.session.flush()
        issuer = self.material.ca_certificate().subject.rfc4514_string()
        query = sa.select(CertificateRecord).where(
            CertificateRecord.issuer == issuer, CertificateRecord.status.in_(("revoked", "hold"))
        )
        revocations = [
            Revocation(int(r.serial, 16), r.revoked_at or self.clock(), r.revocation_reason or "unspecified")
            for r in self.session.scalars(query)
        ]
        return self.material.write_crl(build_crl(self.material.ca(), revocations, now=self.clock()))

    def key_of(self, record: CertificateRecord) -> Any:
        if record.private_key_pem is None:
            raise CertificateError(f"certificate {record.serial} has no private key here")
        return self.material.keystore.unseal(record.private_key_pem.encode())

    def export_p12(self, address: str, password: bytes) -> bytes:
        """The address's current certificate, key and our CA as a PKCS#12 that mail clients import
        (PBES2 AES-256-CBC, SHA-256 MAC: Thunderbird and Outlook on Windows 10+ read it)."""
        if len(password) < 8:
            raise CertificateError("the PKCS#12 password must have at least 8 characters")
        record = self.current(address)
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(100_000)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(password)
        )
        certificate, key = self.credential(record)
        return pkcs12.serialize_key_and_certificates(
            record.address.encode(), key, certificate, [self.material.ca_certificate()], encryption
        )


def _certificate_of(record: CertificateRecord) -> x509.Certificate:
    return x509.load_pem_x509_certificate(record.certificate_pem.encode())
