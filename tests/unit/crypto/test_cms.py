"""CMS SignedData verification: signatures made by cryptography's PKCS7SignatureBuilder and by the test PKI's own
producer, each negative case with its specific reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID

from mssecure.crypto.cms import (
    LEGACY,
    STRICT,
    VerificationPolicy,
    encapsulated_content,
    verify_signed_data,
)
from mssecure.errors import SignatureError
from tests.support.mailpki import NOW, MailPki, make_mail_pki, verify_one
from tests.support.testpki import (
    Credential,
    Revocation,
    crl,
    days,
    ec_key,
    end_entity,
    intermediate_ca,
    root_ca,
    rsa_key,
    sign_cms,
)

CONTENT = b"Content-Type: text/plain\r\n\r\nOrdonnance: amoxicilline 1 g, 3 fois par jour.\r\n"


@dataclass(frozen=True)
class Pki(MailPki):
    stranger_root: Credential  # a CA nobody trusts
    stranger: Credential


@pytest.fixture(scope="module")
def pki() -> Pki:
    mail = make_mail_pki(
        "Test Health", rsa_email="Dr.Alice@CHU-Nord.mssante.test", ec_email="bob@pharmacie.mssante.test"
    )
    stranger_root = root_ca("Untrusted Root CA")
    stranger = end_entity("mallory@elsewhere.test", stranger_root, key=ec_key())
    return Pki(**vars(mail), stranger_root=stranger_root, stranger=stranger)


def _sign(
    content: bytes,
    signers: list[Credential],
    *,
    certificates: list[x509.Certificate] | None = None,
    detached: bool = True,
    extra_options: list[pkcs7.PKCS7Options] | None = None,
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
    rsa_padding: padding.PSS | None = None,
) -> bytes:
    """A DER SignedData from cryptography's PKCS7SignatureBuilder (Binary: the content bytes are signed as they are)."""
    builder = pkcs7.PKCS7SignatureBuilder().set_data(content)
    for signer in signers:
        builder = builder.add_signer(
            signer.certificate, signer.key, hash_algorithm or hashes.SHA256(), rsa_padding=rsa_padding
        )
    for certificate in certificates or []:
        builder = builder.add_certificate(certificate)
    options = [pkcs7.PKCS7Options.Binary, *(extra_options or [])]
    if detached:
        options.append(pkcs7.PKCS7Options.DetachedSignature)
    return builder.sign(Encoding.DER, options)


def _label(credential: Credential) -> str:
    return credential.certificate.subject.rfc4514_string()


def _signer(pki: Pki, email: str = "signer@chu-nord.mssante.test", **options: object) -> Credential:
    options.setdefault("key", ec_key())
    return end_entity(email, pki.intermediate, **options)


# --- positive ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["rsa_signer", "ec_signer"])
@pytest.mark.parametrize("detached", [True, False], ids=["detached", "encapsulated"])
def test_cryptography_signature_verifies_through_an_intermediate(pki: Pki, who: str, detached: bool) -> None:
    signer: Credential = getattr(pki, who)
    before = datetime.now(UTC).replace(microsecond=0)
    signature = _sign(CONTENT, [signer], certificates=[pki.intermediate.certificate], detached=detached)
    after = datetime.now(UTC)
    result = verify_one(signature, CONTENT if detached else None, pki)
    assert result.valid, result.reasons
    assert result.certificate == signer.certificate
    assert result.chain == (signer.certificate, pki.intermediate.certificate, pki.root.certificate)
    assert result.digest_algorithm == "sha256"
    assert result.signing_time is not None
    assert result.signing_time.tzinfo is not None
    assert before <= result.signing_time <= after  # the signer's clock, when it signed


def test_encapsulated_content_is_returned(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer], detached=False)
    assert encapsulated_content(signature) == CONTENT


def test_email_addresses_are_lowercased_and_deduplicated(pki: Pki) -> None:
    signer = _signer(
        pki,
        "Dr.Jean@CHU-Nord.mssante.test",
        emails=["Dr.Jean@CHU-Nord.mssante.test", "jean.secretariat@chu-nord.mssante.test"],
        subject_email="DR.JEAN@chu-nord.mssante.test",
    )
    result = verify_one(_sign(CONTENT, [signer], certificates=[pki.intermediate.certificate]), CONTENT, pki)
    assert result.valid, result.reasons
    assert result.email_addresses == ("dr.jean@chu-nord.mssante.test", "jean.secretariat@chu-nord.mssante.test")
    alone = verify_one(_sign(CONTENT, [pki.rsa_signer]), CONTENT, pki)
    assert alone.email_addresses == ("dr.alice@chu-nord.mssante.test",)


def test_sha384_and_sha512_digests_are_accepted(pki: Pki) -> None:
    for hash_algorithm, name in ((hashes.SHA384(), "sha384"), (hashes.SHA512(), "sha512")):
        signature = _sign(
            CONTENT, [pki.ec_signer], certificates=[pki.intermediate.certificate], hash_algorithm=hash_algorithm
        )
        result = verify_one(signature, CONTENT, pki)
        assert result.valid, result.reasons
        assert result.digest_algorithm == name


def test_rsassa_pss_signature_verifies(pki: Pki) -> None:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    signature = _sign(CONTENT, [pki.rsa_signer], certificates=[pki.intermediate.certificate], rsa_padding=pss)
    assert verify_one(signature, CONTENT, pki).valid
    tampered = verify_one(signature, CONTENT + b" ", pki)
    assert tampered.reasons == ("message digest does not match the content",)


def test_signature_without_signed_attributes_covers_the_content(pki: Pki) -> None:
    signature = _sign(
        CONTENT,
        [pki.rsa_signer],
        certificates=[pki.intermediate.certificate],
        extra_options=[pkcs7.PKCS7Options.NoAttributes],
    )
    result = verify_one(signature, CONTENT, pki)
    assert result.valid, result.reasons
    assert result.signing_time is None
    assert verify_one(signature, CONTENT + b"!", pki).reasons == ("signature is invalid",)


def test_intermediate_may_come_from_extra_certificates(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer])  # only the signer's certificate is embedded
    assert verify_one(signature, CONTENT, pki).reasons[0].startswith("no certificate chain to a trust anchor")
    result = verify_one(signature, CONTENT, pki, extra_certificates=[pki.intermediate.certificate])
    assert result.valid, result.reasons
    assert len(result.chain) == 3


def test_signer_certificate_may_come_from_extra_certificates(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer], extra_options=[pkcs7.PKCS7Options.NoCerts])
    missing = verify_one(signature, CONTENT, pki, extra_certificates=[pki.intermediate.certificate])
    assert missing.reasons == ("signer certificate not found",)
    assert missing.certificate is None
    assert missing.chain == ()
    assert missing.email_addresses == ()
    found = verify_one(
        signature, CONTENT, pki, extra_certificates=[pki.intermediate.certificate, pki.rsa_signer.certificate]
    )
    assert found.valid, found.reasons


def test_anchor_may_be_the_intermediate_or_the_signer_itself(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer], certificates=[pki.intermediate.certificate])
    by_intermediate = verify_one(signature, CONTENT, pki, anchors=[pki.intermediate.certificate])
    assert by_intermediate.valid, by_intermediate.reasons
    assert by_intermediate.chain == (pki.rsa_signer.certificate, pki.intermediate.certificate)
    by_leaf = verify_one(signature, CONTENT, pki, anchors=[pki.rsa_signer.certificate])
    assert by_leaf.valid, by_leaf.reasons
    assert by_leaf.chain == (pki.rsa_signer.certificate,)


def test_subject_key_identifier_signer_identifier(pki: Pki) -> None:
    signature = sign_cms(
        CONTENT,
        pki.rsa_signer,
        signing_time=NOW,
        use_key_identifier=True,
        certificates=[pki.rsa_signer.certificate, pki.intermediate.certificate],
    )
    result = verify_one(signature, CONTENT, pki)
    assert result.valid, result.reasons
    assert result.certificate == pki.rsa_signer.certificate


def test_one_valid_and_one_untrusted_signer_are_both_reported(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer, pki.stranger], certificates=[pki.intermediate.certificate])
    results = verify_signed_data(signature, CONTENT, anchors=[pki.root.certificate], at=NOW)
    assert len(results) == 2
    by_signer = {result.certificate: result for result in results}
    assert by_signer[pki.rsa_signer.certificate].valid
    untrusted = by_signer[pki.stranger.certificate]
    assert untrusted.reasons == (f"no certificate chain to a trust anchor: {_label(pki.stranger)}",)
    # one result per SignerInfo, in the order of the SignerInfos
    order = [
        si["sid"].chosen["serial_number"].native
        for si in asn1_cms.ContentInfo.load(signature)["content"]["signer_infos"]
    ]
    assert [result.certificate.serial_number for result in results if result.certificate] == order


def test_two_trusted_signers_of_different_key_types(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer, pki.ec_signer], certificates=[pki.intermediate.certificate])
    results = verify_signed_data(signature, CONTENT, anchors=[pki.root.certificate], at=NOW)
    assert [r.valid for r in results] == [True, True]
    assert {r.certificate for r in results} == {pki.rsa_signer.certificate, pki.ec_signer.certificate}


# --- integrity ---------------------------------------------------------------------------------------------------


def test_tampered_content_fails_the_message_digest(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer], certificates=[pki.intermediate.certificate])
    result = verify_one(signature, CONTENT.replace(b"1 g", b"9 g"), pki)
    assert result.reasons == ("message digest does not match the content",)
    assert result.certificate == pki.rsa_signer.certificate  # the signature over the attributes is still good


def _signing_time_encoding(signature: bytes) -> bytes:
    signer_info = asn1_cms.ContentInfo.load(signature)["content"]["signer_infos"][0]
    for attribute in signer_info["signed_attrs"]:
        if attribute["type"].native == "signing_time":
            return bytes(attribute["values"][0].dump())
    raise AssertionError("no signingTime attribute")


def test_tampered_signed_attributes_fail_the_signature(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer], certificates=[pki.intermediate.certificate])
    original = _signing_time_encoding(signature)
    assert signature.count(original) == 1
    last_digit = original[-2:-1]
    changed = original[:-2] + (b"1" if last_digit == b"0" else b"0") + original[-1:]  # YYMMDDHHMMSS(Z)
    result = verify_one(signature.replace(original, changed), CONTENT, pki)
    assert result.reasons == ("signature is invalid",)


def test_tampered_encapsulated_content_fails_the_message_digest(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.ec_signer], certificates=[pki.intermediate.certificate], detached=False)
    assert signature.count(b"amoxicilline") == 1
    result = verify_one(signature.replace(b"amoxicilline", b"amoxicillinf"), None, pki)
    assert result.reasons == ("message digest does not match the content",)


def test_missing_content_type_attribute_is_refused(pki: Pki) -> None:
    signature = sign_cms(
        CONTENT,
        pki.rsa_signer,
        signing_time=NOW,
        content_type_attribute=False,
        certificates=[pki.rsa_signer.certificate],
    )
    result = verify_one(signature, CONTENT, pki, extra_certificates=[pki.intermediate.certificate])
    assert result.reasons == ("contentType signed attribute is missing",)


def test_own_producer_signature_verifies(pki: Pki) -> None:
    """The test PKI's producer is right (otherwise the negative cases built with it would prove nothing)."""
    for signer in (pki.rsa_signer, pki.ec_signer):
        signature = sign_cms(CONTENT, signer, signing_time=NOW, certificates=[signer.certificate])
        result = verify_one(signature, CONTENT, pki, extra_certificates=[pki.intermediate.certificate])
        assert result.valid, result.reasons
        assert result.signing_time == NOW.replace(microsecond=0)


# --- validity ----------------------------------------------------------------------------------------------------


def test_expired_signer(pki: Pki) -> None:
    signer = _signer(pki, not_before=datetime(2023, 1, 1, tzinfo=UTC), not_after=datetime(2024, 1, 1, tzinfo=UTC))
    signature = sign_cms(CONTENT, signer, signing_time=datetime(2025, 3, 1, tzinfo=UTC))
    result = verify_one(signature, CONTENT, pki, extra_certificates=[pki.intermediate.certificate])
    assert result.reasons == (
        f"certificate expired at validation time: {_label(signer)}",
        f"certificate expired at signing time: {_label(signer)}",
    )
    assert result.chain  # the chain is found; the certificate is not valid


def test_not_yet_valid_signer(pki: Pki) -> None:
    signer = _signer(pki, not_before=NOW + days(30), not_after=NOW + days(400))
    signature = _sign(CONTENT, [signer], certificates=[pki.intermediate.certificate])  # signed now
    result = verify_one(signature, CONTENT, pki)
    assert result.reasons == (
        f"certificate not yet valid at validation time: {_label(signer)}",
        f"certificate not yet valid at signing time: {_label(signer)}",
    )


def test_signer_valid_at_signing_time_but_expired_at_validation_time(pki: Pki) -> None:
    signer = _signer(pki, not_before=datetime(2023, 1, 1, tzinfo=UTC), not_after=datetime(2025, 1, 1, tzinfo=UTC))
    signature = sign_cms(CONTENT, signer, signing_time=datetime(2024, 6, 1, tzinfo=UTC))
    extra = [pki.intermediate.certificate]
    result = verify_one(signature, CONTENT, pki, extra_certificates=extra)
    assert result.reasons == (f"certificate expired at validation time: {_label(signer)}",)
    assert result.signing_time == datetime(2024, 6, 1, tzinfo=UTC)
    then = verify_one(signature, CONTENT, pki, extra_certificates=extra, at=datetime(2024, 6, 2, tzinfo=UTC))
    assert then.valid, then.reasons


def test_signing_time_outside_validity_fails_even_when_valid_now(pki: Pki) -> None:
    signer = _signer(pki, not_before=datetime(2025, 1, 1, tzinfo=UTC))
    signature = sign_cms(CONTENT, signer, signing_time=datetime(2024, 6, 1, tzinfo=UTC))
    result = verify_one(signature, CONTENT, pki, extra_certificates=[pki.intermediate.certificate])
    assert result.reasons == (f"certificate not yet valid at signing time: {_label(signer)}",)


def test_expired_intermediate(pki: Pki) -> None:
    old_ca = intermediate_ca("Old Mail CA", pki.root, key=ec_key(), not_after=datetime(2025, 1, 1, tzinfo=UTC))
    signer = end_entity("old@chu-nord.mssante.test", old_ca, key=ec_key())
    signature = _sign(CONTENT, [signer], certificates=[old_ca.certificate])
    result = verify_one(signature, CONTENT, pki)
    assert result.reasons == (f"certificate expired at validation time: {_label(old_ca)}",)


# --- key usage ---------------------------------------------------------------------------------------------------


def test_server_auth_only_eku_is_refused(pki: Pki) -> None:
    signer = _signer(pki, extended_key_usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    signature = _sign(CONTENT, [signer], certificates=[pki.intermediate.certificate])
    result = verify_one(signature, CONTENT, pki)
    assert result.reasons == (f"extended key usage does not include emailProtection: {_label(signer)}",)
    relaxed = VerificationPolicy(require_email_protection=False)
    assert verify_one(signature, CONTENT, pki, policy=relaxed).valid


@pytest.mark.parametrize(
    "eku",
    [
        None,
        [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION],
    ],
    ids=["absent", "any", "with-email-protection"],
)
def test_acceptable_ekus(pki: Pki, eku: list[x509.ObjectIdentifier] | None) -> None:
    signer = _signer(pki, extended_key_usage=eku)
    result = verify_one(_sign(CONTENT, [signer], certificates=[pki.intermediate.certificate]), CONTENT, pki)
    assert result.valid, result.reasons


def test_key_encipherment_only_is_refused(pki: Pki) -> None:
    signer = _signer(pki, key=rsa_key(2048), key_usage={"key_encipherment"})
    result = verify_one(_sign(CONTENT, [signer], certificates=[pki.intermediate.certificate]), CONTENT, pki)
    assert result.reasons == (f"key usage allows neither digitalSignature nor nonRepudiation: {_label(signer)}",)


@pytest.mark.parametrize("usage", [{"content_commitment"}, {"digital_signature"}, None], ids=["nr", "ds", "absent"])
def test_signing_key_usages(pki: Pki, usage: set[str] | None) -> None:
    signer = _signer(pki, key_usage=usage)
    result = verify_one(_sign(CONTENT, [signer], certificates=[pki.intermediate.certificate]), CONTENT, pki)
    assert result.valid, result.reasons


# --- chain -------------------------------------------------------------------------------------------------------


def test_untrusted_anchor(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer], certificates=[pki.intermediate.certificate])
    result = verify_one(signature, CONTENT, pki, anchors=[pki.stranger_root.certificate])
    assert result.reasons == (f"no certificate chain to a trust anchor: {_label(pki.rsa_signer)}",)
    assert result.chain == ()
    assert result.certificate == pki.rsa_signer.certificate


def test_impostor_ca_with_the_trusted_name_is_not_trusted(pki: Pki) -> None:
    impostor = root_ca("Test Health Root CA", key=ec_key())  # same name as the trusted root, another key
    fake_intermediate = intermediate_ca("Test Health Mail CA", impostor, key=ec_key())
    signer = end_entity("dr.alice@chu-nord.mssante.test", fake_intermediate, key=ec_key())
    signature = _sign(CONTENT, [signer], certificates=[fake_intermediate.certificate, impostor.certificate])
    result = verify_one(signature, CONTENT, pki)
    assert result.reasons == (f"no certificate chain to a trust anchor: {_label(signer)}",)


@pytest.mark.parametrize(
    ("ca", "reason"),
    [
        (False, "issuing certificate is not a CA (basicConstraints cA=FALSE)"),
        (None, "issuing certificate is not a CA (no basicConstraints)"),
    ],
    ids=["ca-false", "no-basic-constraints"],
)
def test_chain_through_a_non_ca_intermediate(pki: Pki, ca: bool | None, reason: str) -> None:
    not_a_ca = intermediate_ca("Not A CA", pki.root, key=ec_key(), ca=ca)
    signer = end_entity("victim@chu-nord.mssante.test", not_a_ca, key=ec_key())
    result = verify_one(_sign(CONTENT, [signer], certificates=[not_a_ca.certificate]), CONTENT, pki)
    assert result.reasons == (f"{reason}: {_label(not_a_ca)}",)


def test_intermediate_without_key_cert_sign(pki: Pki) -> None:
    ca = intermediate_ca("CRL Only CA", pki.root, key=ec_key(), key_usage={"crl_sign"})
    signer = end_entity("x@chu-nord.mssante.test", ca, key=ec_key())
    result = verify_one(_sign(CONTENT, [signer], certificates=[ca.certificate]), CONTENT, pki)
    assert result.reasons == (f"issuing certificate key usage does not allow keyCertSign: {_label(ca)}",)


def test_path_length_constraint(pki: Pki) -> None:
    constrained = intermediate_ca("Constrained CA", pki.root, key=ec_key(), path_length=0)
    sub = intermediate_ca("Sub CA", constrained, key=ec_key())
    signer = end_entity("deep@chu-nord.mssante.test", sub, key=ec_key())
    signature = _sign(CONTENT, [signer], certificates=[sub.certificate, constrained.certificate])
    result = verify_one(signature, CONTENT, pki)
    assert result.reasons == (f"path length constraint 0 exceeded: {_label(constrained)}",)


def test_chain_length_is_bounded(pki: Pki) -> None:
    cas = [pki.intermediate]
    for level in range(5):
        cas.append(intermediate_ca(f"Level {level} CA", cas[-1], key=ec_key()))
    signer = end_entity("far@chu-nord.mssante.test", cas[-1], key=ec_key())
    signature = _sign(CONTENT, [signer], certificates=[ca.certificate for ca in cas])
    # signer + 6 CAs + root = 8 certificates
    assert verify_one(signature, CONTENT, pki).reasons[0].startswith("no certificate chain to a trust anchor")
    long_policy = VerificationPolicy(max_chain_length=8)
    assert verify_one(signature, CONTENT, pki, policy=long_policy).valid


def test_unprocessed_critical_extension_is_refused(pki: Pki) -> None:
    constraints = x509.NameConstraints(permitted_subtrees=[x509.RFC822Name("mssante.test")], excluded_subtrees=None)
    ca = intermediate_ca("Constrained Names CA", pki.root, key=ec_key(), extra_extensions=[(constraints, True)])
    signer = end_entity("n@chu-nord.mssante.test", ca, key=ec_key())
    result = verify_one(_sign(CONTENT, [signer], certificates=[ca.certificate]), CONTENT, pki)
    assert result.reasons == (f"unsupported critical extension nameConstraints: {_label(ca)}",)


def test_best_path_is_chosen_among_renewed_intermediates(pki: Pki) -> None:
    """Two intermediates with the same name and key, one expired: the valid one is used."""
    key = ec_key()
    expired = intermediate_ca("Renewed CA", pki.root, key=key, not_after=datetime(2024, 1, 1, tzinfo=UTC))
    current = intermediate_ca("Renewed CA", pki.root, key=key)
    signer = end_entity("r@chu-nord.mssante.test", current, key=ec_key())
    signature = _sign(CONTENT, [signer], certificates=[expired.certificate, current.certificate])
    result = verify_one(signature, CONTENT, pki)
    assert result.valid, result.reasons
    assert result.chain[1] == current.certificate


# --- revocation --------------------------------------------------------------------------------------------------


def _crl_for(issuer: Credential, *entries: Revocation, next_update_days: float = 7) -> x509.CertificateRevocationList:
    return crl(issuer, entries, this_update=NOW - days(1), next_update=NOW + days(next_update_days))


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (None, "certificate revoked"),
        (x509.ReasonFlags.key_compromise, "certificate revoked (keyCompromise)"),
        (x509.ReasonFlags.certificate_hold, "certificate on hold (suspended)"),
    ],
    ids=["unspecified", "key-compromise", "hold"],
)
def test_revoked_signer(pki: Pki, reason: x509.ReasonFlags | None, expected: str) -> None:
    signer = _signer(pki)
    signature = _sign(CONTENT, [signer], certificates=[pki.intermediate.certificate])
    revocations = _crl_for(pki.intermediate, Revocation(signer.certificate.serial_number, NOW - days(2), reason))
    result = verify_one(signature, CONTENT, pki, crls=[revocations])
    assert result.reasons == (f"{expected}: {_label(signer)}",)
    assert verify_one(signature, CONTENT, pki, crls=[_crl_for(pki.intermediate)]).valid


def test_revoked_intermediate(pki: Pki) -> None:
    ca = intermediate_ca("Revoked CA", pki.root, key=ec_key())
    signer = end_entity("s@chu-nord.mssante.test", ca, key=ec_key())
    signature = _sign(CONTENT, [signer], certificates=[ca.certificate])
    revocations = _crl_for(pki.root, Revocation(ca.certificate.serial_number, NOW - days(2)))
    result = verify_one(signature, CONTENT, pki, crls=[revocations])
    assert result.reasons == (f"certificate revoked: {_label(ca)}",)


def test_crl_not_signed_by_the_issuer_is_ignored(pki: Pki) -> None:
    signer = _signer(pki)
    signature = _sign(CONTENT, [signer], certificates=[pki.intermediate.certificate])
    entry = Revocation(signer.certificate.serial_number, NOW - days(1))
    # the issuer's name, another key: a forged CRL
    forged = _crl_for(Credential(pki.intermediate.certificate, ec_key()), entry)
    assert forged.issuer == pki.intermediate.certificate.subject
    result = verify_one(signature, CONTENT, pki, crls=[forged])
    assert result.valid, result.reasons
    # and it does not count as revocation information either
    required = VerificationPolicy(require_revocation_check=True)
    checked = verify_one(signature, CONTENT, pki, crls=[forged, _crl_for(pki.root)], policy=required)
    assert checked.reasons == (f"no revocation information: {_label(signer)}",)


def test_revocation_after_the_validation_time_does_not_count(pki: Pki) -> None:
    signer = _signer(pki)
    signature = sign_cms(CONTENT, signer, signing_time=datetime(2024, 6, 1, tzinfo=UTC))
    revocations = _crl_for(
        pki.intermediate, Revocation(signer.certificate.serial_number, datetime(2025, 1, 1, tzinfo=UTC))
    )
    extra = [pki.intermediate.certificate]
    then = verify_one(
        signature, CONTENT, pki, crls=[revocations], extra_certificates=extra, at=datetime(2024, 6, 2, tzinfo=UTC)
    )
    assert then.valid, then.reasons
    now = verify_one(signature, CONTENT, pki, crls=[revocations], extra_certificates=extra)
    assert now.reasons == (f"certificate revoked: {_label(signer)}",)


def test_key_compromise_counts_whatever_its_date(pki: Pki) -> None:
    signer = _signer(pki)
    signature = sign_cms(CONTENT, signer, signing_time=datetime(2024, 6, 1, tzinfo=UTC))
    entry = Revocation(
        signer.certificate.serial_number, datetime(2025, 1, 1, tzinfo=UTC), x509.ReasonFlags.key_compromise
    )
    result = verify_one(
        signature,
        CONTENT,
        pki,
        crls=[_crl_for(pki.intermediate, entry)],
        extra_certificates=[pki.intermediate.certificate],
        at=datetime(2024, 6, 2, tzinfo=UTC),
    )
    assert result.reasons == (f"certificate revoked (keyCompromise): {_label(signer)}",)


def test_revocation_check_required(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer], certificates=[pki.intermediate.certificate])
    required = VerificationPolicy(require_revocation_check=True)
    none = verify_one(signature, CONTENT, pki, policy=required)
    assert none.reasons == (
        f"no revocation information: {_label(pki.rsa_signer)}",
        f"no revocation information: {_label(pki.intermediate)}",
    )
    fresh = [_crl_for(pki.intermediate), _crl_for(pki.root)]
    assert verify_one(signature, CONTENT, pki, policy=required, crls=fresh).valid
    stale = [crl(pki.intermediate, this_update=NOW - days(30), next_update=NOW - days(1)), _crl_for(pki.root)]
    expired = verify_one(signature, CONTENT, pki, policy=required, crls=stale)
    assert expired.reasons == (f"CRL expired: {_label(pki.rsa_signer)}",)
    assert verify_one(signature, CONTENT, pki, crls=stale).valid  # not required: a stale CRL is no objection


def test_stale_crl_still_revokes(pki: Pki) -> None:
    signer = _signer(pki)
    signature = _sign(CONTENT, [signer], certificates=[pki.intermediate.certificate])
    stale = crl(
        pki.intermediate,
        [Revocation(signer.certificate.serial_number, NOW - days(20))],
        this_update=NOW - days(15),
        next_update=NOW - days(1),
    )
    assert verify_one(signature, CONTENT, pki, crls=[stale]).reasons == (f"certificate revoked: {_label(signer)}",)


def test_sha1_crl_revokes_but_does_not_prove_good_standing_under_strict(pki: Pki) -> None:
    signer = _signer(pki)
    signature = _sign(CONTENT, [signer], certificates=[pki.intermediate.certificate])
    entry = Revocation(signer.certificate.serial_number, NOW - days(1))
    revoking = crl(
        pki.intermediate, [entry], this_update=NOW - days(1), next_update=NOW + days(7), hash_algorithm="sha1"
    )
    assert verify_one(signature, CONTENT, pki, crls=[revoking]).reasons == (f"certificate revoked: {_label(signer)}",)
    empty = crl(pki.intermediate, this_update=NOW - days(1), next_update=NOW + days(7), hash_algorithm="sha1")
    assert empty.signature_hash_algorithm is not None
    assert empty.signature_hash_algorithm.name == "sha1"
    required = [_crl_for(pki.root), empty]
    strict = VerificationPolicy(require_revocation_check=True)
    assert verify_one(signature, CONTENT, pki, crls=required, policy=strict).reasons == (
        f"no revocation information: {_label(signer)}",
    )
    legacy_required = VerificationPolicy(
        require_revocation_check=True, certificate_signature_hashes=LEGACY.certificate_signature_hashes
    )
    assert verify_one(signature, CONTENT, pki, crls=required, policy=legacy_required).valid


# --- algorithms --------------------------------------------------------------------------------------------------


def test_sha1_digest_is_refused_by_strict_and_accepted_by_legacy(pki: Pki) -> None:
    signature = sign_cms(CONTENT, pki.rsa_signer, digest="sha1", signing_time=NOW)
    extra = [pki.intermediate.certificate]
    strict = verify_one(signature, CONTENT, pki, extra_certificates=extra, policy=STRICT)
    assert strict.reasons == ("digest algorithm sha1 is not allowed",)
    assert strict.digest_algorithm == "sha1"
    legacy = verify_one(signature, CONTENT, pki, extra_certificates=extra, policy=LEGACY)
    assert legacy.valid, legacy.reasons
    assert verify_one(signature, CONTENT + b"x", pki, extra_certificates=extra, policy=LEGACY).reasons == (
        "message digest does not match the content",
    )


def test_rsa_1024_signer_is_refused_by_strict_and_accepted_by_legacy(pki: Pki) -> None:
    signer = _signer(pki, key=rsa_key(1024))
    signature = _sign(CONTENT, [signer], certificates=[pki.intermediate.certificate])
    strict = verify_one(signature, CONTENT, pki)
    assert strict.reasons == (f"RSA key of 1024 bits is below 2048: {_label(signer)}",)
    assert verify_one(signature, CONTENT, pki, policy=LEGACY).valid


def test_sha1_signed_certificate_is_refused_by_strict(pki: Pki) -> None:
    signer = _signer(pki, hash_algorithm="sha1")
    signature = _sign(CONTENT, [signer], certificates=[pki.intermediate.certificate])
    strict = verify_one(signature, CONTENT, pki)
    assert strict.reasons == (f"certificate signature hash sha1 is not allowed: {_label(signer)}",)
    assert verify_one(signature, CONTENT, pki, policy=LEGACY).valid


def test_curve_outside_the_policy_is_refused(pki: Pki) -> None:
    signer = _signer(pki, key=ec.generate_private_key(ec.SECP256K1()))
    signature = _sign(CONTENT, [signer], certificates=[pki.intermediate.certificate])
    assert verify_one(signature, CONTENT, pki).reasons == (
        f"elliptic curve secp256k1 is not allowed: {_label(signer)}",
    )


# --- malformed input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"not a signature", b"\x30\x03\x02\x01\x01", b"\x30\x80"])
def test_garbage_is_a_signature_error(pki: Pki, data: bytes) -> None:
    with pytest.raises(SignatureError):
        verify_signed_data(data, CONTENT, anchors=[pki.root.certificate], at=NOW)
    with pytest.raises(SignatureError):
        encapsulated_content(data)


def test_other_content_info_is_not_signed_data(pki: Pki) -> None:
    data_info = asn1_cms.ContentInfo({"content_type": "data", "content": b"hello"}).dump()
    with pytest.raises(SignatureError, match="not a CMS SignedData"):
        verify_signed_data(data_info, None, anchors=[pki.root.certificate], at=NOW)


def test_trailing_bytes_are_refused(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer])
    with pytest.raises(SignatureError):
        verify_signed_data(signature + b"\x00", CONTENT, anchors=[pki.root.certificate], at=NOW)


def test_detached_signature_needs_its_content(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer])
    with pytest.raises(SignatureError, match="content was not supplied"):
        verify_signed_data(signature, None, anchors=[pki.root.certificate], at=NOW)
    with pytest.raises(SignatureError, match="no encapsulated content"):
        encapsulated_content(signature)


def test_content_differing_from_the_encapsulated_content_is_refused(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer], detached=False)
    with pytest.raises(SignatureError, match="differs"):
        verify_signed_data(signature, b"something else", anchors=[pki.root.certificate], at=NOW)
    assert verify_signed_data(
        signature, CONTENT, anchors=[pki.root.certificate], at=NOW, extra_certificates=[pki.intermediate.certificate]
    )[0].valid


def _tlv(tag: int, contents: bytes) -> bytes:
    length = len(contents)
    if length < 0x80:
        return bytes([tag, length]) + contents
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + contents


def test_garbage_signer_info_is_a_reason_not_an_exception(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer], certificates=[pki.intermediate.certificate])
    signed_data = asn1_cms.ContentInfo.load(signature)["content"]
    valid_signer_info = signed_data["signer_infos"][0].dump()
    garbage_signer_info = _tlv(0x30, b"\x02\x01\x01\x04\x03abc")  # SEQUENCE { version, OCTET STRING }
    fields = b"".join(
        signed_data[name].dump() for name in ("version", "digest_algorithms", "encap_content_info", "certificates")
    )
    rebuilt = _tlv(
        0x30,
        _tlv(0x06, bytes.fromhex("2a864886f70d010702"))  # id-signedData
        + _tlv(0xA0, _tlv(0x30, fields + _tlv(0x31, garbage_signer_info + valid_signer_info))),
    )
    results = verify_signed_data(rebuilt, CONTENT, anchors=[pki.root.certificate], at=NOW)
    assert len(results) == 2
    assert not results[0].valid
    assert results[0].reasons[0].startswith("malformed SignerInfo")
    assert results[0].certificate is None
    assert results[1].valid, results[1].reasons


def test_naive_validation_time_is_utc(pki: Pki) -> None:
    signature = _sign(CONTENT, [pki.rsa_signer], certificates=[pki.intermediate.certificate])
    assert verify_one(signature, CONTENT, pki, at=NOW.replace(tzinfo=None)).valid


# --- work bounds (hostile messages) ------------------------------------------------------------------------------


def test_path_search_is_bounded(pki: Pki) -> None:
    """Forty certificates sharing one name and one key all chain to each other: without bounds the search would
    try millions of paths. It must end quickly and fail closed."""
    key = ec_key()
    loop = [root_ca("Loop CA", key=key, serial=serial) for serial in range(1, 41)]
    signer = end_entity("loop@chu-nord.mssante.test", loop[0], key=ec_key())
    signature = _sign(CONTENT, [signer], certificates=[c.certificate for c in loop])
    result = verify_one(signature, CONTENT, pki)  # unbounded, this would take hours (the benches time it)
    assert result.reasons == (f"no certificate chain to a trust anchor: {_label(signer)}",)


def test_signers_beyond_the_bound_are_reported_not_verified(pki: Pki) -> None:
    signers = [_signer(pki, f"s{n}@chu-nord.mssante.test") for n in range(33)]
    signature = _sign(CONTENT, signers, certificates=[pki.intermediate.certificate])
    results = verify_signed_data(signature, CONTENT, anchors=[pki.root.certificate], at=NOW)
    assert len(results) == 33
    assert [r.valid for r in results] == [True] * 32 + [False]
    assert results[-1].reasons == ("not verified: the message has 33 signers, more than 32",)
