"""CMS verification against real messages of the Direct Project reference implementations (Java and .NET).

The messages are enveloped; each test decrypts with ``cryptography``, cuts the inner ``multipart/signed`` at its
boundary in the raw bytes (never re-serialised), and verifies the detached signature. Expected outcomes are those
of ``tests/data/direct-ri/README.md``.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as symmetric_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

from mssecure.crypto.cms import (
    LEGACY,
    STRICT,
    SignerResult,
    VerificationPolicy,
    validate_certificate,
    verify_signed_data,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "direct-ri"
NOW = datetime.now(UTC)


def _cert(relative: str) -> x509.Certificate:
    data = (DATA / relative).read_bytes()
    if data.startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _enveloped_der(message: bytes) -> bytes:
    """The DER ContentInfo of an ``application/pkcs7-mime`` message (base64 body; BER re-encoded as DER)."""
    separator = b"\r\n\r\n" if b"\r\n\r\n" in message else b"\n\n"
    body = message.split(separator, 1)[1]
    # cryptography parses DER only; the Java RI writes BER with indefinite lengths.
    return bytes(asn1_cms.ContentInfo.load(base64.b64decode(body)).dump(force=True))


def _decrypt(enveloped: bytes, key: rsa.RSAPrivateKey) -> bytes:
    """Key transport (RSA PKCS#1 v1.5 or RSAES-OAEP SHA-1) then AES-CBC or 3DES-CBC, with cryptography primitives:
    ``pkcs7_decrypt_der`` supports neither OAEP nor 3DES (RFC 5652 §6.2.1, RFC 3370 §4.3, RFC 3560)."""
    enveloped_data = asn1_cms.ContentInfo.load(enveloped)["content"]
    recipient = enveloped_data["recipient_infos"][0].chosen
    transport = recipient["key_encryption_algorithm"]["algorithm"].native
    if transport == "rsaes_oaep":
        sha1 = hashes.SHA1()  # noqa: S303 - the message's RSAES-OAEP uses the default parameters (RFC 3560 §2.2)
        key_padding: padding.AsymmetricPadding = padding.OAEP(padding.MGF1(sha1), sha1, None)
    else:
        key_padding = padding.PKCS1v15()
    content_key = key.decrypt(recipient["encrypted_key"].native, key_padding)
    info = enveloped_data["encrypted_content_info"]
    algorithm = info["content_encryption_algorithm"]
    cipher = (
        TripleDES(content_key) if algorithm["algorithm"].native == "tripledes_3key" else algorithms.AES(content_key)
    )
    decryptor = Cipher(cipher, modes.CBC(algorithm["parameters"].native)).decryptor()
    padded = decryptor.update(info["encrypted_content"].native) + decryptor.finalize()
    unpadder = symmetric_padding.PKCS7(cipher.block_size).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _split_signed(entity: bytes) -> tuple[bytes, bytes]:
    """The first part (exact raw bytes, RFC 1847 §2.1) and the DER signature of a ``multipart/signed`` entity."""
    header_end = re.search(rb"\r?\n\r?\n", entity)
    assert header_end is not None
    match = re.search(rb'boundary="?([^";\r\n]+)"?', entity[: header_end.start()], re.IGNORECASE)
    assert match is not None
    delimiter = b"--" + match.group(1)
    first = entity.index(delimiter + b"\r\n") + len(delimiter) + 2
    second = entity.index(b"\r\n" + delimiter, first)
    signed_part = entity[first:second]
    signature_entity = entity[second + 2 + len(delimiter) : entity.index(b"\r\n" + delimiter + b"--", second + 2)]
    signature_body = re.split(rb"\r?\n\r?\n", signature_entity, maxsplit=1)[1]
    return signed_part, base64.b64decode(b"".join(signature_body.split()))


@pytest.fixture(scope="module")
def encrypted_message_2() -> tuple[bytes, bytes]:
    """EncryptedMessage2.txt: decrypted with pkcs7_decrypt_der and ryan's key (Java RI, 2021 certificates)."""
    certificate = _cert("certs/ryan.der")
    key = serialization.load_der_private_key((DATA / "certs/ryanKey.der").read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    enveloped = _enveloped_der((DATA / "messages/EncryptedMessage2.txt").read_bytes())
    inner = pkcs7.pkcs7_decrypt_der(enveloped, certificate, key, [])
    return _split_signed(inner)


@pytest.fixture(scope="module")
def encrypted_message_3() -> tuple[bytes, bytes]:
    """EncryptedMessage3.txt: .NET to Java, 2010, 3DES, SHA-1, RSA-1024."""
    bundle = pkcs12.load_pkcs12((DATA / "certs/gm2552encrypted.p12").read_bytes(), b"1kingpuff")
    assert isinstance(bundle.key, rsa.RSAPrivateKey)
    enveloped = _enveloped_der((DATA / "messages/EncryptedMessage3.txt").read_bytes())
    return _split_signed(_decrypt(enveloped, bundle.key))


@pytest.fixture(scope="module")
def envelope_signature() -> tuple[bytes, bytes]:
    """dotnet/envelopeSignature.eml: .NET RI, 2015, RSAES-OAEP, SHA-1 digest."""
    bundle = pkcs12.load_pkcs12((DATA / "dotnet/nhind_umamalga1_vm1.pfx").read_bytes(), b"passw0rd!")
    assert isinstance(bundle.key, rsa.RSAPrivateKey)
    enveloped = _enveloped_der((DATA / "dotnet/envelopeSignature.eml").read_bytes())
    return _split_signed(_decrypt(enveloped, bundle.key))


def _one(results: list[SignerResult]) -> SignerResult:
    assert len(results) == 1
    return results[0]


# --- EncryptedMessage2.txt ---------------------------------------------------------------------------------------


def test_encrypted_message_2_verifies_under_legacy_policy(encrypted_message_2: tuple[bytes, bytes]) -> None:
    content, signature = encrypted_message_2
    anchor = _cert("certs/secureHealthEmailCACert.der")
    result = _one(
        verify_signed_data(signature, content, anchors=[anchor], at=datetime(2026, 1, 1, tzinfo=UTC), policy=LEGACY)
    )
    assert result.valid, result.reasons
    assert result.email_addresses == ("gm2552@securehealthemail.com",)
    assert result.signing_time == datetime(2021, 6, 9, 12, 59, 34, tzinfo=UTC)
    assert result.digest_algorithm == "sha256"
    assert len(result.chain) == 2
    assert result.chain[-1] == anchor
    assert result.chain[0] == result.certificate


def test_encrypted_message_2_is_refused_by_strict_policy_for_its_sha1_certificates(
    encrypted_message_2: tuple[bytes, bytes],
) -> None:
    content, signature = encrypted_message_2
    anchor = _cert("certs/secureHealthEmailCACert.der")
    result = _one(verify_signed_data(signature, content, anchors=[anchor], at=NOW, policy=STRICT))
    assert not result.valid
    assert len(result.chain) == 2  # the chain itself is found: only the algorithm is refused
    assert result.reasons == (
        f"certificate signature hash sha1 is not allowed: {result.chain[0].subject.rfc4514_string()}",
    )


def test_encrypted_message_2_is_untrusted_under_another_anchor(encrypted_message_2: tuple[bytes, bytes]) -> None:
    content, signature = encrypted_message_2
    result = _one(verify_signed_data(signature, content, anchors=[_cert("certs/cacert.der")], at=NOW, policy=LEGACY))
    assert not result.valid
    assert result.chain == ()
    assert result.certificate is not None  # the signature itself verifies: only trust is missing
    assert result.reasons[0].startswith("no certificate chain to a trust anchor")
    assert len(result.reasons) == 1


def test_encrypted_message_2_with_one_changed_byte_fails_the_digest(encrypted_message_2: tuple[bytes, bytes]) -> None:
    content, signature = encrypted_message_2
    position = content.index(b"test pic")
    tampered = content[:position] + b"T" + content[position + 1 :]
    anchor = _cert("certs/secureHealthEmailCACert.der")
    result = _one(verify_signed_data(signature, tampered, anchors=[anchor], at=NOW, policy=LEGACY))
    assert result.reasons == ("message digest does not match the content",)


# --- EncryptedMessage3.txt (2010) ----------------------------------------------------------------------------------


def test_encrypted_message_3_verifies_as_of_2010(encrypted_message_3: tuple[bytes, bytes]) -> None:
    content, signature = encrypted_message_3
    assert b"I NHIN-D, therefore I am." in content
    at = datetime(2010, 6, 3, tzinfo=UTC)
    result = _one(verify_signed_data(signature, content, anchors=[_cert("certs/msanchor.der")], at=at, policy=LEGACY))
    assert result.valid, result.reasons
    assert result.digest_algorithm == "sha1"
    assert result.signing_time == datetime(2010, 6, 2, 16, 15, 44, tzinfo=UTC)
    assert result.email_addresses == ("nhind.hsgincubator.com",)  # emailAddress in the subject, no SAN


def test_encrypted_message_3_is_expired_today(encrypted_message_3: tuple[bytes, bytes]) -> None:
    content, signature = encrypted_message_3
    result = _one(verify_signed_data(signature, content, anchors=[_cert("certs/msanchor.der")], at=NOW, policy=LEGACY))
    assert not result.valid
    assert all("expired at validation time" in reason for reason in result.reasons)
    assert len(result.reasons) == 2  # the signer and the anchor
    assert not any("signing time" in reason for reason in result.reasons)


def test_encrypted_message_3_is_refused_by_strict_policy(encrypted_message_3: tuple[bytes, bytes]) -> None:
    content, signature = encrypted_message_3
    at = datetime(2010, 6, 3, tzinfo=UTC)
    result = _one(verify_signed_data(signature, content, anchors=[_cert("certs/msanchor.der")], at=at, policy=STRICT))
    assert result.reasons[0] == "digest algorithm sha1 is not allowed"
    assert any(reason.startswith("RSA key of 1024 bits is below 2048") for reason in result.reasons)
    assert any(reason.startswith("certificate signature hash sha1 is not allowed") for reason in result.reasons)


# --- dotnet/envelopeSignature.eml (2015) -------------------------------------------------------------------------


def test_dotnet_envelope_signature_verifies_as_of_2016(envelope_signature: tuple[bytes, bytes]) -> None:
    content, signature = envelope_signature
    assert b"Subject: Simple Text Message" in content
    anchor = _cert("dotnet/umamalga1.cer")
    at = datetime(2016, 1, 1, tzinfo=UTC)
    result = _one(verify_signed_data(signature, content, anchors=[anchor], at=at, policy=LEGACY))
    assert result.valid, result.reasons
    assert result.signing_time == datetime(2015, 6, 12, 16, 46, 50, tzinfo=UTC)
    assert result.chain[-1] == anchor


def test_dotnet_envelope_signature_sha1_digest_is_refused_by_strict_policy(
    envelope_signature: tuple[bytes, bytes],
) -> None:
    content, signature = envelope_signature
    at = datetime(2016, 1, 1, tzinfo=UTC)
    result = _one(verify_signed_data(signature, content, anchors=[_cert("dotnet/umamalga1.cer")], at=at))
    # the certificates are RSA-2048 signed with SHA-256: only the SHA-1 message digest is refused
    assert result.reasons == ("digest algorithm sha1 is not allowed",)


def test_dotnet_envelope_signature_is_expired_today(envelope_signature: tuple[bytes, bytes]) -> None:
    content, signature = envelope_signature
    result = _one(
        verify_signed_data(signature, content, anchors=[_cert("dotnet/umamalga1.cer")], at=NOW, policy=LEGACY)
    )
    assert not result.valid
    assert {reason.partition(":")[0] for reason in result.reasons} == {"certificate expired at validation time"}


# --- Java RI CRL set (2010): revocation from a CRL made by another implementation ----------------------------------
# The end-entity keys of this set were never published, so no signature can be made: the certificates go through
# the path validation that verify_signed_data applies to a signer's certificate.

AS_OF_CRL = datetime(2010, 10, 1, tzinfo=UTC)


def _crl_set() -> tuple[x509.Certificate, x509.CertificateRevocationList]:
    return _cert("crl/crl-keystore-cacert.pem"), x509.load_pem_x509_crl((DATA / "crl/certs.crl").read_bytes())


def test_direct_crl_revokes_its_certificate() -> None:
    anchor, revocations = _crl_set()
    revoked = _cert("crl/crl-keystore-revoked.pem")
    chain, reasons = validate_certificate(revoked, anchors=[anchor], at=AS_OF_CRL, crls=[revocations], policy=LEGACY)
    assert chain == (revoked, anchor)
    assert reasons == (f"certificate revoked: {revoked.subject.rfc4514_string()}",)
    # without the CRL there is nothing against it
    assert validate_certificate(revoked, anchors=[anchor], at=AS_OF_CRL, policy=LEGACY)[1] == ()
    # under the strict policy revocation is still the first reason, before the weak algorithms
    strict = validate_certificate(revoked, anchors=[anchor], at=AS_OF_CRL, crls=[revocations], policy=STRICT)[1]
    assert strict[0] == f"certificate revoked: {revoked.subject.rfc4514_string()}"
    assert len(strict) > 1


def test_direct_crl_leaves_the_other_certificate_valid() -> None:
    anchor, revocations = _crl_set()
    valid = _cert("crl/crl-keystore-valid.pem")
    required = VerificationPolicy(
        min_rsa_bits=1024,
        certificate_signature_hashes=LEGACY.certificate_signature_hashes,
        require_revocation_check=True,
    )
    chain, reasons = validate_certificate(valid, anchors=[anchor], at=AS_OF_CRL, crls=[revocations], policy=required)
    assert chain == (valid, anchor)
    assert reasons == ()
    # the CRL's nextUpdate is 2010-10-21: a month later it proves nothing any more
    later = datetime(2010, 11, 21, tzinfo=UTC)
    stale = validate_certificate(valid, anchors=[anchor], at=later, crls=[revocations], policy=required)[1]
    assert stale == (f"CRL expired: {valid.subject.rfc4514_string()}",)
