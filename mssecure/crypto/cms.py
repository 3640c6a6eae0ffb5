"""CMS SignedData verification (RFC 5652, RFC 8551 §2): what ``cryptography`` does not do.

``cryptography`` signs, envelopes and decrypts CMS but cannot verify a signature. Here SignedData is parsed with
``asn1crypto``; the messageDigest attribute and each signature are checked with ``cryptography``; then the signer's
certificate is validated: a chain to a trust anchor, validity at the signing time and at the validation time, key
usage, the emailProtection EKU, revocation (CRLs), and the algorithms allowed by the policy.

The result is a value per signer — the caller decides what a message with one valid and one invalid signer means.
Reasons are precise (for logs and the archive); what a peer is told is one generic "verification failed".

How the certificate path is validated, and why it is written here
-----------------------------------------------------------------
``cryptography.x509.verification`` was considered and not used: it takes no CRL, has no notion of a claimed signing
time, and its Web-PKI-derived policy refuses what a verifier of health mail must be able to *report on* rather than
crash on — SHA-1-signed and RSA-1024 certificates (the Direct Project vectors, old archived messages checked "as
of" a past date under ``LEGACY``), certificates without a SAN (Direct domain certificates, ``emailAddress`` in the
subject). A small path builder is simpler to reason about and gives one precise reason per problem:

* Paths are built from the signer through the candidate issuers found among the certificates embedded in the
  SignedData and ``extra_certificates`` (subject name equal to the issuer name after RFC 5280 §7.1 normalisation,
  and the issuer's key verifies the certificate's signature) up to a trust anchor. An anchor ends a path when it
  is the certificate itself or when it is the issuer whose key verifies the last certificate (Direct trust stores
  hold roots, intermediates and sometimes leaves). At most ``policy.max_chain_length`` certificates, anchor
  included. Candidate paths are tried shortest first; the first without problems wins (otherwise the one with the
  fewest problems is reported). The search is bounded (``_MAX_*``) so that hostile messages stay cheap.
* On every certificate except the anchor (RFC 5280 §6.1.3, §6.1.4): its signature hash must be allowed by the
  policy, no critical extension may be left unprocessed, and an issuing certificate must have basicConstraints
  cA=TRUE, keyCertSign when keyUsage is present, and a pathLenConstraint that is respected. The anchor is trusted by
  configuration (RFC 5280 §6.1.1 d): its self-signature is not checked, but it must not explicitly deny being a CA.
* Every key in the path (anchor included) must meet the policy's RSA size or elliptic curve; every certificate must
  be valid at ``at``, and the signer's also at the signingTime it claims. The claimed time is the signer's word
  (RFC 5652 §11.3: "acceptance of a purported signing time is a matter of a recipient's discretion"), so it is an
  extra constraint, never a substitute for the validation time.
* Revocation (RFC 5280 §6.3, simplified): for each certificate but the anchor, the CRLs whose issuer name is the
  certificate's issuer name and whose signature verifies with the issuer's key. An entry counts when its
  revocation date is not after ``at`` (keyCompromise and cACompromise count whatever their date);
  certificateHold is reported as a suspension; removeFromCRL entries are ignored. A CRL proves "not revoked" only
  while fresh (nextUpdate not before ``at``) and signed with an allowed hash. Delta CRLs, indirect CRLs and the
  issuingDistributionPoint scope are not processed; CRLs are never fetched. Certificate and CRL signatures are
  verified here, not with ``is_signature_valid`` (which refuses SHA-1-signed CRLs such as the Direct ones).

Not implemented: nameConstraints and policy constraints (a certificate marking them critical fails with
"unsupported critical extension"), attribute certificates, EdDSA and DSA signatures.
"""

from __future__ import annotations

import functools
import hmac
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from mssecure.errors import SignatureError

__all__ = [
    "LEGACY",
    "STRICT",
    "SignerResult",
    "VerificationPolicy",
    "embedded_certificates",
    "encapsulated_content",
    "validate_certificate",
    "verify_signed_data",
]

# What cryptography raises on a certificate whose extensions are malformed (some only when they are read).
_MALFORMED_EXTENSIONS = (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


@dataclass(frozen=True)
class VerificationPolicy:
    """What a signature must meet. ``STRICT`` is mssecure's policy; ``LEGACY`` admits SHA-1 and RSA-1024, for
    checking old messages (such as the Direct Project's test vectors) as of a past date."""

    min_rsa_bits: int = 2048
    digests: frozenset[str] = frozenset({"sha256", "sha384", "sha512"})
    certificate_signature_hashes: frozenset[str] = frozenset({"sha256", "sha384", "sha512"})
    require_email_protection: bool = True
    require_revocation_check: bool = False  # when True, a chain certificate without a CRL from its issuer fails
    ec_curves: frozenset[str] = frozenset({"secp256r1", "secp384r1", "secp521r1"})  # cryptography's curve names
    max_chain_length: int = 6  # certificates in a path, signer and trust anchor included


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
        if self.certificate is None:
            return ()
        return _email_addresses(self.certificate)


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
    ``at`` is the validation time ("now" for live mail, a past date for old messages); a naive datetime is UTC.
    Raises ``mssecure.errors.SignatureError`` only when the input is not a SignedData at all (or when the signed
    content is missing: detached without ``content``, or ``content`` differing from the encapsulated content).
    """
    parsed = _parse(signed_data)
    if parsed.econtent is None:
        if content is None:
            raise SignatureError("detached signature: the signed content was not supplied")
        signed_content = content
    else:
        if content is not None and content != parsed.econtent:
            raise SignatureError("the supplied content differs from the content encapsulated in the SignedData")
        signed_content = parsed.econtent
    context = _Context(
        content=signed_content,
        content_type=parsed.content_type,
        at=_as_utc(at),
        policy=policy,
        candidates=_unique([*parsed.certificates, *(_wrap(c) for c in extra_certificates)]),
        anchors=_unique([_wrap(c) for c in anchors]),
        crls=tuple(crl for crl in (_wrap_crl(c) for c in crls) if crl is not None),
    )
    return [
        _verify_signer(signer_info, context) if index < _MAX_SIGNERS else _not_verified(len(parsed.signer_infos))
        for index, signer_info in enumerate(parsed.signer_infos)
    ]


def encapsulated_content(signed_data: bytes) -> bytes:
    """The encapsulated content of an opaque-signed ContentInfo(SignedData) (``application/pkcs7-mime;
    smime-type=signed-data``); raises ``mssecure.errors.SignatureError`` if there is none."""
    econtent = _parse(signed_data).econtent
    if econtent is None:
        raise SignatureError("the SignedData has no encapsulated content (detached signature)")
    return econtent


def embedded_certificates(signed_data: bytes) -> tuple[x509.Certificate, ...]:
    """The X.509 certificates a ContentInfo(SignedData) carries (malformed ones left out), without verifying
    anything; raises ``mssecure.errors.SignatureError`` if it is not a SignedData."""
    return tuple(c.certificate for c in _parse(signed_data).certificates)


def validate_certificate(
    certificate: x509.Certificate,
    *,
    anchors: Sequence[x509.Certificate],
    at: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
    intermediates: Sequence[x509.Certificate] = (),
    policy: VerificationPolicy = STRICT,
    signing_time: datetime | None = None,
) -> tuple[tuple[x509.Certificate, ...], tuple[str, ...]]:
    """The path validation of a certificate alone, as of a signer's: (chain, reasons), as in a SignerResult — the
    chain to an anchor, validity, key sizes and hashes, CA constraints, revocation (``crls``), and the key usage a
    signature needs (digitalSignature or nonRepudiation; emailProtection if ``policy`` requires it)."""
    context = _Context(
        content=b"",
        content_type=_ID_DATA,
        at=_as_utc(at),
        policy=policy,
        candidates=_unique([_wrap(c) for c in intermediates]),
        anchors=_unique([_wrap(c) for c in anchors]),
        crls=tuple(crl for crl in (_wrap_crl(c) for c in crls) if crl is not None),
    )
    outcome = _Outcome(signing_time=None if signing_time is None else _as_utc(signing_time))
    _check_certificate_path(_wrap(certificate), outcome, context)
    return tuple(c.certificate for c in outcome.chain), tuple(dict.fromkeys(sorted(outcome.trust, key=_severity)))


# --- algorithms ------------------------------------------------------------------------------------------------

_ID_DATA = "1.2.840.113549.1.7.1"
_ID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_ATTR_CONTENT_TYPE = "1.2.840.113549.1.9.3"  # RFC 5652 §11.1
_ATTR_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"  # RFC 5652 §11.2
_ATTR_SIGNING_TIME = "1.2.840.113549.1.9.5"  # RFC 5652 §11.3
_ATTR_ALGORITHM_PROTECTION = "1.2.840.113549.1.9.52"  # RFC 6211
_MGF1 = "1.2.840.113549.1.1.8"

# RFC 3370 §2, RFC 5754 §2
_DIGEST_NAMES = {
    "1.2.840.113549.2.5": "md5",
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

_RSA = "RSASSA-PKCS1-v1_5"
_PSS = "RSASSA-PSS"
_ECDSA = "ECDSA"
# signatureAlgorithm OID -> (scheme, hash named by the OID or None when the digestAlgorithm decides)
_SIGNATURE_ALGORITHMS: dict[str, tuple[str, str | None]] = {
    "1.2.840.113549.1.1.1": (_RSA, None),  # rsaEncryption, RFC 3370 §3.2
    "1.2.840.113549.1.1.5": (_RSA, "sha1"),
    "1.2.840.113549.1.1.14": (_RSA, "sha224"),
    "1.2.840.113549.1.1.11": (_RSA, "sha256"),  # RFC 5754 §3.2
    "1.2.840.113549.1.1.12": (_RSA, "sha384"),
    "1.2.840.113549.1.1.13": (_RSA, "sha512"),
    "1.2.840.113549.1.1.10": (_PSS, None),  # id-RSASSA-PSS, RFC 4056 §2
    "1.2.840.10045.2.1": (_ECDSA, None),  # id-ecPublicKey, as some implementations write it
    "1.2.840.10045.4.1": (_ECDSA, "sha1"),
    "1.2.840.10045.4.3.1": (_ECDSA, "sha224"),  # RFC 5753 §2.1.1, RFC 5754 §3.3
    "1.2.840.10045.4.3.2": (_ECDSA, "sha256"),
    "1.2.840.10045.4.3.3": (_ECDSA, "sha384"),
    "1.2.840.10045.4.3.4": (_ECDSA, "sha512"),
}

# Extensions whose meaning this module applies (RFC 5280 §4.2: a critical extension not processed fails the path).
# certificatePolicies is accepted because validation runs with initial-policy-set = anyPolicy and no explicit
# policy required (RFC 5280 §6.1.1 c, e), so it never changes the outcome.
_PROCESSED_EXTENSIONS = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.CERTIFICATE_POLICIES,
    }
)
_EXTENSION_NAMES = {
    ExtensionOID.NAME_CONSTRAINTS: "nameConstraints",
    ExtensionOID.POLICY_CONSTRAINTS: "policyConstraints",
    ExtensionOID.INHIBIT_ANY_POLICY: "inhibitAnyPolicy",
    ExtensionOID.POLICY_MAPPINGS: "policyMappings",
}


# Work bounds, so that a hostile message (thousands of signers, or of certificates sharing one name and key) stays
# cheap. Exhausting a bound fails closed: the signer is reported as not verified or without a chain.
_MAX_SIGNERS = 32  # SignerInfos verified; the others get a reason
_MAX_SIGNER_CANDIDATES = 8  # certificates matching one SignerIdentifier whose key is tried
_MAX_PATHS = 16  # candidate paths evaluated per signer (cross-certificates, renewed CAs with the same name)
_MAX_EXPANSIONS = 256  # certificates whose issuers are searched, per signer
_MAX_CERTIFICATE_SIGNATURE_CHECKS = 1024  # certificate signatures verified while building paths, per call

_E = TypeVar("_E", bound=x509.ExtensionType)

# --- parsing ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Cert:
    """A certificate with what path building compares, computed once."""

    certificate: x509.Certificate
    der: bytes
    subject: str  # name keys normalised per RFC 5280 §7.1 (asn1crypto's Name.hashable)
    issuer: str
    serial: int
    key_identifier: bytes | None  # subjectKeyIdentifier, or the RFC 5280 §4.2.1.2 (1) SHA-1 of the key

    @property
    def label(self) -> str:
        try:
            return self.certificate.subject.rfc4514_string()
        except ValueError:
            return f"serial {self.serial:#x}"


@dataclass(frozen=True, eq=False)
class _Crl:
    crl: x509.CertificateRevocationList
    issuer: str


@dataclass(frozen=True)
class _Parsed:
    content_type: str
    econtent: bytes | None
    certificates: tuple[_Cert, ...]
    signer_infos: tuple[Any, ...]


def _parse(signed_data: bytes) -> _Parsed:
    """Parse the ContentInfo down to the SignerInfos (which stay lazy: their problems are per-signer reasons)."""
    try:
        info = asn1_cms.ContentInfo.load(signed_data, strict=True)
        content_type = info["content_type"].dotted
        if content_type != _ID_SIGNED_DATA:
            raise SignatureError(f"not a CMS SignedData (content type {content_type})")
        sd = info["content"]
        encap = sd["encap_content_info"]
        econtent_type = str(encap["content_type"].dotted)
        econtent_value = encap["content"]
        econtent = None if isinstance(econtent_value, asn1_core.Void) else bytes(econtent_value.__bytes__())
        certificates: list[_Cert] = []
        embedded = sd["certificates"]
        if not isinstance(embedded, asn1_core.Void):
            for choice in embedded:
                certificate = _load_embedded(choice)
                if certificate is not None:
                    certificates.append(certificate)
        signer_infos = tuple(sd["signer_infos"])
    except SignatureError:
        raise
    except Exception as exc:  # asn1crypto reports malformed DER as ValueError, TypeError, KeyError, ...
        raise SignatureError(f"not a valid CMS SignedData ({type(exc).__name__}: {exc})"[:300]) from exc
    return _Parsed(econtent_type, econtent, tuple(certificates), signer_infos)


def _load_embedded(choice: Any) -> _Cert | None:
    """An X.509 certificate from the SignedData's CertificateSet; None for attribute certificates and garbage."""
    try:
        if choice.name != "certificate":
            return None
        if choice.chosen.serial_number <= 0:  # RFC 5280 §4.1.2.2; cryptography warns, and will refuse it
            return None
        return _wrap(x509.load_der_x509_certificate(choice.chosen.dump()))
    except Exception:  # a malformed embedded certificate is simply not a candidate
        return None


def _wrap(certificate: x509.Certificate) -> _Cert:
    return _wrap_der(certificate.public_bytes(Encoding.DER))


@functools.lru_cache(maxsize=1024)
def _wrap_der(der: bytes) -> _Cert:
    """The same certificates come with every message (the signer's, its CA, the anchors): parsed once each."""
    certificate = x509.load_der_x509_certificate(der)
    try:
        parsed = asn1_x509.Certificate.load(der)
        tbs = parsed["tbs_certificate"]
        subject = _name_key(tbs["subject"])
        issuer = _name_key(tbs["issuer"])
        serial = int(tbs["serial_number"].native)  # read here: cryptography warns on a non-positive serial
    except Exception:  # asn1crypto stricter than cryptography: compare the encodings instead
        parsed = None
        subject = "der:" + certificate.subject.public_bytes().hex()
        issuer = "der:" + certificate.issuer.public_bytes().hex()
        serial = certificate.serial_number
    key_identifier: bytes | None = None
    if parsed is not None:
        try:
            key_identifier = parsed.key_identifier or parsed.public_key.sha1
        except Exception:
            key_identifier = None
    return _Cert(certificate, der, subject, issuer, serial, key_identifier)


def _name_key(name: Any) -> str:
    return _name_key_of(bytes(name.dump()))


@functools.lru_cache(maxsize=4096)
def _name_key_of(der: bytes) -> str:
    """The comparison key of an encoded Name (RFC 5280 §7.1 via asn1crypto's stringprep: 0.8 ms for a
    certificate's names, the same few names in every message)."""
    try:
        return str(asn1_x509.Name.load(der).hashable)
    except Exception:  # stringprep refuses some characters: fall back to the exact encoding
        return "der:" + der.hex()


def _wrap_crl(crl: x509.CertificateRevocationList) -> _Crl | None:
    try:
        issuer = asn1_crl.CertificateList.load(crl.public_bytes(Encoding.DER))["tbs_cert_list"]["issuer"]
        return _Crl(crl, _name_key(issuer))
    except Exception:
        return None


def _unique(certificates: Sequence[_Cert]) -> tuple[_Cert, ...]:
    seen: set[bytes] = set()
    unique = []
    for certificate in certificates:
        if certificate.der not in seen:
            seen.add(certificate.der)
            unique.append(certificate)
    return tuple(unique)


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


# --- one signer ------------------------------------------------------------------------------------------------


@dataclass
class _Context:
    content: bytes
    content_type: str
    at: datetime
    policy: VerificationPolicy
    candidates: tuple[_Cert, ...]
    anchors: tuple[_Cert, ...]
    crls: tuple[_Crl, ...]
    signed_by_cache: dict[tuple[bytes, bytes], bool] = field(default_factory=dict)
    signature_checks_left: int = _MAX_CERTIFICATE_SIGNATURE_CHECKS

    def is_anchor(self, certificate: _Cert) -> bool:
        return any(anchor.der == certificate.der for anchor in self.anchors)


# SignerResult.reasons, most important first: after the signature itself (integrity), what makes the signer
# untrustworthy, then what makes the certificate unusable, then what is merely too weak for the policy.
_SEVERITY = (
    ("certificate revoked", "certificate on hold"),
    ("no certificate chain", "issuing certificate", "path length", "unsupported critical", "certificate extensions"),
    ("certificate expired", "certificate not yet valid"),
    ("key usage", "extended key usage"),
    ("no revocation information", "CRL expired"),
)


def _severity(reason: str) -> int:
    for rank, prefixes in enumerate(_SEVERITY):
        if reason.startswith(prefixes):
            return rank
    return len(_SEVERITY)  # algorithms and key sizes the policy refuses


@dataclass
class _Outcome:
    """What is learnt about one signer; reasons are kept by importance and joined at the end."""

    digest_algorithm: str = "unknown"
    signing_time: datetime | None = None
    signer: _Cert | None = None
    chain: tuple[_Cert, ...] = ()
    integrity: list[str] = field(default_factory=list)  # the signature itself: digest, attributes, signature
    algorithms: list[str] = field(default_factory=list)  # what the policy refuses in the CMS algorithms
    trust: list[str] = field(default_factory=list)  # the signer's certificate and its chain (ranked by _severity)

    def result(self) -> SignerResult:
        return SignerResult(
            certificate=None if self.signer is None else self.signer.certificate,
            chain=tuple(c.certificate for c in self.chain),
            signing_time=self.signing_time,
            digest_algorithm=self.digest_algorithm,
            reasons=tuple(dict.fromkeys([*self.integrity, *sorted([*self.algorithms, *self.trust], key=_severity)])),
        )


def _not_verified(count: int) -> SignerResult:
    reason = f"not verified: the message has {count} signers, more than {_MAX_SIGNERS}"
    return SignerResult(certificate=None, chain=(), signing_time=None, digest_algorithm="unknown", reasons=(reason,))


def _verify_signer(signer_info: Any, context: _Context) -> SignerResult:
    outcome = _Outcome()
    try:
        _check_signer(signer_info, context, outcome)
    except Exception as exc:  # a malformed SignerInfo or certificate is a reason, never an unhandled error
        outcome.integrity.append(f"malformed SignerInfo ({type(exc).__name__})")
    return outcome.result()


def _check_signer(signer_info: Any, context: _Context, outcome: _Outcome) -> None:
    policy = context.policy
    digest_oid = str(signer_info["digest_algorithm"]["algorithm"].dotted)
    digest_name = _DIGEST_NAMES.get(digest_oid)
    outcome.digest_algorithm = digest_name or digest_oid
    if digest_name is None:
        outcome.integrity.append(f"unsupported digest algorithm {digest_oid}")
    elif digest_name not in policy.digests:
        outcome.algorithms.append(f"digest algorithm {digest_name} is not allowed")

    # RFC 5652 §5.4: with signed attributes, the signature covers their DER encoding as a SET OF (tag 0x31), not
    # the [0] IMPLICIT encoding found in the SignerInfo. The original content octets are kept as they are.
    signed_attrs = signer_info["signed_attrs"]
    if isinstance(signed_attrs, asn1_core.Void):
        if context.content_type != _ID_DATA:  # RFC 5652 §5.3: signedAttrs MUST be present for other types
            outcome.integrity.append("signed attributes are missing for a content type other than id-data")
        signed_bytes = context.content
    else:
        _check_signed_attributes(signed_attrs, signer_info, digest_name, context, outcome)
        contents = bytes(signed_attrs.contents or b"")
        signed_bytes = b"\x31" + _der_length(len(contents)) + contents

    candidates = _signer_candidates(signer_info["sid"], context)[:_MAX_SIGNER_CANDIDATES]
    if not candidates:
        outcome.integrity.append("signer certificate not found")
        return
    signer = candidates[0]
    if digest_name is not None:
        # Several certificates may match the identifier (a renewed certificate keeping its serial): the signer is
        # the one whose key verifies; if none does, the first is reported with its problem.
        problems = [_verify_signature(signer_info, candidate, signed_bytes, digest_name) for candidate in candidates]
        verified = [candidate for candidate, problem in zip(candidates, problems, strict=True) if problem is None]
        if verified:
            signer = verified[0]
        else:
            outcome.integrity.append(problems[0] or "signature is invalid")
    outcome.signer = signer
    _check_certificate_path(signer, outcome, context)


def _check_signed_attributes(
    signed_attrs: Any, signer_info: Any, digest_name: str | None, context: _Context, outcome: _Outcome
) -> None:
    values: dict[str, list[Any]] = {}
    for attribute in signed_attrs:
        values.setdefault(str(attribute["type"].dotted), []).append(attribute["values"])

    def single(oid: str, name: str, required: bool) -> Any:
        # RFC 5652 §11.1-11.3: one attribute, one value
        found = values.get(oid, [])
        if not found:
            if required:
                outcome.integrity.append(f"{name} signed attribute is missing")
            return None
        if len(found) > 1 or len(found[0]) != 1:
            outcome.integrity.append(f"{name} signed attribute must have exactly one value")
            return None
        return found[0][0]

    content_type = single(_ATTR_CONTENT_TYPE, "contentType", required=True)
    if content_type is not None and content_type.dotted != context.content_type:
        outcome.integrity.append("contentType signed attribute does not match the encapsulated content type")

    message_digest = single(_ATTR_MESSAGE_DIGEST, "messageDigest", required=True)
    if message_digest is not None and digest_name is not None:
        digest = hashes.Hash(_HASHES[digest_name]())
        digest.update(context.content)
        if not hmac.compare_digest(digest.finalize(), bytes(message_digest.native)):  # RFC 5652 §5.4
            outcome.integrity.append("message digest does not match the content")

    signing_time = single(_ATTR_SIGNING_TIME, "signingTime", required=False)
    if signing_time is not None:
        moment = signing_time.native  # UTCTime or GeneralizedTime
        if isinstance(moment, datetime):
            outcome.signing_time = _as_utc(moment)
        else:  # asn1crypto's extended_datetime for year 0
            outcome.integrity.append("signingTime signed attribute is malformed")

    protection = single(_ATTR_ALGORITHM_PROTECTION, "CMSAlgorithmProtection", required=False)
    if protection is not None:  # RFC 6211: the protected algorithms must be those of the SignerInfo
        same_digest = _algorithm_key(protection["digest_algorithm"]) == _algorithm_key(signer_info["digest_algorithm"])
        protected_signature = protection["signature_algorithm"]
        same_signature = isinstance(protected_signature, asn1_core.Void) or _algorithm_key(
            protected_signature
        ) == _algorithm_key(signer_info["signature_algorithm"])
        if not (same_digest and same_signature):
            outcome.integrity.append("CMSAlgorithmProtection attribute does not match the signer's algorithms")


def _algorithm_key(identifier: Any) -> tuple[str, bytes]:
    """An AlgorithmIdentifier for comparison; absent parameters and NULL are the same (RFC 5754 §2)."""
    parameters = identifier["parameters"]
    if isinstance(parameters, asn1_core.Void | asn1_core.Null):
        return str(identifier["algorithm"].dotted), b""
    return str(identifier["algorithm"].dotted), bytes(parameters.dump())


def _signer_candidates(sid: Any, context: _Context) -> list[_Cert]:
    """Certificates matching the SignerIdentifier (RFC 5652 §5.3), from the message, the caller and the anchors."""
    pool = _unique([*context.candidates, *context.anchors])
    if sid.name == "issuer_and_serial_number":
        issuer = _name_key(sid.chosen["issuer"])
        serial = sid.chosen["serial_number"].native
        return [c for c in pool if c.serial == serial and c.issuer == issuer]
    if sid.name == "subject_key_identifier":
        key_identifier = bytes(sid.chosen.native)
        return [c for c in pool if c.key_identifier == key_identifier]
    return []


def _verify_signature(signer_info: Any, signer: _Cert, data: bytes, digest_name: str) -> str | None:
    """None when the SignerInfo's signature over ``data`` verifies with the signer's key, else the problem."""
    algorithm = signer_info["signature_algorithm"]
    oid = str(algorithm["algorithm"].dotted)
    scheme, named_hash = _SIGNATURE_ALGORITHMS.get(oid, ("", None))
    if not scheme:
        return f"unsupported signature algorithm {oid}"
    if named_hash is not None and named_hash != digest_name:
        return f"signature algorithm {scheme} with {named_hash} does not match digest algorithm {digest_name}"
    key = _public_key(signer.certificate)
    hash_algorithm = _HASHES[digest_name]()
    signature = bytes(signer_info["signature"].native)
    try:
        if scheme == _ECDSA:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return "signature algorithm ECDSA does not match the signer's key"
            key.verify(signature, data, ec.ECDSA(hash_algorithm))
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                return f"signature algorithm {scheme} does not match the signer's key"
            if scheme == _PSS:
                pss, problem = _pss_padding(algorithm["parameters"], digest_name)
                if pss is None:
                    return problem
                key.verify(signature, data, pss, hash_algorithm)
            else:
                key.verify(signature, data, padding.PKCS1v15(), hash_algorithm)
    except InvalidSignature:
        return "signature is invalid"
    return None


def _pss_padding(parameters: Any, digest_name: str) -> tuple[padding.PSS | None, str]:
    """RFC 4056 §2: the PSS parameters must be present, use MGF1, and hash with the SignerInfo's digest."""
    if isinstance(parameters, asn1_core.Void):
        return None, "RSASSA-PSS parameters are missing"
    hash_name = _DIGEST_NAMES.get(str(parameters["hash_algorithm"]["algorithm"].dotted))
    mask = parameters["mask_gen_algorithm"]
    mask_hash = _DIGEST_NAMES.get(str(mask["parameters"]["algorithm"].dotted))
    if hash_name != digest_name or str(mask["algorithm"].dotted) != _MGF1 or mask_hash is None:
        return None, "RSASSA-PSS parameters do not match the digest algorithm"
    if parameters["trailer_field"].native not in (1, "trailer_field_bc"):  # asn1crypto names the value 1
        return None, "RSASSA-PSS trailer field is not 1"
    salt_length = int(parameters["salt_length"].native)
    return padding.PSS(mgf=padding.MGF1(_HASHES[mask_hash]()), salt_length=salt_length), ""


def _public_key(certificate: x509.Certificate) -> CertificatePublicKeyTypes | None:
    try:
        return certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return None


# --- the signer's certificate and its path -----------------------------------------------------------------------


def _check_certificate_path(signer: _Cert, outcome: _Outcome, context: _Context) -> None:
    best: tuple[tuple[_Cert, ...], list[str]] | None = None
    for tried, path in enumerate(_candidate_paths(signer, context)):
        problems = _path_problems(path, outcome.signing_time, context)
        if best is None or len(problems) < len(best[1]):
            best = (path, problems)
        if not problems or tried >= _MAX_PATHS:
            break
    if best is None:
        outcome.trust.append(f"no certificate chain to a trust anchor: {signer.label}")
        outcome.trust.extend(_certificate_problems(signer, 0, (signer,), outcome.signing_time, context))
        return
    outcome.chain, problems = best
    outcome.trust.extend(problems)


def _candidate_paths(signer: _Cert, context: _Context) -> Iterator[tuple[_Cert, ...]]:
    """Paths from the signer to a trust anchor, shortest first (breadth first), anchors first at each step."""
    if context.is_anchor(signer):  # the certificate itself is trusted
        yield (signer,)
        return
    queue: deque[tuple[_Cert, ...]] = deque([(signer,)])
    expansions = 0
    while queue and expansions < _MAX_EXPANSIONS:
        path = queue.popleft()
        expansions += 1
        current, in_path = path[-1], {c.der for c in path}
        for anchor in context.anchors:
            if anchor.der not in in_path and anchor.subject == current.issuer and _signed_by(current, anchor, context):
                yield (*path, anchor)
        if len(path) + 1 >= context.policy.max_chain_length:  # room for an intermediate and an anchor above it
            continue
        for issuer in context.candidates:
            if (
                issuer.der not in in_path
                and not context.is_anchor(issuer)
                and issuer.subject == current.issuer
                and _signed_by(current, issuer, context)
            ):
                queue.append((*path, issuer))


def _signed_by(child: _Cert, issuer: _Cert, context: _Context) -> bool:
    """Whether the issuer's key verifies the child's signature (RSA PKCS#1 v1.5 or PSS, ECDSA)."""
    key = (child.der, issuer.der)
    if key not in context.signed_by_cache:
        if context.signature_checks_left <= 0:
            return False
        context.signature_checks_left -= 1
        context.signed_by_cache[key] = _verify_certificate_signature(child.certificate, issuer.certificate)
    return context.signed_by_cache[key]


def _verify_certificate_signature(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    return _verify_x509_signature(child, child.tbs_certificate_bytes, _public_key(issuer))


def _verify_x509_signature(
    signed: x509.Certificate | x509.CertificateRevocationList,
    tbs: bytes,
    public_key: CertificatePublicKeyTypes | None,
) -> bool:
    """RFC 5280 §6.1.3 a.1 / §6.3.3 f: the signature of a certificate or CRL with the issuer's key (RSA PKCS#1 v1.5
    or PSS, ECDSA). Done here rather than with ``is_signature_valid``, which refuses SHA-1 (``LEGACY`` needs it)."""
    try:
        parameters = signed.signature_algorithm_parameters
        hash_algorithm = signed.signature_hash_algorithm
        if isinstance(public_key, rsa.RSAPublicKey) and isinstance(parameters, padding.PKCS1v15 | padding.PSS):
            if hash_algorithm is None:
                return False
            public_key.verify(signed.signature, tbs, parameters, hash_algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(parameters, ec.ECDSA):
            public_key.verify(signed.signature, tbs, parameters)
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _path_problems(path: tuple[_Cert, ...], signing_time: datetime | None, context: _Context) -> list[str]:
    problems: list[str] = []
    for index, certificate in enumerate(path):
        problems.extend(_certificate_problems(certificate, index, path, signing_time, context))
    for index, certificate in enumerate(path[:-1]):  # RFC 5280 §6.3: every certificate but the anchor
        problems.extend(_revocation_problems(certificate, path[index + 1], context))
    return problems


def _certificate_problems(
    certificate: _Cert, index: int, path: tuple[_Cert, ...], signing_time: datetime | None, context: _Context
) -> list[str]:
    """Problems of the certificate at ``index`` of ``path`` (0 = the signer; the last one is the anchor)."""
    policy, cert, label = context.policy, certificate.certificate, certificate.label
    is_anchor = index == len(path) - 1 and context.is_anchor(certificate)
    problems: list[str] = []

    key_problem = _key_problem(_public_key(cert), policy)
    if key_problem:
        problems.append(f"{key_problem}: {label}")

    problems.extend(f"{p}: {label}" for p in _validity_problems(cert, context.at, "validation time"))
    if index == 0 and signing_time is not None:
        problems.extend(f"{p}: {label}" for p in _validity_problems(cert, signing_time, "signing time"))

    if not is_anchor:  # RFC 5280 §6.1.3 a: the signature hash; the anchor's self-signature is not relied upon
        try:
            hash_algorithm = cert.signature_hash_algorithm
            hash_name = "none" if hash_algorithm is None else hash_algorithm.name
        except UnsupportedAlgorithm:
            hash_name = cert.signature_algorithm_oid.dotted_string
        if hash_name not in policy.certificate_signature_hashes:
            problems.append(f"certificate signature hash {hash_name} is not allowed: {label}")

    try:
        extensions = cert.extensions
    except _MALFORMED_EXTENSIONS:
        problems.append(f"certificate extensions are malformed: {label}")
        return problems

    if not is_anchor:
        for extension in extensions:
            if extension.critical and extension.oid not in _PROCESSED_EXTENSIONS:
                name = _EXTENSION_NAMES.get(extension.oid, extension.oid.dotted_string)
                problems.append(f"unsupported critical extension {name}: {label}")

    if index == 0:
        problems.extend(f"{p}: {label}" for p in _signer_usage_problems(extensions, policy))
    else:
        problems.extend(f"{p}: {label}" for p in _issuer_problems(extensions, index, path, is_anchor))
    return problems


def _key_problem(key: CertificatePublicKeyTypes | None, policy: VerificationPolicy) -> str | None:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < policy.min_rsa_bits:
            return f"RSA key of {key.key_size} bits is below {policy.min_rsa_bits}"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in policy.ec_curves:
            return f"elliptic curve {key.curve.name} is not allowed"
        return None
    return "unsupported public key type"


def _validity_problems(certificate: x509.Certificate, moment: datetime, when: str) -> list[str]:
    # RFC 5280 §4.1.2.5: valid from notBefore to notAfter inclusive
    if moment < certificate.not_valid_before_utc:
        return [f"certificate not yet valid at {when}"]
    if moment > certificate.not_valid_after_utc:
        return [f"certificate expired at {when}"]
    return []


def _signer_usage_problems(extensions: x509.Extensions, policy: VerificationPolicy) -> list[str]:
    problems = []
    key_usage = _extension(extensions, x509.KeyUsage)
    # RFC 8550 §4.4.2: a signing certificate's keyUsage, when present, allows digitalSignature or nonRepudiation
    if key_usage is not None and not (key_usage.digital_signature or key_usage.content_commitment):
        problems.append("key usage allows neither digitalSignature nor nonRepudiation")
    # RFC 8550 §4.4.4: without extendedKeyUsage any use is allowed; with it, emailProtection (or anyEKU)
    extended = _extension(extensions, x509.ExtendedKeyUsage)
    if (
        policy.require_email_protection
        and extended is not None
        and ExtendedKeyUsageOID.EMAIL_PROTECTION not in extended
        and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in extended
    ):
        problems.append("extended key usage does not include emailProtection")
    return problems


def _issuer_problems(extensions: x509.Extensions, index: int, path: tuple[_Cert, ...], is_anchor: bool) -> list[str]:
    """RFC 5280 §6.1.4 k, l, m, n for the certificate that issued ``path[index - 1]``."""
    problems = []
    constraints = _extension(extensions, x509.BasicConstraints)
    if constraints is None:
        if not is_anchor:  # a trust anchor (e.g. a v1 root) is a CA by configuration
            problems.append("issuing certificate is not a CA (no basicConstraints)")
    elif not constraints.ca:
        problems.append("issuing certificate is not a CA (basicConstraints cA=FALSE)")
    elif constraints.path_length is not None:
        below = sum(1 for c in path[1:index] if c.subject != c.issuer)  # self-issued certificates do not count
        if below > constraints.path_length:
            problems.append(f"path length constraint {constraints.path_length} exceeded")
    key_usage = _extension(extensions, x509.KeyUsage)
    if key_usage is not None and not key_usage.key_cert_sign:
        problems.append("issuing certificate key usage does not allow keyCertSign")
    return problems


def _extension(extensions: x509.Extensions, kind: type[_E]) -> _E | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _revocation_problems(certificate: _Cert, issuer: _Cert, context: _Context) -> list[str]:
    """RFC 5280 §6.3 (simplified, see the module docstring) for ``certificate`` issued by ``issuer``."""
    policy, at, label = context.policy, context.at, certificate.label
    issuer_key = _public_key(issuer.certificate)
    fresh = expired = False
    for candidate in context.crls:
        crl = candidate.crl
        if candidate.issuer != certificate.issuer or not _crl_signed_by(crl, issuer, issuer_key):
            continue
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial)
        if entry is not None:
            reason = _revocation_reason(entry)
            compromised = reason in (x509.ReasonFlags.key_compromise, x509.ReasonFlags.ca_compromise)
            if reason != x509.ReasonFlags.remove_from_crl and (compromised or entry.revocation_date_utc <= at):
                if reason == x509.ReasonFlags.certificate_hold:
                    return [f"certificate on hold (suspended): {label}"]
                detail = "" if reason is None else f" ({reason.value})"
                return [f"certificate revoked{detail}: {label}"]
        next_update = crl.next_update_utc
        if next_update is not None and next_update < at:
            expired = True
            continue
        try:
            hash_algorithm = crl.signature_hash_algorithm
        except UnsupportedAlgorithm:
            continue
        if hash_algorithm is None or hash_algorithm.name in policy.certificate_signature_hashes:
            fresh = True
    if policy.require_revocation_check and not fresh:
        return [f"CRL expired: {label}" if expired else f"no revocation information: {label}"]
    return []


def _crl_signed_by(
    crl: x509.CertificateRevocationList, issuer: _Cert, issuer_key: CertificatePublicKeyTypes | None
) -> bool:
    try:
        key_usage = _extension(issuer.certificate.extensions, x509.KeyUsage)
    except _MALFORMED_EXTENSIONS:
        return False
    if key_usage is not None and not key_usage.crl_sign:  # RFC 5280 §6.3.3 f
        return False
    return _verify_x509_signature(crl, crl.tbs_certlist_bytes, issuer_key)


def _revocation_reason(entry: x509.RevokedCertificate) -> x509.ReasonFlags | None:
    try:
        return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except (x509.ExtensionNotFound, *_MALFORMED_EXTENSIONS):
        return None


def _email_addresses(certificate: x509.Certificate) -> tuple[str, ...]:
    """rfc822Name SANs then subject emailAddress (RFC 8550 §3), lowercased, each once."""
    addresses: list[str] = []
    try:
        san = _extension(certificate.extensions, x509.SubjectAlternativeName)
        if san is not None:
            addresses.extend(san.get_values_for_type(x509.RFC822Name))
    except _MALFORMED_EXTENSIONS:
        pass
    try:
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
            if isinstance(attribute.value, str):
                addresses.append(attribute.value)
    except ValueError:
        pass
    return tuple(dict.fromkeys(address.lower() for address in addresses))
