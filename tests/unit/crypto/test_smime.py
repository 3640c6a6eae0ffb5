"""S/MIME at the message level: wrapping, the From check, tampering, revocation, decryption (no database)."""

from __future__ import annotations

import base64
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from mssecure.crypto import smime
from mssecure.crypto.pki import Issued, Revocation, build_crl, issue_smime, new_ca
from mssecure.directory.identifiers import luhn_check_digit
from mssecure.directory.records import EntryData, Kind
from mssecure.errors import SignatureError

NOW = datetime.now(UTC)
RPPS = "1010001000" + luhn_check_digit("1010001000")
DOCTOR = "camille.lefevre@chu-nord.mssante.test"
MESSAGE = (
    f"From: Dr Camille LEFEVRE <{DOCTOR}>\n"
    "To: pharmacie@chu-nord.mssante.test\n"
    "Subject: Ordonnance DUPONT Jean\n"
    "Date: Mon, 23 Nov 2026 10:00:00 +0000\n"
    "Message-ID: <rx1@chu-nord.mssante.test>\n"
    "\n"
    "Amoxicilline 1 g.\n"
).encode()


def person(address: str) -> EntryData:
    return EntryData(address=address, kind=Kind.PERSONAL, identifier_type="RPPS", identifier=RPPS,
                     last_name="LEFEVRE", first_name="Camille").validated()  # fmt: skip


@pytest.fixture(scope="module")
def ca() -> Issued:
    return new_ca("chu-nord.mssante.test", now=NOW - timedelta(days=1))


@pytest.fixture(scope="module")
def doctor(ca: Issued) -> Issued:
    return issue_smime(ca, person(DOCTOR), now=NOW - timedelta(hours=1), crl_url="http://x.test/ca.crl")


def check(message: bytes, ca: Issued, **options: object) -> smime.Verification:
    return smime.verify(message, anchors=[ca.certificate], at=NOW, **options)  # type: ignore[arg-type]


def test_sign_then_verify(ca: Issued, doctor: Issued) -> None:
    signed = smime.sign(MESSAGE, doctor.certificate, doctor.key, chain=[ca.certificate])
    result = check(signed, ca)
    assert result.valid, result.all_reasons()
    assert result.from_address == DOCTOR
    assert result.valid_signer is not None
    assert result.valid_signer.address == DOCTOR
    assert result.inner_message == smime.canonical(MESSAGE)


def test_bare_lf_and_crlf_inputs_sign_the_same_canonical_message(ca: Issued, doctor: Issued) -> None:
    signed = smime.sign(MESSAGE.replace(b"\n", b"\r\n"), doctor.certificate, doctor.key)
    assert check(signed, ca).inner_message == smime.canonical(MESSAGE)


def test_a_signer_who_is_not_the_from_address_is_refused(ca: Issued, doctor: Issued) -> None:
    spoofed = MESSAGE.replace(f"<{DOCTOR}>".encode(), b"<chef.de.service@chu-nord.mssante.test>")
    result = check(smime.sign(spoofed, doctor.certificate, doctor.key), ca)
    assert not result.valid
    assert any("is not the From address chef.de.service@chu-nord.mssante.test" in r for r in result.all_reasons())


@pytest.mark.parametrize(
    ("old", "new"),
    [(b"Amoxicilline 1 g.", b"Amoxicilline 9 g."), (b"Subject: Ordonnance DUPONT", b"Subject: Ordonnance MARTIN")],
)
def test_tampering_with_the_body_or_the_protected_headers_is_detected(ca: Issued, doctor: Issued, old: bytes,
                                                                      new: bytes) -> None:  # fmt: skip
    signed = smime.sign(MESSAGE, doctor.certificate, doctor.key)
    result = check(signed.replace(old, new), ca)
    assert not result.valid
    assert any("digest" in r.lower() for r in result.all_reasons())


def test_an_untrusted_signer_is_refused(ca: Issued, doctor: Issued) -> None:
    other = new_ca("ailleurs.mssante.test", now=NOW - timedelta(days=1))
    result = smime.verify(smime.sign(MESSAGE, doctor.certificate, doctor.key), anchors=[other.certificate], at=NOW)
    assert not result.valid
    assert any("trust anchor" in r for r in result.all_reasons())


def test_a_revoked_or_held_signer_is_refused(ca: Issued, doctor: Issued) -> None:
    signed = smime.sign(MESSAGE, doctor.certificate, doctor.key)
    for reason, expected in (("keyCompromise", "revoked"), ("certificateHold", "hold")):
        crl = build_crl(ca, [Revocation(doctor.certificate.serial_number, NOW - timedelta(minutes=1), reason)], now=NOW)
        result = check(signed, ca, crls=[crl])
        assert not result.valid
        assert any(expected in r for r in result.all_reasons())
    assert check(signed, ca, crls=[build_crl(ca, [], now=NOW)]).valid


def test_an_expired_signer_is_refused(ca: Issued, doctor: Issued) -> None:
    signed = smime.sign(MESSAGE, doctor.certificate, doctor.key)
    result = smime.verify(signed, anchors=[ca.certificate], at=NOW + timedelta(days=3 * 365))
    assert not result.valid
    assert any("expired" in r for r in result.all_reasons())


def test_unwrapped_content_is_refused_when_wrapping_is_required(ca: Issued, doctor: Issued) -> None:
    entity = f"From: <{DOCTOR}>\r\nContent-Type: text/plain\r\n\r\nAmoxicilline 1 g.\r\n".encode()
    signature = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(entity)
        .add_signer(doctor.certificate, doctor.key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary])
    )
    message = (
        f"From: <{DOCTOR}>\r\nMIME-Version: 1.0\r\n".encode()
        + b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;\r\n'
        + b' boundary="b"\r\n\r\n'
        + b"--b\r\n" + entity + b"\r\n--b\r\nContent-Type: application/pkcs7-signature\r\n"
        + b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(signature).replace(b"\n", b"\r\n")
        + b"--b--\r\n"
    )  # fmt: skip
    wrapped_required = check(message, ca)
    assert not wrapped_required.valid
    assert "signed content is not a wrapped message (message/rfc822)" in wrapped_required.reasons
    assert check(message, ca, require_wrapping=False).valid


def test_a_message_signed_by_openssl_verifies(ca: Issued, doctor: Issued, tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_bytes(doctor.certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        doctor.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    )  # fmt: skip
    (tmp_path / "inner").write_bytes(b"Content-Type: message/rfc822\r\n\r\n" + smime.canonical(MESSAGE))
    subprocess.run(["openssl", "cms", "-sign", "-binary", "-md", "sha256", "-in", str(tmp_path / "inner"),
                    "-signer", str(tmp_path / "cert.pem"), "-inkey", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "signed")], check=True, capture_output=True, timeout=60)  # fmt: skip
    signed = f"From: <{DOCTOR}>\r\n".encode() + (tmp_path / "signed").read_bytes()
    result = check(signed, ca)
    assert result.valid, result.all_reasons()


def test_encrypt_decrypt_round_trip_and_the_wrong_key(ca: Issued, doctor: Issued) -> None:
    pharmacy = issue_smime(ca, EntryData(address="pharmacie@chu-nord.mssante.test", kind=Kind.ORGANIZATIONAL),
                           now=NOW, crl_url="http://x.test/ca.crl")  # fmt: skip
    signed = smime.sign(MESSAGE, doctor.certificate, doctor.key)
    encrypted = smime.encrypt(signed, [pharmacy.certificate])
    assert smime.is_encrypted(encrypted)
    assert b"Subject" not in encrypted
    decrypted = smime.decrypt(encrypted, pharmacy.certificate, pharmacy.key)
    assert check(decrypted, ca).valid
    with pytest.raises(SignatureError, match="cannot decrypt"):
        smime.decrypt(encrypted, doctor.certificate, doctor.key)


def test_encrypting_to_an_ec_certificate_is_refused_clearly(ca: Issued) -> None:
    ec_entry = EntryData(address="lab@chu-nord.mssante.test", kind=Kind.APPLICATIVE)
    lab = issue_smime(ca, ec_entry, now=NOW, crl_url="http://x.test/ca.crl", key_type="p256")
    with pytest.raises(SignatureError) as refused:
        smime.encrypt(MESSAGE, [lab.certificate])
    assert str(refused.value) == (
        "cannot encrypt to lab@chu-nord.mssante.test: its certificate has an elliptic-curve key (P-256), and mssecure "
        "encrypts to RSA certificates only (EC recipients need ECDH key agreement, which is not supported); the "
        "recipient needs an RSA certificate"
    )


def test_cryptography_still_envelopes_to_rsa_recipients_only(ca: Issued) -> None:
    """Why the refusal above exists: when a cryptography release adds EC recipients, this fails and the refusal
    can go (with a test against openssl cms -decrypt)."""
    ec_entry = EntryData(address="lab@chu-nord.mssante.test", kind=Kind.APPLICATIVE)
    lab = issue_smime(ca, ec_entry, now=NOW, crl_url="http://x.test/ca.crl", key_type="p256")
    with pytest.raises(TypeError, match="Only RSA keys are supported"):
        pkcs7.PKCS7EnvelopeBuilder().set_data(b"x").add_recipient(lab.certificate)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"From: x\r\n\r\nhello", b'Content-Type: multipart/signed; boundary="b"\r\n\r\nno parts',
     b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\n!!!not base64"],
)  # fmt: skip
def test_what_is_not_signed_is_a_clear_error(ca: Issued, garbage: bytes) -> None:
    with pytest.raises(SignatureError):
        check(garbage, ca)


def test_x509_of_the_issued_certificate_names_the_address(doctor: Issued) -> None:
    san = doctor.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == [DOCTOR]


def test_a_domain_bound_certificate_covers_its_domain_only(ca: Issued) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "chu-nord.mssante.test")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("chu-nord.mssante.test")]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    assert check(smime.sign(MESSAGE, certificate, key), ca).valid
    elsewhere = MESSAGE.replace(b"chu-nord.mssante.test>", b"ght-sud.mssante.test>", 1)
    assert not check(smime.sign(elsewhere, certificate, key), ca).valid


@pytest.mark.parametrize(
    "inner_from",
    [
        b"From: <victim@chu-nord.mssante.test>\r\nFrom: <camille.lefevre@chu-nord.mssante.test>",
        b"From: victim@chu-nord.mssante.test, camille.lefevre@chu-nord.mssante.test",
        b"From : <camille.lefevre@chu-nord.mssante.test>",
        b"X-No-From: none",
    ],
)
def test_the_signed_message_must_have_exactly_one_from(ca: Issued, doctor: Issued, inner_from: bytes) -> None:
    message = MESSAGE.replace(f"From: Dr Camille LEFEVRE <{DOCTOR}>".encode(), inner_from)
    signed = smime.sign(message, doctor.certificate, doctor.key)
    # whatever the unsigned outer header says, only the signed From counts
    outer = b"From: <" + DOCTOR.encode() + b">\r\n" + signed.split(b"\r\n", 1)[1]
    result = check(outer, ca)
    assert not result.valid
    assert "the signed message has not exactly one From field with one address" in result.reasons


def test_a_part_hidden_behind_a_padded_delimiter_is_refused(ca: Issued, doctor: Issued) -> None:
    signed = smime.sign(MESSAGE, doctor.certificate, doctor.key)
    boundary = signed.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    head, body = signed.split(b"\r\n\r\n", 1)
    smuggled = b"--" + boundary + b" \r\nContent-Type: text/plain\r\n\r\nMorphine 100 mg x 60\r\n"
    with pytest.raises(SignatureError, match="exactly two parts"):
        check(head + b"\r\n\r\n" + smuggled + body, ca)


def test_an_encoded_wrapped_message_is_not_taken_as_wrapped(ca: Issued, doctor: Issued) -> None:
    entity = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    assert smime.unwrap(entity + base64.b64encode(MESSAGE)) is None
