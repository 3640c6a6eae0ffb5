"""S/MIME (RFC 8551) for the relay: sign, encrypt, decrypt, verify — bytes in, bytes or a result value out.

- **sign**: the original message is wrapped whole as ``message/rfc822`` (header protection, as the Direct Project
  requires) and signed as a detached ``multipart/signed`` with SHA-256 (RFC 8551 §3.5.3, RFC 1847). The outer
  headers carry only what transport needs (From, To, Cc, Date, Message-ID): never the Subject, which may name a
  patient.
- **encrypt**: ``application/pkcs7-mime; smime-type=enveloped-data`` (RFC 8551 §3.3), AES-256-CBC, one
  RecipientInfo per recipient certificate (RSA key transport; an EC certificate is refused: ECDH key agreement,
  RFC 5753, is beyond ``cryptography``'s PKCS7EnvelopeBuilder).
- **decrypt**: enveloped data with AES-128 or AES-256 (CBC), also under the legacy ``application/x-pkcs7-mime``,
  and authenticated enveloped data with AES-GCM (RFC 5083/5084).
- **verify**: the first part's exact raw bytes (cut at the boundary, never re-serialised) against the detached
  signature, through ``mssecure.crypto.cms``; then the signer's address must be the inner From.

Line endings are made CRLF (canonical form, RFC 8551 §3.1.1) before anything is signed or encrypted.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from email.utils import getaddresses, parseaddr
from typing import Any

from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import pkcs7

from mssecure.crypto.cms import STRICT, SignerResult, VerificationPolicy, encapsulated_content, verify_signed_data
from mssecure.errors import SignatureError

__all__ = [
    "Verification",
    "canonical",
    "decrypt",
    "encrypt",
    "is_canonical",
    "is_encrypted",
    "is_signed",
    "sign",
    "unwrap",
    "verify",
]

_LINE_END = re.compile(rb"\r\n|\r|\n")
_OUTER_HEADERS = ("from", "to", "cc", "date", "message-id")
_MAX_HEADER_BYTES = 256 * 1024


def canonical(message: bytes) -> bytes:
    """Every line ending as CRLF (bare LF and bare CR alike); the same object when it already is."""
    if is_canonical(message):
        return message
    return _LINE_END.sub(b"\r\n", message)


def is_canonical(message: bytes) -> bool:
    """Whether every CR and every LF of ``message`` belongs to a CRLF (three passes in C, no copy)."""
    return message.count(b"\r") == message.count(b"\n") == message.count(b"\r\n")


def _split(message: bytes) -> tuple[bytes, bytes]:
    """(header block without the blank line, body) of a CRLF message."""
    head, start = _cut(message)
    return head, message[start:]


def _cut(message: bytes) -> tuple[bytes, int]:
    """(header block without the blank line, where the body starts) of a CRLF message, without copying the body."""
    if message.startswith(b"\r\n"):
        return b"", 2
    end = message.find(b"\r\n\r\n")
    if end < 0:
        if len(message) > _MAX_HEADER_BYTES:
            raise SignatureError("no end of headers found")
        return message, len(message)
    return message[:end], end + 4


def _headers(head: bytes) -> Message:
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head + b"\r\n\r\n")


def _outer_lines(head: bytes) -> list[bytes]:
    """The raw header fields (with their folded continuation lines) kept on the outside of a protected message."""
    return [
        f
        for f in _field_lines(head)
        if f.split(b":", 1)[0].strip().lower().decode("ascii", "replace") in _OUTER_HEADERS
    ]


def _base64_lines(data: bytes) -> bytes:
    """Base64 in CRLF lines of 76 characters (RFC 2045 §6.8), encoded by blocks of 1,000 lines: no list of the
    lines (a 25 MB message made 460,000 slices, and held the encoding twice)."""
    return b"".join(_base64_blocks(data))


def _base64_blocks(data: bytes, lines: int = 1000) -> list[bytes]:
    view, step = memoryview(data), 57 * lines  # 57 bytes make one 76-character line
    return [base64.encodebytes(view[i : i + step]).replace(b"\n", b"\r\n") for i in range(0, len(data), step)]


def _boundary() -> str:
    return f"----=_mssecure_{secrets.token_hex(12)}"


def sign(message: bytes, certificate: x509.Certificate, key: Any, *, chain: Sequence[x509.Certificate] = ()) -> bytes:
    """The message wrapped as message/rfc822 and signed (detached, SHA-256) by ``certificate``/``key``."""
    message = canonical(message)
    head = _head(message)
    inner = b"Content-Type: message/rfc822\r\n\r\n" + message
    builder = pkcs7.PKCS7SignatureBuilder().set_data(inner).add_signer(certificate, key, hashes.SHA256())
    for extra in chain:
        builder = builder.add_certificate(extra)
    signature = builder.sign(
        serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    )
    boundary = _boundary().encode()
    outer = b"\r\n".join(_outer_lines(head))
    return b"".join([  # one copy of the message (a chain of + made one per step after it)
        (outer + b"\r\n" if outer else b""),
        b"MIME-Version: 1.0\r\n",
        b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256;\r\n',
        b' boundary="' + boundary + b'"\r\n\r\n',
        b"This is a cryptographically signed message in MIME format.\r\n\r\n",
        b"--" + boundary + b"\r\n",
        inner,
        b"\r\n--" + boundary + b"\r\n",
        b'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n',
        b"Content-Transfer-Encoding: base64\r\n",
        b'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n',
        _base64_lines(signature),
        b"--" + boundary + b"--\r\n",
    ])  # fmt: skip


def encrypt(message: bytes, recipients: Sequence[x509.Certificate]) -> bytes:
    """The message's MIME entity enveloped (AES-256-CBC) for every recipient; transport headers stay outside."""
    if not recipients:
        raise SignatureError("no recipient certificate to encrypt to")
    message = canonical(message)
    head, start = _cut(message)
    entity_lines = [f for f in _field_lines(head) if f.lower().startswith(b"content-")]
    if not any(f.lower().startswith(b"content-type:") for f in entity_lines):
        entity_lines.insert(0, b"Content-Type: text/plain; charset=us-ascii")
    entity = b"".join((b"\r\n".join(entity_lines), b"\r\n\r\n", memoryview(message)[start:]))  # one copy of the body
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(entity).set_content_encryption_algorithm(algorithms.AES256)
    for certificate in recipients:
        _check_recipient(certificate)
        builder = builder.add_recipient(certificate)
    enveloped = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    del builder, entity  # the envelope's input goes before its base64 form is built
    outer = b"\r\n".join(_outer_lines(head))
    header = (
        (outer + b"\r\n" if outer else b"")
        + b"MIME-Version: 1.0\r\n"
        + b'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
        + b"Content-Transfer-Encoding: base64\r\n"
        + b'Content-Disposition: attachment; filename="smime.p7m"\r\n\r\n'
    )  # fmt: skip
    return b"".join([header, *_base64_blocks(enveloped)])


_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def _check_recipient(certificate: x509.Certificate) -> None:
    """Refuse, naming the recipient, a certificate whose key cannot receive a key by RSA transport. An EC key needs
    CMS key agreement (KeyAgreeRecipientInfo, ECDH: RFC 5753), which ``PKCS7EnvelopeBuilder`` does not do (RSA
    recipients only, as of cryptography 50) and which mssecure does not hand-write."""
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        who = ", ".join(names.get_values_for_type(x509.RFC822Name)) or certificate.subject.rfc4514_string()
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        who = certificate.subject.rfc4514_string()
    if isinstance(key, ec.EllipticCurvePublicKey):
        kind = f"an elliptic-curve key ({_CURVE_NAMES.get(key.curve.name, key.curve.name)})"
    else:
        kind = "a key that is not RSA"
    raise SignatureError(
        f"cannot encrypt to {who}: its certificate has {kind}, and mssecure encrypts to RSA certificates only "
        "(EC recipients need ECDH key agreement, which is not supported); the recipient needs an RSA certificate"
    )


def _field_lines(head: bytes) -> list[bytes]:
    """The raw header fields of a CRLF header block, each with its folded continuation lines."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif line:
            fields.append(line)
    return fields


def _content_type(head: bytes) -> tuple[str, Message]:
    headers = _headers(head)
    return headers.get_content_type(), headers


def _head(message: bytes) -> bytes:
    """The header block of a message in any line-ending form, without reading the body."""
    end = message.find(b"\r\n\r\n", 0, _MAX_HEADER_BYTES + 4)
    if end >= 0 and is_canonical(message[: end + 4]):  # then this is the first empty line
        return _cut(message[: end + 4])[0]
    return _cut(canonical(message[: _MAX_HEADER_BYTES + 4]))[0]


def is_encrypted(message: bytes) -> bool:
    content_type, headers = _content_type(_head(message))
    smime_type = (headers.get_param("smime-type") or "enveloped-data") if content_type else ""
    return content_type in ("application/pkcs7-mime", "application/x-pkcs7-mime") and str(smime_type).lower() in (
        "enveloped-data",
        "authenveloped-data",
    )


def is_signed(message: bytes) -> bool:
    content_type, headers = _content_type(_head(message))
    if content_type == "multipart/signed":
        return True
    return (
        content_type in ("application/pkcs7-mime", "application/x-pkcs7-mime")
        and str(headers.get_param("smime-type") or "").lower() == "signed-data"
    )


def _base64_body(body: bytes) -> bytes:
    try:
        return base64.b64decode(body.translate(None, b" \t\r\n\x0b\x0c"), validate=True)  # what \s matches
    except ValueError:
        raise SignatureError("the S/MIME body is not valid base64") from None


def decrypt(message: bytes, certificate: x509.Certificate, key: Any) -> bytes:
    """The decrypted MIME entity of an enveloped message (SignatureError if it is not one, or not for this key)."""
    message = canonical(message)
    _, body = _split(message)
    if not is_encrypted(message):
        raise SignatureError("not an S/MIME encrypted message (application/pkcs7-mime enveloped-data)")
    der = _base64_body(body)
    if _is_auth_enveloped(der):
        return canonical(_decrypt_auth_enveloped(der, certificate, key))
    try:
        return canonical(pkcs7.pkcs7_decrypt_der(der, certificate, key, []))
    except ValueError as exc:
        raise SignatureError(f"cannot decrypt: {exc}") from None
    except Exception as exc:  # the backend's errors for unsupported algorithms are not all ValueError
        raise SignatureError(f"cannot decrypt: {type(exc).__name__}: {exc}") from None


def _is_auth_enveloped(der: bytes) -> bool:
    try:
        return bool(asn1_cms.ContentInfo.load(der)["content_type"].native == "authenticated_enveloped_data")
    except Exception:  # asn1crypto reports malformed DER in many ways; the regular path will refuse it
        return False


_GCM_KEY_BYTES = {"aes128_gcm": 16, "aes192_gcm": 24, "aes256_gcm": 32}
_OAEP_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class _GcmParameters(asn1_core.Sequence):  # type: ignore[misc]
    """RFC 5084 §3.2 GCMParameters (asn1crypto has no class for it)."""

    _fields = [("aes_nonce", asn1_core.OctetString), ("aes_icvlen", asn1_core.Integer, {"default": 12})]  # noqa: RUF012


def _decrypt_auth_enveloped(der: bytes, certificate: x509.Certificate, key: Any) -> bytes:
    """RFC 5083 AuthEnvelopedData with AES-GCM (RFC 5084), RSA key transport — which ``cryptography`` cannot
    decrypt: the content-encryption key is unwrapped with our key, then AES-GCM authenticates and decrypts."""
    try:
        data = asn1_cms.ContentInfo.load(der)["content"]
        issuer_serial = None
        wrapped = None
        scheme = None
        for info in data["recipient_infos"]:
            if info.name != "ktri":
                continue
            rid = info.chosen["rid"]
            if rid.name == "issuer_and_serial_number":
                issuer_serial = (rid.chosen["issuer"].dump(), rid.chosen["serial_number"].native)
                ours = (certificate.issuer.public_bytes(), certificate.serial_number)
                if issuer_serial != ours:
                    continue
            wrapped = info.chosen["encrypted_key"].native
            scheme = info.chosen["key_encryption_algorithm"]
            break
        if wrapped is None or scheme is None:
            raise SignatureError("cannot decrypt: the message is not encrypted to this certificate")
        if scheme["algorithm"].native == "rsaes_oaep":
            params = scheme["parameters"].native or {}
            digest = _OAEP_HASHES[(params.get("hash_algorithm") or {}).get("algorithm", "sha1")]()
            pad: Any = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
        else:
            pad = padding.PKCS1v15()
        content_key = key.decrypt(wrapped, pad)
        info = data["auth_encrypted_content_info"]
        algorithm = info["content_encryption_algorithm"]
        name = algorithm["algorithm"].native
        if name not in _GCM_KEY_BYTES or len(content_key) != _GCM_KEY_BYTES[name]:
            raise SignatureError(f"cannot decrypt: content encryption {name} is not supported")
        parameters = _GcmParameters.load(algorithm["parameters"].dump())
        nonce, tag = parameters["aes_nonce"].native, data["mac"].native
        if len(tag) != parameters["aes_icvlen"].native:
            raise SignatureError("cannot decrypt: the authentication tag has the wrong length")
        attributes = data["auth_attrs"]
        # RFC 5083 §2.2: authenticated attributes are authenticated as a DER SET OF, not in their [1] tagging.
        aad = b"" if not attributes.native else b"\x31" + attributes.dump()[1:]
        return AESGCM(content_key).decrypt(nonce, info["encrypted_content"].native + tag, aad)
    except SignatureError:
        raise
    except Exception as exc:  # wrong key, bad tag, malformed structure: one refusal, with the cause
        raise SignatureError(f"cannot decrypt: {type(exc).__name__}") from None


@dataclass(frozen=True)
class SignerCheck:
    """One signer, with the address checks added to the CMS checks."""

    result: SignerResult
    reasons: tuple[str, ...]

    @property
    def valid(self) -> bool:
        return not self.reasons

    @property
    def address(self) -> str | None:
        addresses = self.result.email_addresses
        return addresses[0] if addresses else None


@dataclass(frozen=True)
class Verification:
    """The outcome of verifying a signed message: valid when at least one signer is fully valid."""

    signers: tuple[SignerCheck, ...]
    content: bytes  # the signed MIME entity, exactly as signed
    inner_message: bytes | None  # the wrapped message (message/rfc822), if the content is one
    from_address: str | None  # From of the inner message (or of the signed entity's headers)
    reasons: tuple[str, ...] = field(default=())  # problems of the message as a whole

    @property
    def valid(self) -> bool:
        return not self.reasons and any(s.valid for s in self.signers)

    @property
    def valid_signer(self) -> SignerCheck | None:
        return next((s for s in self.signers if s.valid), None)

    def all_reasons(self) -> list[str]:
        found = list(self.reasons)
        for signer in self.signers:
            who = signer.address or "unknown signer"
            found.extend(f"{who}: {reason}" for reason in signer.reasons)
        return found


def _signed_parts(entity: bytes) -> tuple[bytes, bytes, str]:
    """(first part exactly as signed, signature DER, boundary) of a multipart/signed entity.

    RFC 2046 §5.1.1: a delimiter line is CRLF "--" boundary, optionally followed by spaces or tabs; the CRLF before
    it belongs to the delimiter. Exactly two parts are accepted (RFC 1847 §2.1): anything else could show a reader
    something other than what was verified.
    """
    head, body = _split(entity)
    headers = _headers(head)
    if len(headers.get_all("Content-Type") or []) != 1:
        raise SignatureError("multipart/signed with several Content-Type fields")
    boundary = headers.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 200:
        raise SignatureError("multipart/signed without a usable boundary")
    delimiter = re.escape(b"--" + boundary.encode("ascii", "replace"))
    # (start with the CRLF before it, end, closing?) of each delimiter line; the pattern starts with the literal
    # boundary so that the regex engine searches for it rather than trying every position of a large body.
    marks = [
        (m.start() - 2 if m.start() else 0, m.end(), bool(m.group(1)))
        for m in re.finditer(delimiter + rb"(--)?[ \t]*(?=\r\n|$)", body)
        if m.start() == 0 or body.startswith(b"\r\n", m.start() - 2)
    ]
    close = next((m for m in marks if m[2]), None)
    opens = [m for m in marks if not m[2]]
    if close is None or len(opens) != 2 or opens[1][0] > close[0]:
        raise SignatureError("multipart/signed must have exactly two parts")
    first = body[opens[0][1] + 2 : opens[1][0]]
    second = body[opens[1][1] + 2 : close[0]]
    sig_head, sig_body = _split(second)
    sig_type, _ = _content_type(sig_head)
    if sig_type not in ("application/pkcs7-signature", "application/x-pkcs7-signature"):
        raise SignatureError(f"multipart/signed: second part is {sig_type}, not application/pkcs7-signature")
    return first, _base64_body(sig_body), boundary


_IDENTITY_ENCODINGS = ("", "7bit", "8bit", "binary")


def unwrap(content: bytes) -> bytes | None:
    """The message inside a ``message/rfc822`` entity, or None if the entity is something else.

    RFC 2046 §5.2.1: message/rfc822 allows no encoding but 7bit, 8bit or binary; an encoded one is refused (what is
    checked and what is delivered must be the same bytes).
    """
    head, body = _split(canonical(content))
    content_type, headers = _content_type(head)
    encoding = str(headers.get("Content-Transfer-Encoding", "")).strip().lower()
    if content_type != "message/rfc822" or encoding not in _IDENTITY_ENCODINGS:
        return None
    return body


_FIELD_NAME = re.compile(rb"[!-9;-~]+:")  # RFC 5322 §3.6.8: printable ASCII but colon, then the colon


def _from_address(message: bytes) -> str | None:
    """The one address of the one From field of ``message``; None when the header is malformed, has no From,
    several From fields, or several addresses (RFC 5322 §3.6.2 requires Sender then; we refuse)."""
    head, _ = _split(message)
    fields = _field_lines(head)
    if any(not _FIELD_NAME.match(field) for field in fields):
        return None
    values = [f.split(b":", 1)[1].decode("utf-8", "replace") for f in fields if f.split(b":", 1)[0].lower() == b"from"]
    if len(values) != 1:
        return None
    addresses = [a for _, a in getaddresses([" ".join(values[0].split())]) if a]
    return addresses[0].lower() if len(addresses) == 1 else None


def verify(
    message: bytes,
    *,
    anchors: Sequence[x509.Certificate] | Callable[[str | None], Sequence[x509.Certificate]],
    at: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
    extra_certificates: Sequence[x509.Certificate] = (),
    policy: VerificationPolicy = STRICT,
    require_wrapping: bool = True,
) -> Verification:
    """Verify a signed message or MIME entity (detached multipart/signed, or opaque signed-data).

    Each signer must chain to ``anchors`` under ``policy`` at time ``at``, and its certificate's address must be
    the From of the signed (inner) message. ``anchors`` may be a function of that From address: in a trust space
    each operator's CA speaks only for its own domains. Raises SignatureError only when the input is not S/MIME
    signed.
    """
    message = canonical(message)
    head, body = _split(message)
    content_type, _ = _content_type(head)
    if content_type == "multipart/signed":
        content, signature, _ = _signed_parts(message)
        detached: bytes | None = content
    elif content_type in ("application/pkcs7-mime", "application/x-pkcs7-mime") and is_signed(message):
        signature = _base64_body(body)
        content, detached = canonical(encapsulated_content(signature)), None
    else:
        raise SignatureError(f"not an S/MIME signed message ({content_type})")
    inner = unwrap(content)
    reasons: list[str] = []
    if inner is None and require_wrapping:
        reasons.append("signed content is not a wrapped message (message/rfc822)")
    from_address = _from_address(inner if inner is not None else content)  # never the unsigned outer From
    if from_address is None:
        reasons.append("the signed message has not exactly one From field with one address")
    trusted = anchors(from_address) if callable(anchors) else anchors
    results = verify_signed_data(signature, detached, anchors=trusted, at=at, crls=crls,
                                 extra_certificates=extra_certificates, policy=policy)  # fmt: skip
    if not results:
        reasons.append("no signer")
    checks = []
    for result in results:
        signer_reasons = list(result.reasons)
        if from_address and result.certificate is not None and not _address_matches(from_address, result):
            shown = ", ".join(result.email_addresses) or "none"
            signer_reasons.append(f"signer address ({shown}) is not the From address {from_address}")
        checks.append(SignerCheck(result, tuple(signer_reasons)))
    return Verification(tuple(checks), content, inner, from_address, tuple(reasons))


def _address_matches(address: str, result: SignerResult) -> bool:
    """RFC 8550 §3: the certificate's email address must be the sender's (compared case-insensitively). A
    domain-bound certificate (Direct Project: a dNSName and no email address) covers its whole domain."""
    sender = parseaddr(address)[1].lower()
    if sender in {a.lower() for a in result.email_addresses}:
        return True
    if result.email_addresses or result.certificate is None:
        return False
    try:
        san = result.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return False
    return sender.rpartition("@")[2] in {name.lower() for name in san.get_values_for_type(x509.DNSName)}
