"""DKIM (RFC 6376): rsa-sha256, relaxed/relaxed, with the operator's key.

dkimpy parses, selects and canonicalises the header fields and reads the key records; the body hash and the RSA
operations are ours (dkimpy does RSA in pure Python and canonicalises a body with four regular-expression passes:
together more CPU than the rest of a 60 KB message's S/MIME). The tests check both ways against dkimpy's own
``sign`` and ``verify``.

Inside the trust space no DNS is needed: ``verify`` takes the peers' public keys from the trust bundle
(``keys``: record name → TXT value) and only falls back to DNS when allowed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dkim as dkimpy
import dkim.util
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy, Relaxed

from mssecure.crypto.smime import is_canonical
from mssecure.errors import SignatureError

__all__ = ["DkimResult", "dkim_sign", "dkim_verify", "relaxed_body", "signature_domain"]

# RFC 6376 §5.4.1: the fields a signature should cover; From is required.
SIGNED_HEADERS = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
    b"content-transfer-encoding", b"in-reply-to", b"references", b"disposition-notification-to",
)  # fmt: skip
_QUIET = logging.getLogger("mssecure.dkim")
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


@dataclass(frozen=True)
class DkimResult:
    valid: bool
    domain: str | None
    selector: str | None
    reason: str | None = None


def dkim_sign(message: bytes, *, domain: str, selector: str, key: Any, now: int | None = None) -> bytes:
    """``message`` (CRLF line endings) with a DKIM-Signature header field prepended: rsa-sha256, relaxed/relaxed.

    dkimpy canonicalises the header fields and selects and hashes them (``hash_headers``, as its own ``sign`` does);
    the body hash and the RSA signature are ours: dkimpy signs in pure Python, which cost more than everything else
    of a 60 KB message's DKIM signature put together, and canonicalises the body with four regular expressions
    where a body without spaces or tabs (base64, as every S/MIME message is) only needs its trailing empty lines
    removed. dkimpy's ``verify`` checks what this signs (tests/unit/crypto/test_dkim.py)."""
    if not is_canonical(message):
        raise SignatureError("cannot DKIM-sign: the message has bare CR or LF line endings")
    head, start = _split(message)
    try:
        headers, _ = dkimpy.rfc822_parse(head + b"\r\n\r\n")
    except dkimpy.DKIMException as exc:
        raise SignatureError(f"cannot DKIM-sign: {exc}") from None
    present = {name.lower() for name, _ in headers}
    include = [name for name in SIGNED_HEADERS if name in present]
    if b"from" not in include:
        raise SignatureError("cannot DKIM-sign: the message has no From field")
    body_hash = base64.b64encode(_relaxed_body_hash(message, start))
    fields = [
        (b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"), (b"d", domain.encode()),
        (b"i", b"@" + domain.encode()), (b"q", b"dns/txt"), (b"s", selector.encode()),
        (b"t", str(int(time.time()) if now is None else now).encode()), (b"h", b" : ".join(include)),
        (b"bh", body_hash), (b"b", b""),
    ]  # fmt: skip
    hasher = hashlib.sha256()
    dkimpy.hash_headers(hasher, _RELAXED, _RELAXED.canonicalize_headers(headers), include,
                        (b"DKIM-Signature", b" " + _value(fields)), dict(fields))  # fmt: skip
    signature = key.sign(hasher.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    fields[-1] = (b"b", base64.b64encode(signature))
    return b"DKIM-Signature: " + _value(fields) + b"\r\n" + message


def _value(fields: list[tuple[bytes, bytes]]) -> bytes:
    return dkimpy.fold(b"; ".join(b"=".join(field) for field in fields), namelen=len(b"DKIM-Signature"))  # type: ignore[no-any-return]


def _split(message: bytes) -> tuple[bytes, int]:
    """(header block, where the body starts) of a CRLF message: the body is not copied."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message.removesuffix(b"\r\n"), len(message)
    return message[:end], end + 4


def _content_end(data: bytes, start: int) -> int:
    """Where the body that starts at ``start`` ends without its empty lines at the end (RFC 6376 §3.4.4)."""
    end = len(data)
    while data.endswith(b"\r\n", start, end):
        end -= 2
    return end


def _relaxed_body_hash(message: bytes, start: int) -> bytes:
    """SHA-256 of ``relaxed_body(message[start:])``, without copying a body that has no spaces or tabs."""
    if message.find(b" ", start) >= 0 or message.find(b"\t", start) >= 0:
        return hashlib.sha256(Relaxed.canonicalize_body(message[start:])).digest()
    end = _content_end(message, start)
    hasher = hashlib.sha256(memoryview(message)[start:end])
    if end > start:
        hasher.update(b"\r\n")
    return hasher.digest()


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 of a CRLF body: dkimpy's, except for a body without spaces and tabs (a base64 one), where
    only the empty lines at the end go (dkimpy makes four passes over the body with regular expressions)."""
    if b" " in body or b"\t" in body:
        return Relaxed.canonicalize_body(body)  # type: ignore[no-any-return]
    end = _content_end(body, 0)
    return body[:end] + b"\r\n" if end else b""


def signature_domain(message: bytes) -> tuple[str | None, str | None]:
    """(d=, s=) of the first DKIM-Signature of ``message``, if any."""
    head = message.split(b"\r\n\r\n", 1)[0]
    unfolded = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    for line in unfolded.split(b"\r\n"):
        if line.lower().startswith(b"dkim-signature:"):
            tags = dict(part.strip().split(b"=", 1) for part in line.split(b":", 1)[1].split(b";") if b"=" in part)
            domain, selector = tags.get(b"d"), tags.get(b"s")
            return (
                domain.decode("ascii", "replace").strip().lower() if domain else None,
                selector.decode("ascii", "replace").strip() if selector else None,
            )
    return None, None


def dkim_verify(message: bytes, *, keys: Mapping[str, str] | None = None, allow_dns: bool = False) -> DkimResult:
    """Verify the message's DKIM signature with a key from ``keys`` (``<selector>._domainkey.<domain>`` → TXT
    value), or from DNS when ``allow_dns``."""
    if not is_canonical(message):
        # Readers would split the header differently (one could verify a field another never saw).
        return DkimResult(False, None, None, "bare CR or LF in the message")
    domain, selector = signature_domain(message)
    if domain is None or selector is None:
        return DkimResult(False, None, None, "no DKIM signature")
    known = {k.lower().rstrip("."): v for k, v in (keys or {}).items()}

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        record = known.get(name.decode("ascii", "replace").lower().rstrip("."))
        if record is not None:
            return record.encode()
        if allow_dns:
            dns: Callable[..., bytes | None] = dkimpy.dnsplug.get_txt
            return dns(name, timeout=timeout)
        return None

    try:
        reason = _check_first_signature(message, lookup)
    except (dkimpy.DKIMException, binascii.Error, ValueError) as exc:
        return DkimResult(False, domain, selector, str(exc) or type(exc).__name__)
    return DkimResult(reason is None, domain, selector, reason)


def _check_first_signature(message: bytes, lookup: Callable[..., bytes | None]) -> str | None:
    """Why the first DKIM-Signature of a CRLF message does not verify (None: it does): dkimpy's ``verify`` step
    by step (tag parsing and checks, key record, header canonicalisation and selection, the extra From of its bug
    #644046), with our body hash and ``cryptography``'s RSA, as for signing. Only rsa-sha256: RFC 8301 §3.1
    forbids accepting rsa-sha1."""
    head, start = _split(message)
    headers, _ = dkimpy.rfc822_parse(head + b"\r\n\r\n")
    field = next((h for h in headers if h[0].lower() == b"dkim-signature"), None)
    if field is None:
        return "no DKIM signature"
    try:
        sig = dkimpy.util.parse_tag_value(field[1])
    except dkimpy.util.InvalidTagValueList as exc:
        raise dkimpy.MessageFormatError(exc) from None
    dkimpy.validate_signature_fields(sig)
    if sig[b"a"] != b"rsa-sha256":
        return f"algorithm {sig[b'a'].decode('ascii', 'replace')} is not accepted (rsa-sha256 only)"
    try:
        policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    except dkimpy.InvalidCanonicalizationPolicyError as exc:
        raise dkimpy.MessageFormatError(f"invalid c= value: {exc.args[0]!r}") from None
    if policy.body_algorithm is Relaxed and b"l" not in sig:
        body_hash = _relaxed_body_hash(message, start)
    else:
        canonical = policy.canonicalize_body(message[start:])
        body_hash = hashlib.sha256(canonical[: int(sig[b"l"])] if b"l" in sig else canonical).digest()
    if body_hash != base64.b64decode(b"".join(sig[b"bh"].split())):
        return "body hash mismatch"
    pk, keysize, ktag, _ = dkimpy.load_pk_from_dns(sig[b"s"] + b"._domainkey." + sig[b"d"] + b".", lookup)
    if ktag != b"rsa":
        return f"key type {ktag.decode('ascii', 'replace')} is not accepted (RSA only)"
    if keysize < 1024:
        return f"public key too small: {keysize} bits"
    include = [name.lower() for name in re.split(rb"\s*:\s*", sig[b"h"])]
    if b"from" in include:
        include.append(b"from")  # as dkimpy: a second From field, if any, must be signed too
    hasher = hashlib.sha256()
    dkimpy.hash_headers(hasher, policy, policy.canonicalize_headers(headers), include, tuple(field), sig)
    key = rsa.RSAPublicNumbers(pk["publicExponent"], pk["modulus"]).public_key()
    try:
        key.verify(base64.b64decode(b"".join(sig[b"b"].split())), hasher.digest(), padding.PKCS1v15(),
                   Prehashed(hashes.SHA256()))  # fmt: skip
    except InvalidSignature:
        return "signature does not verify"
    return None
