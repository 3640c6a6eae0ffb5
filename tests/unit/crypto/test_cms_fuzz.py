"""Property tests: whatever the bytes, verification either returns results or raises SignatureError."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssecure.crypto.cms import LEGACY, SignerResult, encapsulated_content, verify_signed_data
from mssecure.errors import SignatureError
from tests.support.testpki import Revocation, crl, days, ec_key, end_entity, intermediate_ca, root_ca, sign_cms

NOW = datetime.now(UTC)
CONTENT = b"Content-Type: text/plain\r\n\r\nResultat: hemoglobine 13,5 g/dL\r\n"


@dataclass(frozen=True)
class Sample:
    anchors: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]
    signatures: tuple[bytes, ...]  # detached over CONTENT, encapsulated, and ours (SHA-1, subjectKeyIdentifier)


@functools.cache
def sample() -> Sample:
    root = root_ca("Fuzz Root", key=ec_key())
    intermediate = intermediate_ca("Fuzz Mail CA", root, key=ec_key())
    alice = end_entity("alice@fuzz.test", intermediate, key=ec_key())
    bob = end_entity("bob@fuzz.test", intermediate, key=ec_key())
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(CONTENT)
        .add_signer(alice.certificate, alice.key, hashes.SHA256())
        .add_signer(bob.certificate, bob.key, hashes.SHA384())
        .add_certificate(intermediate.certificate)
    )
    detached = builder.sign(Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary])
    encapsulated = builder.sign(Encoding.DER, [pkcs7.PKCS7Options.Binary])
    ours = sign_cms(
        CONTENT,
        alice,
        digest="sha1",
        signing_time=NOW,
        use_key_identifier=True,
        certificates=[alice.certificate, intermediate.certificate],
    )
    revocations = crl(
        intermediate,
        [Revocation(bob.certificate.serial_number, NOW - days(1), x509.ReasonFlags.certificate_hold)],
        this_update=NOW - days(1),
        next_update=NOW + days(1),
    )
    return Sample((root.certificate,), (revocations,), (detached, encapsulated, ours))


def _verify(data: bytes, content: bytes | None) -> list[SignerResult] | None:
    """Verification of ``data``; None when it raised SignatureError (the only exception allowed)."""
    s = sample()
    try:
        return verify_signed_data(data, content, anchors=s.anchors, at=NOW, crls=s.crls, policy=LEGACY)
    except SignatureError:
        return None


def test_sample_signatures_verify() -> None:
    """The property tests below start from valid signatures (hold on bob's certificate)."""
    for index, signature in enumerate(sample().signatures):
        results = _verify(signature, CONTENT if index != 1 else None)
        assert results is not None
        assert results[0].valid, results[0].reasons
        if len(results) == 2:
            assert results[1].reasons[0].startswith("certificate on hold (suspended)")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_signature_error(data: bytes) -> None:
    _verify(data, CONTENT)
    _verify(data, None)
    with contextlib.suppress(SignatureError):
        encapsulated_content(data)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[int, bytes]:
    """A valid signature (by index) with a few bytes flipped, replaced, inserted or deleted, or cut short.

    Positions are uniform over the whole encoding (Hypothesis' own integers favour the first bytes, where any
    change is a parse error): most mutations then land in certificates, attributes and SignerInfos."""
    index = draw(st.integers(0, len(sample().signatures) - 1))
    data = bytearray(sample().signatures[index])
    rng = draw(st.randoms(use_true_random=False))
    for _ in range(draw(st.integers(1, 3))):
        position = rng.randrange(len(data))
        kind = draw(st.sampled_from(["flip", "flip", "flip", "set", "insert", "delete", "truncate"]))
        if kind == "flip":
            data[position] ^= 1 << rng.randrange(8)
        elif kind == "set":
            data[position] = draw(st.sampled_from([0x00, 0x80, 0x81, 0xFF, 0x30, 0x31, 0xA0, 0x05]))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        else:
            del data[position:]
        if not data:
            data.append(0)
    return index, bytes(data)


def test_every_single_byte_corruption_is_handled() -> None:
    """Deterministic sweep: each byte of a signature replaced in turn never escapes as another exception,
    and the corruptions the verifier accepts are only those outside what is signed or checked."""
    signature = sample().signatures[2]
    outcomes = {"error": 0, "valid": 0, "invalid": 0}
    for position in range(len(signature)):
        corrupted = signature[:position] + bytes([signature[position] ^ 0x5A]) + signature[position + 1 :]
        results = _verify(corrupted, CONTENT)
        if results is None:
            outcomes["error"] += 1
        else:
            outcomes["valid" if all(r.valid for r in results) else "invalid"] += 1
    assert outcomes["error"] > 0
    assert outcomes["invalid"] > outcomes["valid"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_signatures_raise_only_signature_error(mutation: tuple[int, bytes]) -> None:
    index, data = mutation
    results = _verify(data, CONTENT if index != 1 else None)
    if results is not None:
        for result in results:
            assert isinstance(result.reasons, tuple)
            assert isinstance(result.email_addresses, tuple)  # the property never raises either
    with contextlib.suppress(SignatureError):
        encapsulated_content(data)
