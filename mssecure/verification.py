"""Checking a message from the message alone, for pharmacy software: what ``mssecure verify`` reports.

A pharmacy reads a prescription from its mailbox and must know, before dispensing, that a real and active
prescriber signed it, that it was not changed on the way, and which documents and prescription identifier it
carries. ``verify_message`` answers from the bytes of the message and what this operator knows (its CA and CRL,
the trust space's CAs, CRLs and DKIM keys, the directory, the records of the certificates it issued):

- **S/MIME**, always re-verified (a header saying "pass" proves nothing): the signature over the exact signed bytes,
  the chain to our CA or to the CA of the peer serving the signer's domain, the signer's address equal to the signed
  From (and to the From shown outside the signature), at the validation time ``now``; the certificate's status at
  the signing time it claims (RFC 5652 §11.3 signingTime: not expired, not revoked before it) and now (revoked,
  suspended or expired, per the CRLs and our own certificate records).
- **the signer's directory entry**: it must exist and be active; its name, national identifier (RPPS…),
  profession and organization are what is shown, and the identifier in the certificate must be the directory's.
- **DKIM** (RFC 6376): in a message delivered by our relay the DKIM signature was checked on the encrypted wrapper
  and does not survive decryption, so its result is taken from the ``Authentication-Results`` field (RFC 8601)
  whose authserv-id is our relay's host name — and only from it; any other such field was written by someone else
  and is listed as ignored (RFC 8601 §5). A raw signed message is checked against its ``DKIM-Signature`` with the
  trust space's keys, never DNS; none → ``none``.
- **XDM**: every IHE XDM package found inside the *signed* content is validated (``mssecure.xdm.validate_package``:
  sizes and hashes against METADATA.XML); the prescription identifier comes from the packages and the signed
  ``X-MSS-Prescription-Id`` field, which must agree; in a delivered message, our relay's flag saying the
  prescription already went to another mailbox fails it.

Anything outside the signature that a reader would take for the message (From, Subject, X-MSS-Prescription-Id)
must say what the signed message says. The result is a value (``Report``); ``UnusableMessage`` is raised only when
there is nothing to check: too large, not a mail message, encrypted, not signed.
"""

from __future__ import annotations

import email.errors
import email.header
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlalchemy.orm import Session

from mssecure.config import Config
from mssecure.crypto import smime
from mssecure.crypto.authority import OperatorMaterial
from mssecure.crypto.cms import STRICT, VerificationPolicy, validate_certificate
from mssecure.crypto.dkim import dkim_verify
from mssecure.crypto.models import CertificateRecord
from mssecure.crypto.pki import fingerprint, serial_hex
from mssecure.crypto.trust import TrustSpace
from mssecure.directory.models import Entry
from mssecure.errors import SignatureError
from mssecure.smtp import mime
from mssecure.smtp.processing import DUPLICATE_HEADER
from mssecure.xdm import PRESCRIPTION_ID_HEADER, XdmError, check_prescription_id, find_xdm_parts, validate_package

__all__ = [
    "MAX_MESSAGE_SIZE",
    "AuthenticationResults",
    "CertificateFacts",
    "CertificateRecordStatus",
    "DkimFacts",
    "DocumentFacts",
    "MessageFacts",
    "PackageFacts",
    "PrescriptionFacts",
    "Report",
    "SignatureFacts",
    "SignerIdentity",
    "TrustInputs",
    "UnusableMessage",
    "database_trust",
    "parse_authentication_results",
    "verify_message",
]

MAX_MESSAGE_SIZE = 64 * 1024 * 1024
# A signingTime this far ahead of our clock is not a clock skew but a claim we cannot accept.
SIGNING_TIME_SKEW = timedelta(minutes=5)
_FIELD = re.compile(rb"[!-9;-~]+:")  # RFC 5322 §3.6.8: printable ASCII but colon, then the colon


class UnusableMessage(SignatureError):
    """There is nothing to verify: the input is too large, not a mail message, encrypted, or not signed."""


# --- what the operator knows, passed in ------------------------------------------------------------------------


@dataclass(frozen=True)
class SignerIdentity:
    """A directory entry, as the pharmacy is shown it."""

    address: str
    status: str  # active, suspended, revoked
    kind: str  # personal, organizational, applicative
    name: str | None
    identifier_type: str | None  # RPPS, ADELI, FINESS…
    identifier: str | None
    national_id: str | None  # the "identifiant national" (8 + RPPS for a professional)
    profession: str | None
    specialty: str | None
    organization: str | None


@dataclass(frozen=True)
class CertificateRecordStatus:
    """What our certificate records say of a certificate (ours, or a peer's as its bundle delivered it)."""

    status: str  # valid, hold, revoked
    revoked_at: datetime | None
    reason: str | None


@dataclass(frozen=True)
class TrustInputs:
    """Everything ``verify_message`` needs from the operator: no database or file access of its own."""

    authserv_id: str  # our relay's host name, the only Authentication-Results author we believe
    anchors: Callable[[str | None], Sequence[x509.Certificate]]  # as smime.verify takes them
    crls: Sequence[x509.CertificateRevocationList]
    dkim_keys: Mapping[str, str]  # <selector>._domainkey.<domain> -> TXT value
    identity: Callable[[str], SignerIdentity | None]
    certificate_record: Callable[[x509.Certificate], CertificateRecordStatus | None]
    policy: VerificationPolicy = STRICT


def database_trust(session: Session, config: Config, material: OperatorMaterial) -> TrustInputs:
    """The operator's trust inputs, read through ``session`` (which must stay open while verifying)."""
    space = TrustSpace(session, config, actor="verify")
    dkim_keys = dict(space.dkim_keys())
    try:  # our own key too: a raw message our relay DKIM-signed for a peer
        value = material.dkim_record_path.read_text(encoding="ascii").strip().split(" IN TXT ", 1)[1].strip('"')
        dkim_keys.update({f"{config.dkim.selector}._domainkey.{domain}": value for domain in config.operator.domains})
    except (OSError, IndexError, UnicodeDecodeError):
        pass

    def identity(address: str) -> SignerIdentity | None:
        entry = session.scalars(sa.select(Entry).where(Entry.address == address.strip().lower())).one_or_none()
        if entry is None:
            return None
        return SignerIdentity(
            address=entry.address,
            status=entry.status,
            kind=entry.kind,
            name=entry.to_data().display_name or None,
            identifier_type=entry.identifier_type,
            identifier=entry.identifier,
            national_id=entry.national_id,
            profession=entry.profession_label,
            specialty=entry.specialty_label,
            organization=entry.organization,
        )

    def certificate_record(certificate: x509.Certificate) -> CertificateRecordStatus | None:
        record = session.scalars(
            sa.select(CertificateRecord).where(CertificateRecord.fingerprint == fingerprint(certificate))
        ).first()
        if record is None:
            return None
        return CertificateRecordStatus(record.status, record.revoked_at, record.revocation_reason)

    return TrustInputs(
        authserv_id=config.operator.hostname,
        anchors=space.anchors(material.ca_certificate()),
        crls=[material.crl(), *space.crls()],
        dkim_keys=dkim_keys,
        identity=identity,
        certificate_record=certificate_record,
    )


# --- the report ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageFacts:
    """The signed message's own header (never the unsigned outer one), decoded for display."""

    source: str  # "mailbox": delivered by our relay (our Authentication-Results); "raw": a signed message
    from_address: str | None
    to: str | None
    subject: str | None
    date: str | None
    message_id: str | None


@dataclass(frozen=True)
class CertificateFacts:
    serial: str
    fingerprint: str
    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    status_at_signing: str  # valid, revoked, suspended, expired, not yet valid, untrusted, invalid, unknown
    status_now: str
    problems_at_signing: tuple[str, ...]
    problems_now: tuple[str, ...]


@dataclass(frozen=True)
class SignatureFacts:
    valid: bool  # the S/MIME verification alone (signature, chain, revocation, signer = From)
    signer: str | None
    signing_time: datetime | None  # claimed by the signer
    digest_algorithm: str | None
    chain: tuple[str, ...]  # subjects, signer first, trust anchor last
    certificate: CertificateFacts | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class AuthenticationResults:
    """One Authentication-Results field (RFC 8601): its author and each method's result with its properties."""

    authserv_id: str
    methods: tuple[tuple[str, str, dict[str, str]], ...]  # (method, result, {"ptype.property" or "reason": value})

    def result(self, method: str) -> tuple[str, dict[str, str]] | None:
        for name, result, properties in self.methods:
            if name == method:
                return result, properties
        return None


@dataclass(frozen=True)
class DkimFacts:
    result: str  # pass, fail, none (or what our relay wrote: neutral, temperror…)
    domain: str | None
    selector: str | None
    source: str  # "authentication-results" (our relay's), "dkim-signature" (checked here), "none"
    reason: str | None = None


@dataclass(frozen=True)
class DocumentFacts:
    path: str
    name: str  # the title in METADATA.XML (the original file name when the sender gave no title)
    mime_type: str
    size: int
    sha1: str
    sha256: str
    sha256_declared: bool


@dataclass(frozen=True)
class PackageFacts:
    file_name: str | None
    found_by: str
    valid: bool
    reason: str | None  # why the package is refused
    title: str | None = None
    patient_id: str | None = None
    author_id_nat: str | None = None
    prescription_id: str | None = None
    documents: tuple[DocumentFacts, ...] = ()


@dataclass(frozen=True)
class PrescriptionFacts:
    value: str | None
    from_packages: tuple[str, ...]
    from_header: str | None
    duplicate: str | None = None  # our relay's X-MSSecure-Prescription-Duplicate flag: already delivered elsewhere


@dataclass(frozen=True)
class Report:
    """Everything ``mssecure verify`` shows; ``ok`` only when no check failed."""

    message: MessageFacts
    signature: SignatureFacts
    identity: SignerIdentity | None
    dkim: DkimFacts
    authentication_results: AuthenticationResults | None  # ours, the one the DKIM result was taken from
    ignored_authentication_results: tuple[str, ...]  # authserv-ids of the fields not written by our relay
    packages: tuple[PackageFacts, ...]
    prescription: PrescriptionFacts
    failures: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (datetimes as ISO 8601 strings)."""
        plain: dict[str, Any] = _plain(
            {
                "result": "ok" if self.ok else "failed",
                "failures": list(self.failures),
                "message": self.message,
                "signature": self.signature,
                "signer": self.identity,
                "dkim": self.dkim,
                "authentication_results": None
                if self.authentication_results is None
                else {
                    "authserv_id": self.authentication_results.authserv_id,
                    "methods": [
                        {"method": m, "result": r, "properties": p} for m, r, p in self.authentication_results.methods
                    ],
                },
                "ignored_authentication_results": list(self.ignored_authentication_results),
                "xdm": list(self.packages),
                "prescription_id": self.prescription,
            }
        )
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --- Authentication-Results (RFC 8601 §2.2) ----------------------------------------------------------------------

_QUOTED = r'"(?:[^"\\]|\\.)*"'
_ASSIGNMENT = re.compile(r"([A-Za-z0-9_.-]+(?:/[0-9]+)?)\s*=\s*(" + _QUOTED + r"|[^\s;\"]+)")


def _without_comments(text: str) -> str:
    """RFC 5322 CFWS: comments (nested parentheses, outside quoted strings) replaced by a space."""
    out: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\" and (quoted or depth):
            escaped = True
            if depth == 0:
                out.append(char)
            continue
        if quoted:
            quoted = char != '"'
            out.append(char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
            if depth == 0:
                out.append(" ")
        elif depth == 0:
            quoted = char == '"'
            out.append(char)
    return "".join(out)


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_authentication_results(value: str) -> AuthenticationResults | None:
    """One field's value, or None when it has no authserv-id. Unknown syntax inside a resinfo is skipped: only the
    author and the method results are relied on."""
    segments = _split_outside_quotes(_without_comments(value), ";")
    head = segments[0].split()
    if not head:
        return None
    methods = []
    for segment in segments[1:]:
        assignments = _ASSIGNMENT.findall(segment)
        if not assignments:
            continue  # "none" (no-result), or noise
        (method, result), properties = assignments[0], assignments[1:]
        methods.append(
            (
                method.split("/", 1)[0].lower(),
                _unquote(result).lower(),
                {name.lower(): _unquote(text) for name, text in properties},
            )
        )
    return AuthenticationResults(_unquote(head[0]).lower(), tuple(methods))


# --- verification -------------------------------------------------------------------------------------------------


def _check_usable(message: bytes) -> None:
    """Refuse, with the reason, a (canonical) input that has nothing to verify."""
    head, _ = mime.split(message)
    fields = mime.field_lines(head)
    if not fields or b"\r\n\r\n" not in message or any(not _FIELD.match(f) for f in fields):
        raise UnusableMessage("not a mail message (no well-formed header followed by a blank line)")
    header_only = head + b"\r\n"  # is_encrypted/is_signed read the header alone; spare them the whole body
    if smime.is_encrypted(header_only):
        raise UnusableMessage(
            "the message is encrypted: verify the decrypted message from the mailbox (or decrypt it first with "
            "`mssecure smime decrypt --as ADDRESS`)"
        )
    if not smime.is_signed(header_only):
        raise UnusableMessage(
            "the message is not S/MIME signed (multipart/signed or application/pkcs7-mime signed-data): "
            "there is no signature to verify"
        )


def _decoded(raw: str | None) -> str | None:
    """An unfolded header value with its RFC 2047 encoded words decoded (left as it is when they are broken)."""
    if raw is None:
        return None
    try:
        return " ".join(str(email.header.make_header(email.header.decode_header(raw))).split())
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return raw


def _first(message: bytes, name: str) -> str | None:
    values = mime.header_value(message, name)
    return values[0] if values else None


_STATUS_LABELS = (
    ("certificate revoked", "revoked"),
    ("certificate on hold", "suspended"),
    ("certificate expired", "expired"),
    ("certificate not yet valid", "not yet valid"),
    ("no certificate chain", "untrusted"),
)


def _status(problems: Sequence[str]) -> str:
    for prefix, label in _STATUS_LABELS:
        if any(problem.startswith(prefix) for problem in problems):
            return label
    return "invalid" if problems else "valid"


def _record_problems(
    record: CertificateRecordStatus | None, moment: datetime, who: str, from_crls: Sequence[str]
) -> list[str]:
    """What our certificate records say at ``moment``, unless the CRLs already said it: the CRL is published from
    these records, which are never older than it."""
    if record is None or record.status == "valid" or record.revoked_at is None or record.revoked_at > moment:
        return []
    if _status(from_crls) == {"hold": "suspended"}.get(record.status, record.status):
        return []
    if record.status == "hold":
        return [f"certificate on hold (suspended) since {record.revoked_at:%Y-%m-%d %H:%M} UTC per {who}'s records"]
    reason = f" ({record.reason})" if record.reason else ""
    return [f"certificate revoked{reason} on {record.revoked_at:%Y-%m-%d %H:%M} UTC per {who}'s records"]


def _certificate_facts(
    signer: smime.SignerCheck, trust: TrustInputs, now: datetime, from_address: str | None
) -> CertificateFacts | None:
    result = signer.result
    certificate = result.certificate
    if certificate is None:
        return None
    anchors = list(trust.anchors(signer.address or from_address))
    intermediates = list(result.chain[1:-1])
    record = trust.certificate_record(certificate)
    _, now_problems = validate_certificate(
        certificate, anchors=anchors, at=now, crls=trust.crls, intermediates=intermediates, policy=trust.policy
    )
    problems_now = [*now_problems, *_record_problems(record, now, trust.authserv_id, now_problems)]
    if result.signing_time is None:
        status_at_signing, problems_at_signing = "unknown", []
    else:
        _, signing_problems = validate_certificate(
            certificate,
            anchors=anchors,
            at=result.signing_time,
            crls=trust.crls,
            intermediates=intermediates,
            policy=trust.policy,
            signing_time=result.signing_time,
        )
        problems_at_signing = [
            *signing_problems,
            *_record_problems(record, result.signing_time, trust.authserv_id, signing_problems),
        ]
        status_at_signing = _status(problems_at_signing)
    return CertificateFacts(
        serial=serial_hex(certificate),
        fingerprint=fingerprint(certificate),
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        status_at_signing=status_at_signing,
        status_now=_status(problems_now),
        problems_at_signing=tuple(dict.fromkeys(problems_at_signing)),
        problems_now=tuple(dict.fromkeys(problems_now)),
    )


def _subject_serial_number(certificate: x509.Certificate | None) -> str | None:
    """The subject serialNumber our CA writes for a professional: the national identifier (see crypto.pki)."""
    if certificate is None:
        return None
    values = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)]
    return values[0] if len(values) == 1 and isinstance(values[0], str) else None


def _dkim(
    message: bytes, trust: TrustInputs, failures: list[str]
) -> tuple[DkimFacts, AuthenticationResults | None, tuple[str, ...]]:
    ours: list[AuthenticationResults] = []
    ignored: list[str] = []
    for value in mime.header_value(message, "authentication-results"):
        parsed = parse_authentication_results(value)
        if parsed is not None and parsed.authserv_id == trust.authserv_id.lower():
            ours.append(parsed)
        else:
            ignored.append(parsed.authserv_id if parsed is not None else "(unreadable)")
    if len(ours) > 1:
        failures.append(f"several Authentication-Results fields claim to come from {trust.authserv_id}")
    if ours:
        found = ours[0].result("dkim")
        if found is None:
            facts = DkimFacts("none", None, None, "authentication-results", "our relay recorded no DKIM result")
        else:
            result, properties = found
            facts = DkimFacts(result, properties.get("header.d"), properties.get("header.s"),
                              "authentication-results", properties.get("reason"))  # fmt: skip
        return facts, ours[0], tuple(ignored)
    if not mime.header_value(message, "dkim-signature"):
        return DkimFacts("none", None, None, "none"), None, tuple(ignored)
    checked = dkim_verify(message, keys=trust.dkim_keys)
    if checked.valid:
        return DkimFacts("pass", checked.domain, checked.selector, "dkim-signature"), None, tuple(ignored)
    return DkimFacts("fail", checked.domain, checked.selector, "dkim-signature", checked.reason), None, tuple(ignored)


def _packages(signed: bytes, failures: list[str]) -> tuple[PackageFacts, ...]:
    found = []
    for part in find_xdm_parts(signed):
        name = part.file_name or "(unnamed attachment)"
        try:
            package = validate_package(part.data)
        except XdmError as error:
            failures.append(f"XDM package {name}: {error.reason}")
            found.append(PackageFacts(part.file_name, part.found_by, False, error.reason))
            continue
        documents = tuple(
            DocumentFacts(d.path, d.title or d.uri, d.mime_type, d.size, d.sha1, d.sha256, d.sha256_declared)
            for d in package.documents
        )
        found.append(
            PackageFacts(part.file_name, part.found_by, True, None, package.title, package.patient_id,
                         package.author_id_nat, package.prescription_id, documents)
        )  # fmt: skip
    return tuple(found)


def _prescription(
    signed: bytes, outer: bytes, packages: Sequence[PackageFacts], failures: list[str], *, delivered: bool
) -> PrescriptionFacts:
    """The prescription identifier, with every disagreement between its sources as a failure. In a message our relay
    delivered, its duplicate flag is believed (the relay removes any a sender wrote) and fails the message: the
    prescription already went to another mailbox, and may have been dispensed there."""
    headers = mime.header_value(signed, PRESCRIPTION_ID_HEADER)
    header = headers[0] if headers else None
    if len(headers) > 1:
        failures.append(f"the signed message has several {PRESCRIPTION_ID_HEADER} fields")
    if header is not None:
        try:
            check_prescription_id(header)
        except XdmError as error:
            failures.append(f"{PRESCRIPTION_ID_HEADER}: {error.reason}")
    from_packages = tuple(dict.fromkeys(p.prescription_id for p in packages if p.prescription_id))
    if len(from_packages) > 1:
        failures.append("the XDM packages carry different prescription identifiers: " + ", ".join(from_packages))
    if header is not None and from_packages and header not in from_packages:
        failures.append(
            f"the prescription identifier of the {PRESCRIPTION_ID_HEADER} field ({header}) differs from the XDM "
            f"package's ({from_packages[0]})"
        )
    unsigned = [v for v in mime.header_value(outer, PRESCRIPTION_ID_HEADER) if v != header]
    if outer is not signed and unsigned:
        failures.append(f"an unsigned {PRESCRIPTION_ID_HEADER} field ({unsigned[0]}) differs from the signed one")
    value = from_packages[0] if from_packages else header
    flags = mime.header_value(outer, DUPLICATE_HEADER) if delivered else []
    if flags:
        failures.append(f"the prescription was already delivered to another mailbox ({flags[0]})")
    return PrescriptionFacts(value, from_packages, header, flags[0] if flags else None)


def _unverified(message: bytes, source: str, reason: str) -> Report:
    """The report of a message whose signature cannot even be checked (a broken signature structure)."""
    return Report(
        message=MessageFacts(
            source,
            mime.header_from(message),
            _decoded(_first(message, "to")),
            _decoded(_first(message, "subject")),
            _first(message, "date"),
            _first(message, "message-id"),
        ),
        signature=SignatureFacts(False, None, None, None, (), None, (reason,)),
        identity=None,
        dkim=DkimFacts("none", None, None, "none"),
        authentication_results=None,
        ignored_authentication_results=(),
        packages=(),
        prescription=PrescriptionFacts(None, (), None),
        failures=(f"signature: {reason}",),
    )


def verify_message(message: bytes, trust: TrustInputs, *, now: datetime) -> Report:
    """Verify a signed message (delivered by our relay, or raw) as of ``now``; see the module docstring.

    Raises ``UnusableMessage`` when there is nothing to verify; every other problem is a failure in the report.
    """
    if len(message) > MAX_MESSAGE_SIZE:
        raise UnusableMessage(f"the message is larger than {MAX_MESSAGE_SIZE // (1024 * 1024)} MiB")
    message = smime.canonical(message)
    _check_usable(message)
    failures: list[str] = []
    dkim, used, ignored = _dkim(message, trust, failures)
    source = "mailbox" if used is not None else "raw"
    try:
        verification = smime.verify(message, anchors=trust.anchors, crls=trust.crls, at=now, policy=trust.policy)
    except SignatureError as error:
        return _unverified(message, source, f"the signature cannot be checked: {error}")
    signed = verification.inner_message or verification.content
    signer = verification.valid_signer or next(
        (s for s in verification.signers if s.result.certificate is not None), None
    )
    certificate = _certificate_facts(signer, trust, now, verification.from_address) if signer is not None else None
    signing_time = signer.result.signing_time if signer is not None else None
    problems_now = certificate.problems_now if certificate is not None else ()
    if not verification.valid:  # the certificate's own problems are reported once, under "now"
        failures.extend(f"signature: {reason}" for reason in verification.reasons)
        for check in verification.signers:
            who = check.address or "unknown signer"
            skipped = problems_now if check is signer else ()
            failures.extend(f"signature: {who}: {reason}" for reason in check.reasons if reason not in skipped)
    failures.extend(f"now: {problem}" for problem in problems_now)
    if certificate is not None and certificate.status_at_signing not in ("valid", "unknown"):
        failures.extend(f"at signing time: {problem}" for problem in certificate.problems_at_signing)
    if signing_time is not None and signing_time > now + SIGNING_TIME_SKEW:
        failures.append(f"the signing time {signing_time:%Y-%m-%d %H:%M:%S} UTC is in the future")

    address = signer.address if signer is not None else None
    shown_from = mime.header_from(message)
    if address and shown_from is not None and shown_from != address.lower():
        failures.append(f"the From shown outside the signature ({shown_from}) is not the signer {address}")
    subject = _first(signed, "subject")
    outer_subjects = mime.header_value(message, "subject")
    if signed is not message and outer_subjects and _decoded(outer_subjects[0]) != _decoded(subject):
        failures.append("the Subject shown outside the signature differs from the signed Subject")

    identity = trust.identity(address) if address else None
    if address and identity is None:
        failures.append(f"the signer {address} is not in the directory")
    elif identity is not None:
        if identity.status != "active":
            failures.append(f"the signer's directory entry {identity.address} is {identity.status}")
        in_certificate = _subject_serial_number(signer.result.certificate if signer else None)
        if identity.kind == "personal" and identity.national_id and in_certificate not in (None, identity.national_id):
            failures.append(
                f"the certificate's national identifier {in_certificate} is not the directory's {identity.national_id}"
            )

    if used is not None:
        claimed = used.result("smime")
        identifier = claimed[1].get("body.smime-identifier") if claimed else None
        if identifier and address and identifier.lower() != address.lower():
            failures.append(f"our relay's Authentication-Results names another signer ({identifier})")
    if dkim.result not in ("pass", "none"):
        failures.append(f"DKIM: {dkim.result}" + (f" ({dkim.reason})" if dkim.reason else ""))

    packages = _packages(signed, failures)
    prescription = _prescription(signed, message, packages, failures, delivered=used is not None)
    if identity is not None and identity.kind == "personal" and identity.national_id:
        for package in packages:
            if package.author_id_nat and package.author_id_nat != identity.national_id:
                failures.append(
                    f"the XDM package's author ({package.author_id_nat}) is not the signer ({identity.national_id})"
                )

    return Report(
        message=MessageFacts(
            source=source,
            from_address=verification.from_address,
            to=_decoded(_first(signed, "to")),
            subject=_decoded(subject),
            date=_first(signed, "date"),
            message_id=_first(signed, "message-id"),
        ),
        signature=SignatureFacts(
            valid=verification.valid,
            signer=address,
            signing_time=signing_time,
            digest_algorithm=signer.result.digest_algorithm if signer is not None else None,
            chain=tuple(c.subject.rfc4514_string() for c in signer.result.chain) if signer is not None else (),
            certificate=certificate,
            reasons=tuple(verification.all_reasons()),
        ),
        identity=identity,
        dkim=dkim,
        authentication_results=used,
        ignored_authentication_results=ignored,
        packages=packages,
        prescription=prescription,
        failures=tuple(dict.fromkeys(failures)),
    )
