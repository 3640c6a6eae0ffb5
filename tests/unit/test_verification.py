"""``verify_message`` with real S/MIME, CRLs, DKIM and XDM packages, and the operator's knowledge passed in as
values (no database): what pharmacy software is told about a prescription."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssecure.crypto import smime
from mssecure.crypto.dkim import dkim_sign
from mssecure.smtp import mime
from mssecure.verification import (
    MAX_MESSAGE_SIZE,
    CertificateRecordStatus,
    Report,
    SignerIdentity,
    TrustInputs,
    UnusableMessage,
    parse_authentication_results,
    verify_message,
)
from tests.support.testpki import Credential, Revocation, crl, end_entity, root_ca
from tests.unit.xdm.samples import PDF, PDF_PATH, PRESCRIPTION_ID, RPPS, package, rezip

DOMAIN = "chu-nord.mssante.test"
HOSTNAME = "mail.pharma-sud.mssante.test"  # the verifying operator's relay (authserv-id)
DOCTOR = f"claire.martin@{DOMAIN}"
PHARMACY = "pharmacie@pharma-sud.mssante.test"
CA = root_ca("CHU Nord operator CA")
SIGNER = end_entity(DOCTOR, CA)
DKIM_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_SPKI = DKIM_KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
DKIM_KEYS = {f"mssecure._domainkey.{DOMAIN}": f"v=DKIM1; k=rsa; p={base64.b64encode(_SPKI).decode()}"}
IDENTITY = SignerIdentity(
    address=DOCTOR,
    status="active",
    kind="personal",
    name="Claire MARTIN",
    identifier_type="RPPS",
    identifier=RPPS,
    national_id="8" + RPPS,
    profession="Médecin",
    specialty=None,
    organization="CHU Nord",
)


def trust(
    *,
    identities: Sequence[SignerIdentity] = (IDENTITY,),
    crls: Sequence[x509.CertificateRevocationList] = (),
    record: CertificateRecordStatus | None = None,
) -> TrustInputs:
    """Our CA certifies the doctor's domain only (as TrustSpace.anchors does)."""
    known = {i.address: i for i in identities}
    return TrustInputs(
        authserv_id=HOSTNAME,
        anchors=lambda address: [CA.certificate] if address and address.endswith("@" + DOMAIN) else [],
        crls=crls,
        dkim_keys=DKIM_KEYS,
        identity=known.get,
        certificate_record=lambda certificate: record,
    )


def compose(
    *,
    xdm: bytes | None = None,
    prescription_id: str | None = PRESCRIPTION_ID,
    sender: str = DOCTOR,
    subject: str = "XDM/1.0/DDM+Ordonnance DURAND Anne 01/12/1984",
) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = f"Dr Claire MARTIN <{sender}>"
    message["To"] = PHARMACY
    message["Subject"] = subject
    message["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = "<rx-1@chu-nord.mssante.test>"
    if prescription_id is not None:
        message["X-MSS-Prescription-Id"] = prescription_id
    message.set_content("Ordonnance ci-jointe.\n")
    message.add_attachment(package() if xdm is None else xdm, maintype="application", subtype="zip",
                           filename="IHE_XDM.ZIP")  # fmt: skip
    return message.as_bytes()


def signed(message: bytes | None = None, signer: Credential = SIGNER) -> bytes:
    return smime.sign(compose() if message is None else message, signer.certificate, signer.key, chain=[CA.certificate])


def delivered(
    message: bytes, *extra_results: str, dkim: str = f"dkim=pass header.d={DOMAIN} header.s=mssecure"
) -> bytes:
    """As our relay writes a message into a Maildir: its verdict on top, the signed Subject copied outside."""
    ours = f"Authentication-Results: {HOSTNAME};\r\n\tsmime=pass body.smime-identifier={DOCTOR};\r\n\t{dkim}"
    subject = mime.header_value(smime.unwrap(_first_part(message)) or b"", "subject")
    fields = [f"Return-Path: <{DOCTOR}>", ours, *extra_results]
    return mime.prepend(mime.prepend(message, f"Subject: {subject[0]}") if subject else message, *fields)


def _first_part(message: bytes) -> bytes:
    boundary = re.search(rb'boundary="([^"]+)"', message)
    assert boundary is not None
    return message.split(b"--" + boundary.group(1) + b"\r\n")[1].rsplit(b"\r\n", 1)[0]


def now() -> datetime:
    return datetime.now(UTC)


def failures_with(report: Report, fragment: str) -> list[str]:
    return [f for f in report.failures if fragment in f]


# -- a valid prescription


def test_a_valid_raw_prescription_holds_and_reports_the_prescriber() -> None:
    report = verify_message(signed(), trust(), now=now())
    assert report.ok, report.failures
    assert report.message.source == "raw"
    assert report.message.from_address == DOCTOR
    assert report.message.subject == "XDM/1.0/DDM+Ordonnance DURAND Anne 01/12/1984"
    assert report.signature.valid
    assert report.signature.signer == DOCTOR
    assert report.signature.signing_time is not None
    assert abs(report.signature.signing_time - now()) < timedelta(minutes=1)
    assert report.identity == IDENTITY
    certificate = report.signature.certificate
    assert certificate is not None
    assert (certificate.status_at_signing, certificate.status_now) == ("valid", "valid")
    assert report.dkim.result == "none"
    assert report.dkim.source == "none"
    (xdm,) = report.packages
    assert xdm.valid
    assert xdm.file_name == "IHE_XDM.ZIP"
    assert xdm.author_id_nat == "8" + RPPS
    assert next((d.path, d.name, d.mime_type, d.size) for d in xdm.documents) == (
        PDF_PATH, "ordonnance.pdf", "application/pdf", len(PDF)
    )  # fmt: skip
    assert all(d.sha256_declared for d in xdm.documents)
    assert report.prescription.value == PRESCRIPTION_ID
    assert report.prescription.from_header == PRESCRIPTION_ID
    assert report.prescription.from_packages == (PRESCRIPTION_ID,)


def test_a_delivered_message_takes_dkim_from_our_relay_only_and_lists_the_others_as_ignored() -> None:
    forged = "Authentication-Results: mail.evil.test; smime=pass; dkim=pass header.d=evil.test"
    report = verify_message(delivered(signed(), forged), trust(), now=now())
    assert report.ok, report.failures
    assert report.message.source == "mailbox"
    assert (report.dkim.result, report.dkim.domain, report.dkim.source) == ("pass", DOMAIN, "authentication-results")
    assert report.authentication_results is not None
    assert report.authentication_results.authserv_id == HOSTNAME
    assert report.ignored_authentication_results == ("mail.evil.test",)


def test_a_forged_pass_from_another_authserv_id_proves_nothing() -> None:
    """No Authentication-Results of ours: the message is raw, DKIM is checked here (there is none)."""
    forged = f"Authentication-Results: {HOSTNAME}.evil.test; dkim=pass header.d={DOMAIN}"
    report = verify_message(mime.prepend(signed(), forged), trust(), now=now())
    assert report.message.source == "raw"
    assert report.dkim.result == "none"
    assert report.ignored_authentication_results == (f"{HOSTNAME}.evil.test",)


def test_our_relay_recording_a_dkim_failure_fails() -> None:
    report = verify_message(delivered(signed(), dkim="dkim=fail (signature does not verify)"), trust(), now=now())
    assert failures_with(report, "DKIM: fail")


def test_two_verdicts_claiming_to_be_ours_fail() -> None:
    second = f"Authentication-Results: {HOSTNAME}; dkim=pass header.d=evil.test"
    report = verify_message(delivered(signed(), second), trust(), now=now())
    assert failures_with(report, f"several Authentication-Results fields claim to come from {HOSTNAME}")


def test_our_verdict_naming_another_signer_fails() -> None:
    message = delivered(signed()).replace(f"body.smime-identifier={DOCTOR}".encode(), b"body.smime-identifier=x@y")
    assert failures_with(verify_message(message, trust(), now=now()), "names another signer (x@y)")


# -- the signature


def test_a_tampered_body_fails_the_signature() -> None:
    message = signed().replace(b"Ordonnance ci-jointe.", b"Ordonnance ci-jointe!")
    report = verify_message(message, trust(), now=now())
    assert not report.ok
    assert not report.signature.valid
    assert failures_with(report, "message digest")


def test_a_broken_signature_structure_fails_without_a_traceback() -> None:
    message = signed()
    start = message.index(b'filename="smime.p7s"\r\n\r\n') + len(b'filename="smime.p7s"\r\n\r\n')
    end = message.index(b"\r\n--", start)
    broken = message[:start] + base64.b64encode(b"\x30\x03\x02\x01\x00") + message[end:]
    report = verify_message(broken, trust(), now=now())
    assert not report.ok
    assert failures_with(report, "the signature cannot be checked")


def test_a_signer_from_a_domain_our_trust_does_not_cover_fails() -> None:
    stranger = end_entity("x@elsewhere.test", CA)
    report = verify_message(signed(compose(sender="x@elsewhere.test"), stranger), trust(), now=now())
    assert failures_with(report, "no certificate chain to a trust anchor")


def test_the_from_shown_outside_the_signature_must_be_the_signer() -> None:
    message = signed().replace(
        f"From: Dr Claire MARTIN <{DOCTOR}>".encode(), b"From: Dr House <house@chu-nord.mssante.test>", 1
    )
    report = verify_message(message, trust(), now=now())
    assert failures_with(
        report, f"the From shown outside the signature (house@chu-nord.mssante.test) is not the signer {DOCTOR}"
    )


def test_an_unsigned_subject_that_differs_fails() -> None:
    report = verify_message(mime.prepend(signed(), "Subject: Ordonnance DUPONT Jean"), trust(), now=now())
    assert failures_with(report, "Subject shown outside the signature differs")


# -- the signer's certificate, at signing time and now


def test_revoked_after_signing_is_valid_at_signing_and_revoked_now() -> None:
    message = signed()
    signing_time = verify_message(message, trust(), now=now()).signature.signing_time
    assert signing_time is not None
    entry = Revocation(SIGNER.certificate.serial_number, signing_time + timedelta(minutes=1),
                       x509.ReasonFlags.affiliation_changed)  # fmt: skip
    day = timedelta(days=1)
    revoked = crl(CA, [entry], this_update=signing_time - day, next_update=signing_time + 7 * day)
    report = verify_message(message, trust(crls=[revoked]), now=signing_time + timedelta(minutes=2))
    certificate = report.signature.certificate
    assert certificate is not None
    assert (certificate.status_at_signing, certificate.status_now) == ("valid", "revoked")
    assert failures_with(report, "now: certificate revoked (affiliationChanged)")
    assert not failures_with(report, "at signing time")


def test_a_compromised_key_is_revoked_at_signing_time_too() -> None:
    message = signed()
    at = now()
    revoked = crl(CA, [Revocation(SIGNER.certificate.serial_number, at + timedelta(minutes=1),
                                  x509.ReasonFlags.key_compromise)],
                  this_update=at - timedelta(days=1), next_update=at + timedelta(days=7))  # fmt: skip
    report = verify_message(message, trust(crls=[revoked]), now=at + timedelta(minutes=2))
    assert report.signature.certificate is not None
    assert report.signature.certificate.status_at_signing == "revoked"
    assert failures_with(report, "at signing time: certificate revoked (keyCompromise)")


def test_our_records_say_suspended_even_before_a_crl_is_published() -> None:
    record = CertificateRecordStatus("hold", now() - timedelta(minutes=1), "certificateHold")
    report = verify_message(signed(), trust(record=record), now=now() + timedelta(minutes=1))
    assert report.signature.certificate is not None
    assert report.signature.certificate.status_now == "suspended"
    assert failures_with(report, f"per {HOSTNAME}'s records")


def test_expired_now_but_valid_when_signed() -> None:
    short = end_entity(DOCTOR, CA, not_after=now() + timedelta(hours=1))
    report = verify_message(signed(signer=short), trust(), now=now() + timedelta(hours=2))
    certificate = report.signature.certificate
    assert certificate is not None
    assert (certificate.status_at_signing, certificate.status_now) == ("valid", "expired")
    assert failures_with(report, "now: certificate expired at validation time")


def test_a_signing_time_in_the_future_fails() -> None:
    report = verify_message(signed(), trust(), now=now() - timedelta(hours=1))
    assert failures_with(report, "is in the future")


# -- the directory


def test_a_signer_missing_from_the_directory_fails() -> None:
    report = verify_message(signed(), trust(identities=()), now=now())
    assert report.identity is None
    assert failures_with(report, f"the signer {DOCTOR} is not in the directory")


def test_a_suspended_directory_entry_fails() -> None:
    suspended = SignerIdentity(**{**IDENTITY.__dict__, "status": "suspended"})
    report = verify_message(signed(), trust(identities=[suspended]), now=now())
    assert failures_with(report, f"directory entry {DOCTOR} is suspended")


def test_an_xdm_author_other_than_the_signer_fails() -> None:
    other = SignerIdentity(**{**IDENTITY.__dict__, "national_id": "810100000016"})
    report = verify_message(signed(), trust(identities=[other]), now=now())
    assert failures_with(report, f"the XDM package's author (8{RPPS}) is not the signer (810100000016)")


# -- XDM and the prescription identifier


def test_a_broken_xdm_hash_fails_with_the_reason() -> None:
    tampered = rezip(package(), replace={PDF_PATH: PDF.replace(b"Catalog", b"Katalog")})
    report = verify_message(signed(compose(xdm=tampered)), trust(), now=now())
    (xdm,) = report.packages
    assert not xdm.valid
    assert xdm.reason is not None
    assert "SHA-1 hash mismatch" in xdm.reason
    assert failures_with(report, "XDM package IHE_XDM.ZIP: document 'DOC0001.PDF': SHA-1 hash mismatch")


def test_a_header_prescription_id_other_than_the_package_fails() -> None:
    report = verify_message(signed(compose(prescription_id="RX-OTHER")), trust(), now=now())
    assert failures_with(report, "(RX-OTHER) differs from the XDM package's (RX-2026-000123)")


def test_the_header_alone_gives_the_prescription_id() -> None:
    report = verify_message(signed(compose(xdm=package(prescription_id=None))), trust(), now=now())
    assert report.ok, report.failures
    assert report.prescription.value == PRESCRIPTION_ID
    assert report.prescription.from_packages == ()


def test_an_unsigned_prescription_id_that_differs_fails() -> None:
    report = verify_message(mime.prepend(signed(), "X-MSS-Prescription-Id: RX-FORGED"), trust(), now=now())
    assert failures_with(report, "an unsigned X-MSS-Prescription-Id field (RX-FORGED) differs")


def test_our_relay_flagging_a_duplicate_prescription_fails() -> None:
    flag = f"X-MSSecure-Prescription-Duplicate: {PRESCRIPTION_ID}; first delivered 2026-11-23 09:14 UTC"
    report = verify_message(delivered(signed(), flag), trust(), now=now())
    assert report.prescription.duplicate == f"{PRESCRIPTION_ID}; first delivered 2026-11-23 09:14 UTC"
    assert failures_with(report, "already delivered to another mailbox (RX-2026-000123; first delivered")


def test_a_duplicate_flag_in_a_message_our_relay_did_not_deliver_is_not_believed() -> None:
    flag = f"X-MSSecure-Prescription-Duplicate: {PRESCRIPTION_ID}; forged"
    report = verify_message(mime.prepend(signed(), flag), trust(), now=now())
    assert report.ok, report.failures
    assert report.prescription.duplicate is None


# -- DKIM on a raw message


def test_raw_dkim_is_checked_with_the_trust_space_keys() -> None:
    message = dkim_sign(signed(), domain=DOMAIN, selector="mssecure", key=DKIM_KEY)
    report = verify_message(message, trust(), now=now())
    assert report.ok, report.failures
    assert (report.dkim.result, report.dkim.domain, report.dkim.source) == ("pass", DOMAIN, "dkim-signature")
    altered = message.replace(f"To: {PHARMACY}".encode(), b"To: autre@pharma-sud.mssante.test", 1)  # outside
    report = verify_message(altered, trust(), now=now())
    assert report.dkim.result == "fail"
    assert failures_with(report, "DKIM: fail")


# -- nothing to verify


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a mail message"),
        (b"\x00\x01\x02garbage\xff" * 100, "not a mail message"),
        (b"just some text\r\nwithout a header\r\n\r\nbody", "not a mail message"),
        (compose(), "not S/MIME signed"),
        (smime.encrypt(compose(), [SIGNER.certificate]), "the message is encrypted"),
    ],
)
def test_unusable_input_is_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(UnusableMessage, match=reason):
        verify_message(data, trust(), now=now())


def test_a_message_above_the_limit_is_refused() -> None:
    with pytest.raises(UnusableMessage, match="larger than 64 MiB"):
        verify_message(b"X" * (MAX_MESSAGE_SIZE + 1), trust(), now=now())


# -- the report and the header parser


def test_the_report_is_json() -> None:
    document = json.loads(json.dumps(verify_message(delivered(signed()), trust(), now=now()).to_dict()))
    assert document["result"] == "ok"
    assert document["signer"]["national_id"] == "8" + RPPS
    assert document["signature"]["certificate"]["status_now"] == "valid"
    assert document["dkim"] == {"result": "pass", "domain": DOMAIN, "selector": "mssecure",
                                "source": "authentication-results", "reason": None}  # fmt: skip
    assert document["xdm"][0]["documents"][0]["sha256"] == hashlib.sha256(PDF).hexdigest()
    assert document["prescription_id"]["value"] == PRESCRIPTION_ID


def test_authentication_results_parsing() -> None:
    parsed = parse_authentication_results(
        'Mail.Example.ORG 1 (comment; with ; semicolons) ; dkim=pass (good "sig") header.d=a.test header.s="sel";'
        ' smime/1 = fail reason="bad; really" body.smime-identifier=x@a.test ; none'
    )
    assert parsed is not None
    assert parsed.authserv_id == "mail.example.org"
    assert parsed.result("dkim") == ("pass", {"header.d": "a.test", "header.s": "sel"})
    assert parsed.result("smime") == ("fail", {"reason": "bad; really", "body.smime-identifier": "x@a.test"})
    assert parse_authentication_results("  (only a comment)") is None


# -- whatever the bytes: a report or UnusableMessage, never another exception


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_authentication_results_value_parses_or_is_none(value: str) -> None:
    parsed = parse_authentication_results(value)
    assert parsed is None or parsed.authserv_id


_SAMPLE = delivered(dkim_sign(signed(), domain=DOMAIN, selector="mssecure", key=DKIM_KEY))


@given(st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_messages_give_a_report_or_a_refusal(data: st.DataObject) -> None:
    message = bytearray(_SAMPLE)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(message) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            message[position] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del message[position : position + data.draw(st.integers(1, 64))]
        else:
            message[position:position] = data.draw(st.binary(min_size=1, max_size=32))
        if not message:
            break
    try:
        report = verify_message(bytes(message), trust(), now=now())
    except UnusableMessage:
        return
    json.dumps(report.to_dict())
    assert report.ok == (not report.failures)
