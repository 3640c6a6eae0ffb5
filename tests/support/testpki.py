"""A small PKI for tests, built with ``cryptography``: roots, intermediates, end entities, CRLs, CMS signatures.

Everything is explicit: key type and size, validity, key usage, EKU, rfc822Name SANs, the hash that signs the
certificate (SHA-1 included, for legacy cases). ``sign_cms`` is a minimal CMS SignedData producer (asn1crypto +
``cryptography``) for what neither ``PKCS7SignatureBuilder`` nor ``openssl cms`` makes easily: SHA-1 digests, a
chosen signingTime, a subjectKeyIdentifier signer identifier, missing attributes. Keys are test keys: never reuse them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asn1crypto import algos as asn1_algos
from asn1crypto import cms as asn1_cms
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Wide default validity around the real clock: PKCS7SignatureBuilder and openssl stamp the real signingTime.
DEFAULT_NOT_BEFORE = datetime(2020, 1, 1, tzinfo=UTC)
DEFAULT_NOT_AFTER = datetime(2045, 1, 1, tzinfo=UTC)

_KEY_USAGES = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# what cryptography's builders still sign with (SHA-1 is done by re-signing, see _resign)
_BUILDER_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha1": hashes.SHA256,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


@dataclass(frozen=True)
class Credential:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: PrivateKey

    @property
    def name(self) -> x509.Name:
        return self.certificate.subject

    def write_pem(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem.pem`` (certificate) and ``stem.key`` (unencrypted PKCS#8) for command-line tools."""
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path


def issue(
    common_name: str,
    *,
    issuer: Credential | None = None,
    key: PrivateKey | None = None,
    ca: bool | None = False,
    path_length: int | None = None,
    key_usage: Iterable[str] | None = None,
    extended_key_usage: Sequence[ObjectIdentifier] | None = None,
    emails: Sequence[str] = (),
    subject_email: str | None = None,
    not_before: datetime = DEFAULT_NOT_BEFORE,
    not_after: datetime = DEFAULT_NOT_AFTER,
    hash_algorithm: str = "sha256",
    serial: int | None = None,
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> Credential:
    """Issue a certificate; self-signed when ``issuer`` is None. ``ca=None`` omits basicConstraints,
    ``key_usage=None`` omits keyUsage, ``extended_key_usage=None`` omits EKU."""
    key = key or rsa_key()
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]
    if subject_email is not None:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, subject_email))
    subject = x509.Name(attributes)
    issuer_name = subject if issuer is None else issuer.name
    signing_key = key if issuer is None else issuer.key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if key_usage is not None:
        builder = builder.add_extension(_key_usage(set(key_usage)), critical=True)
    if extended_key_usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False)
    if emails:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(e) for e in emails]), critical=False
        )
    for extension, critical in extra_extensions:
        builder = builder.add_extension(extension, critical=critical)
    certificate = builder.sign(signing_key, _BUILDER_HASHES[hash_algorithm]())
    if hash_algorithm == "sha1":  # cryptography no longer signs with SHA-1: re-sign the TBS ourselves
        der = _resign(certificate.public_bytes(serialization.Encoding.DER), signing_key, "sha1", crl=False)
        certificate = x509.load_der_x509_certificate(der)
    return Credential(certificate, key)


def _resign(der: bytes, key: PrivateKey, digest: str, *, crl: bool) -> bytes:
    """Re-sign a certificate or CRL with ``digest`` (both algorithm identifiers replaced, RFC 5280 §4.1.1.2)."""
    structure = (asn1_crl.CertificateList if crl else asn1_x509.Certificate).load(der)
    tbs = structure["tbs_cert_list" if crl else "tbs_certificate"]
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm = asn1_algos.SignedDigestAlgorithm({"algorithm": f"{digest}_rsa"})
    else:
        algorithm = asn1_algos.SignedDigestAlgorithm({"algorithm": f"{digest}_ecdsa"})
    tbs["signature"] = algorithm
    tbs_der = tbs.dump(force=True)
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs_der, padding.PKCS1v15(), _HASHES[digest]())
    else:
        signature = key.sign(tbs_der, ec.ECDSA(_HASHES[digest]()))
    structure["signature_algorithm"] = asn1_algos.SignedDigestAlgorithm({"algorithm": algorithm["algorithm"].native})
    structure["signature" if crl else "signature_value"] = signature
    return bytes(structure.dump(force=True))


def _key_usage(names: set[str]) -> x509.KeyUsage:
    unknown = names - set(_KEY_USAGES)
    if unknown:
        raise ValueError(f"unknown key usages {sorted(unknown)}")
    flags = {name: name in names for name in _KEY_USAGES}
    return x509.KeyUsage(**flags, encipher_only=False, decipher_only=False)


def root_ca(common_name: str = "Test Root CA", **options: Any) -> Credential:
    options.setdefault("key_usage", {"key_cert_sign", "crl_sign"})
    return issue(common_name, ca=True, **options)


def intermediate_ca(common_name: str, issuer: Credential, **options: Any) -> Credential:
    options.setdefault("key_usage", {"key_cert_sign", "crl_sign"})
    options.setdefault("ca", True)
    return issue(common_name, issuer=issuer, **options)


def end_entity(email: str, issuer: Credential, **options: Any) -> Credential:
    """An S/MIME certificate: rfc822Name SAN ``email``, digitalSignature + keyEncipherment, emailProtection."""
    options.setdefault("key_usage", {"digital_signature", "key_encipherment"})
    options.setdefault("extended_key_usage", [ExtendedKeyUsageOID.EMAIL_PROTECTION])
    options.setdefault("emails", [email])
    return issue(email.partition("@")[0].title(), issuer=issuer, **options)


@dataclass(frozen=True)
class Revocation:
    serial: int
    date: datetime
    reason: x509.ReasonFlags | None = None


def crl(
    issuer: Credential,
    revoked: Iterable[Revocation] = (),
    *,
    this_update: datetime,
    next_update: datetime,
    hash_algorithm: str = "sha256",
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.name)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for entry in revoked:
        revoked_builder = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.date)
        if entry.reason is not None:
            revoked_builder = revoked_builder.add_extension(x509.CRLReason(entry.reason), critical=False)
        builder = builder.add_revoked_certificate(revoked_builder.build())
    signed = builder.sign(issuer.key, _BUILDER_HASHES[hash_algorithm]())
    if hash_algorithm == "sha1":
        der = _resign(signed.public_bytes(serialization.Encoding.DER), issuer.key, "sha1", crl=True)
        signed = x509.load_der_x509_crl(der)
    return signed


def sign_cms(
    content: bytes,
    signer: Credential,
    *,
    digest: str = "sha256",
    detached: bool = True,
    signing_time: datetime | None = None,
    certificates: Sequence[x509.Certificate] | None = None,
    signed_attributes: bool = True,
    content_type_attribute: bool = True,
    message_digest: bytes | None = None,
    use_key_identifier: bool = False,
) -> bytes:
    """A DER ContentInfo(SignedData) with one signer (RSA PKCS#1 v1.5 or ECDSA). ``certificates`` defaults to
    the signer's; ``message_digest`` overrides the computed messageDigest attribute."""
    hash_algorithm = _HASHES[digest]()
    signed_data_bytes = content
    attrs = None
    if signed_attributes:
        hasher = hashes.Hash(_HASHES[digest]())
        hasher.update(content)
        values: list[Any] = []
        if content_type_attribute:
            values.append({"type": "content_type", "values": ["data"]})
        if signing_time is not None:
            values.append({"type": "signing_time", "values": [asn1_cms.Time({"utc_time": signing_time})]})
        values.append({"type": "message_digest", "values": [message_digest or hasher.finalize()]})
        # DER SET OF: elements sorted by their encodings (X.690 §11.6)
        encoded = sorted(asn1_cms.CMSAttribute(value).dump() for value in values)
        attrs = asn1_cms.CMSAttributes([asn1_cms.CMSAttribute.load(item) for item in encoded])
        signed_data_bytes = attrs.dump()  # the universal SET OF encoding is what is signed (RFC 5652 §5.4)

    if isinstance(signer.key, rsa.RSAPrivateKey):
        signature = signer.key.sign(signed_data_bytes, padding.PKCS1v15(), hash_algorithm)
        signature_algorithm = {"algorithm": "rsassa_pkcs1v15"}
    else:
        signature = signer.key.sign(signed_data_bytes, ec.ECDSA(hash_algorithm))
        signature_algorithm = {"algorithm": f"{digest}_ecdsa"}

    signer_cert = asn1_x509.Certificate.load(signer.certificate.public_bytes(serialization.Encoding.DER))
    if use_key_identifier:
        sid = asn1_cms.SignerIdentifier({"subject_key_identifier": signer_cert.key_identifier})
    else:
        sid = asn1_cms.SignerIdentifier(
            {"issuer_and_serial_number": {"issuer": signer_cert.issuer, "serial_number": signer_cert.serial_number}}
        )
    signer_info: dict[str, Any] = {
        "version": "v3" if use_key_identifier else "v1",
        "sid": sid,
        "digest_algorithm": {"algorithm": digest},
        "signature_algorithm": signature_algorithm,
        "signature": signature,
    }
    if attrs is not None:
        signer_info["signed_attrs"] = attrs
    embedded = [signer.certificate] if certificates is None else list(certificates)
    signed_data = {
        "version": "v3" if use_key_identifier else "v1",
        "digest_algorithms": [{"algorithm": digest}],
        "encap_content_info": {"content_type": "data", "content": None if detached else content},
        "certificates": [asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER)) for c in embedded]
        or None,
        "signer_infos": [signer_info],
    }
    return bytes(asn1_cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump())


def openssl_cms_sign(
    content: bytes,
    signer: Credential,
    workdir: Path,
    *,
    digest: str = "sha256",
    detached: bool = True,
    certfile: Sequence[x509.Certificate] = (),
    extra_args: Sequence[str] = (),
) -> bytes:
    """``openssl cms -sign -binary -md <digest> -signer cert.pem -inkey key.pem -outform DER [-nodetach]``."""
    workdir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = signer.write_pem(workdir, "signer")
    content_path, out_path = workdir / "content.bin", workdir / "signature.der"
    content_path.write_bytes(content)
    command = ["openssl", "cms", "-sign", "-binary", "-md", digest, "-signer", str(cert_path), "-inkey", str(key_path)]
    command += ["-in", str(content_path), "-out", str(out_path), "-outform", "DER"]
    if not detached:
        command.append("-nodetach")
    if certfile:
        chain_path = workdir / "chain.pem"
        chain_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certfile))
        command += ["-certfile", str(chain_path)]
    command += list(extra_args)
    subprocess.run(command, check=True, capture_output=True)
    return out_path.read_bytes()


def days(count: float) -> timedelta:
    return timedelta(days=count)
