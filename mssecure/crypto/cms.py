"""CMS SignedData verification (RFC 5652, RFC 8551 §2): what ``cryptography`` does not do.

``cryptography`` signs, envelopes and decrypts CMS but cannot verify a signature. Here SignedData is parsed with
``asn1crypto``; the messageDigest attribute and each signature are checked with ``cryptography``; then the signer's
certificate is validated: a chain to a trust anchor, validity at the signing time and at the validation time, key
usage, the emailProtection EKU, revocation (CRLs), and the algorithms allowed by the policy.

The result is a value per signer — the caller decides what a message with one valid and one invalid signer means.
Reasons are precise (for logs and the archive); what a peer is told is one generic "verification failed".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

__all__ = ["LEGACY", "STRICT", "SignerResult", "VerificationPolicy", "encapsulated_content", "verify_signed_data"]


@dataclass(frozen=True)
class VerificationPolicy:
    """What a signature must meet. ``STRICT`` is mssecure's policy; ``LEGACY`` admits SHA-1 and RSA-1024, for
    checking old messages (such as the Direct Project's test vectors) as of a past date."""

    min_rsa_bits: int = 2048
    digests: frozenset[str] = frozenset({"sha256", "sha384", "sha512"})
    certificate_signature_hashes: frozenset[str] = frozenset({"sha256", "sha384", "sha512"})
    require_email_protection: bool = True
    require_revocation_check: bool = False  # when True, a chain certificate without a CRL from its issuer fails


STRICT = VerificationPolicy()
LEGACY = VerificationPolicy(
    min_rsa_bits=1024,
    digests=frozenset({"sha1", "sha256", "sha384", "sha512"}),
    certificate_signature_hashes=frozenset({"sha1", "sha256", "sha384", "sha512"}),
)


@dataclass(frozen=True)
class SignerResult:
    """The outcome for one SignerInfo."""

    certificate: x509.Certificate | None  # None when the signer's certificate is not in the message or supplied
    chain: tuple[x509.Certificate, ...]  # signer first, trust anchor last; empty when no chain was found
    signing_time: datetime | None  # the signingTime signed attribute, if any (timezone-aware UTC)
    digest_algorithm: str  # e.g. "sha256"
    reasons: tuple[str, ...]  # empty when valid; otherwise every problem found, most important first

    @property
    def valid(self) -> bool:
        return not self.reasons

    @property
    def email_addresses(self) -> tuple[str, ...]:
        """The signer certificate's rfc822Name SANs (and subject emailAddress), lowercased."""
        raise NotImplementedError


def verify_signed_data(
    signed_data: bytes,
    content: bytes | None,
    *,
    anchors: Sequence[x509.Certificate],
    at: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
    extra_certificates: Sequence[x509.Certificate] = (),
    policy: VerificationPolicy = STRICT,
) -> list[SignerResult]:
    """Verify every signer of a DER CMS ContentInfo(SignedData).

    ``content`` is the detached content (the exact bytes that were signed); None for encapsulated content.
    ``at`` is the validation time ("now" for live mail, a past date for old messages).
    Raises ``mssecure.errors.SignatureError`` only when the input is not a SignedData at all.
    """
    raise NotImplementedError


def encapsulated_content(signed_data: bytes) -> bytes:
    """The encapsulated content of an opaque-signed ContentInfo(SignedData) (``application/pkcs7-mime;
    smime-type=signed-data``); raises ``mssecure.errors.SignatureError`` if there is none."""
    raise NotImplementedError
