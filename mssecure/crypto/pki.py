"""The operator's PKI: its CA, the relay's TLS certificate, S/MIME certificates of directory entries, the CRL.

Pure functions over ``cryptography`` objects: time is passed in (``now``), nothing is read or written here.
Profiles follow RFC 5280 and RFC 8550 (S/MIME certificates), in the manner of the IGC-Santé: a personal
certificate names the professional and carries the national identifier (``8`` + RPPS) in the subject
serialNumber attribute; an organizational one names the structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mssecure.directory.records import EntryData, Kind
from mssecure.errors import CertificateError

__all__ = [
    "REVOCATION_REASONS",
    "Issued",
    "KeyType",
    "Revocation",
    "build_crl",
    "check_ca",
    "fingerprint",
    "issue_smime",
    "issue_tls",
    "new_archive_key",
    "new_archive_store_key",
    "new_ca",
    "new_dkim_key",
    "serial_hex",
]

KeyType = Literal["rsa", "p256"]
_BACKDATE = timedelta(minutes=5)  # tolerate clock skew between operators
REVOCATION_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: Any  # the private key (RSA, EC)


@dataclass(frozen=True)
class Revocation:
    serial: int
    revoked_at: datetime
    reason: str  # a key of REVOCATION_REASONS


def serial_hex(certificate: x509.Certificate) -> str:
    return f"{certificate.serial_number:X}"


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 fingerprint as colon-separated hex, as ``openssl x509 -fingerprint -sha256`` prints it."""
    return ":".join(f"{b:02X}" for b in certificate.fingerprint(hashes.SHA256()))


def _new_key(key_type: KeyType, rsa_bits: int = 2048) -> Any:
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


def new_dkim_key() -> rsa.RSAPrivateKey:
    """RSA-2048 for DKIM (RFC 8301: at least 1024, 2048 recommended; rsa-sha256 is universally verified)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_archive_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def new_archive_store_key() -> x25519.X25519PrivateKey:
    """The message store's key (X25519, RFC 7748): the archive key signs and cannot encrypt, so the store has its
    own key pair; writers seal with its public half, only the holder of the master secret can open."""
    return x25519.X25519PrivateKey.generate()


def _name(*attributes: tuple[x509.ObjectIdentifier, str | None]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes if value])


def new_ca(domain: str, *, now: datetime, years: int = 10) -> Issued:
    """A self-signed root CA for the operator of ``domain`` (RSA-3072, SHA-256, path length 0)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = _name(
        (NameOID.COUNTRY_NAME, "FR"),
        (NameOID.ORGANIZATION_NAME, domain),
        (NameOID.COMMON_NAME, f"mssecure operator CA {domain}"),
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def check_ca(certificate: x509.Certificate, key: Any, *, now: datetime) -> None:
    """Refuse a CA (imported with ``init --ca-cert/--ca-key``) that cannot issue our certificates."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CertificateError("the CA certificate has no basicConstraints extension") from None
    if not constraints.ca:
        raise CertificateError("the CA certificate is not a CA (basicConstraints CA:FALSE)")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        if not (usage.key_cert_sign and usage.crl_sign):
            raise CertificateError("the CA certificate's key usage does not allow keyCertSign and cRLSign")
    except x509.ExtensionNotFound:
        pass
    if _spki(certificate.public_key()) != _spki(key.public_key()):
        raise CertificateError("the CA key does not match the CA certificate")
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise CertificateError("the CA certificate is not valid now")


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def _ca_extensions(builder: x509.CertificateBuilder, ca: Issued) -> x509.CertificateBuilder:
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return builder.issuer_name(ca.certificate.subject).add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
    )


def _end_entity(ca: Issued, subject: x509.Name, key: Any, *, now: datetime, days: int) -> x509.CertificateBuilder:
    not_after = min(now + timedelta(days=days), ca.certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _ca_extensions(builder, ca)


def _key_usage(key: Any) -> x509.KeyUsage:
    encipherment = isinstance(key, rsa.RSAPrivateKey)  # an EC key agrees keys, it does not encipher them
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=encipherment,
        data_encipherment=False,
        key_agreement=not encipherment,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def issue_tls(ca: Issued, hostname: str, *, now: datetime, days: int = 397) -> Issued:
    """The relay's certificate: serverAuth for its listeners and clientAuth for mTLS to peer operators."""
    key = _new_key("rsa")
    organizations = ca.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    organization = str(organizations[0].value) if organizations else None
    subject = _name((NameOID.ORGANIZATION_NAME, organization), (NameOID.COMMON_NAME, hostname))
    certificate = (
        _end_entity(ca, subject, key, now=now, days=days)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(_key_usage(key), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(certificate, key)


def smime_subject(entry: EntryData) -> x509.Name:
    """Personal: the professional's name and national identifier; otherwise: the structure and service."""
    if entry.kind is Kind.PERSONAL:
        common = " ".join(p for p in (entry.first_name, entry.last_name) if p) or entry.address
        return _name(
            (NameOID.COUNTRY_NAME, "FR"),
            (NameOID.ORGANIZATION_NAME, entry.organization),
            (NameOID.SURNAME, entry.last_name),
            (NameOID.GIVEN_NAME, entry.first_name),
            (NameOID.SERIAL_NUMBER, entry.national_id),
            (NameOID.COMMON_NAME, common[:64]),
        )
    common = entry.service or entry.organization or entry.address
    return _name(
        (NameOID.COUNTRY_NAME, "FR"),
        (NameOID.ORGANIZATION_NAME, entry.organization),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, entry.service),
        (NameOID.SERIAL_NUMBER, entry.structure_id),
        (NameOID.COMMON_NAME, common[:64]),
    )


def issue_smime(
    ca: Issued,
    entry: EntryData,
    *,
    now: datetime,
    crl_url: str,
    key_type: KeyType = "rsa",
    days: int = 730,
) -> Issued:
    """An S/MIME certificate for a directory entry (RFC 8550 §4.4): the address as rfc822Name, SHA-256,
    digitalSignature (+ keyEncipherment for RSA), EKU emailProtection and clientAuth (so the same certificate
    authenticates a mail client to submission), and where to find the CRL."""
    key = _new_key(key_type)
    certificate = (
        _end_entity(ca, smime_subject(entry), key, now=now, days=days)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(entry.address)]), critical=False)
        .add_extension(_key_usage(key), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
            ),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(certificate, key)


def build_crl(
    ca: Issued, revocations: Sequence[Revocation], *, now: datetime, next_update: timedelta = timedelta(days=7)
) -> x509.CertificateRevocationList:
    """The CA's CRL (RFC 5280 §5) listing ``revocations``; certificateHold entries are suspensions."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
    )
    for revocation in revocations:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(revocation.serial)
            .revocation_date(revocation.revoked_at)
            .add_extension(x509.CRLReason(REVOCATION_REASONS[revocation.reason]), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca.key, hashes.SHA256())
