"""DKIM (RFC 6376) with dkimpy: rsa-sha256, relaxed/relaxed, with the operator's key.

Inside the trust space no DNS is needed: ``verify`` takes the peers' public keys from the trust bundle
(``keys``: record name → TXT value) and only falls back to DNS when allowed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization

from mssecure.errors import SignatureError

__all__ = ["DkimResult", "dkim_sign", "dkim_verify", "signature_domain"]

# RFC 6376 §5.4.1: the fields a signature should cover; From is required.
SIGNED_HEADERS = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
    b"content-transfer-encoding", b"in-reply-to", b"references", b"disposition-notification-to",
)  # fmt: skip
_QUIET = logging.getLogger("mssecure.dkim")


@dataclass(frozen=True)
class DkimResult:
    valid: bool
    domain: str | None
    selector: str | None
    reason: str | None = None


def dkim_sign(message: bytes, *, domain: str, selector: str, key: Any) -> bytes:
    """``message`` with a DKIM-Signature header field prepended."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    try:
        header = dkimpy.sign(
            message,
            selector.encode(),
            domain.encode(),
            pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[h for h in SIGNED_HEADERS if _has_header(message, h)],
            logger=_QUIET,
        )
    except dkimpy.DKIMException as exc:
        raise SignatureError(f"cannot DKIM-sign: {exc}") from None
    return bytes(header) + message


def _has_header(message: bytes, name: bytes) -> bool:
    head = message.split(b"\r\n\r\n", 1)[0].lower()
    return head.startswith(name + b":") or b"\r\n" + name + b":" in head


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
    if re.search(rb"\r(?!\n)|(?<!\r)\n", message):
        # dkimpy and we would split the header differently (one could verify a field the other never saw).
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
        valid = dkimpy.verify(message, dnsfunc=lookup, logger=_QUIET, minkey=1024)
    except dkimpy.DKIMException as exc:
        return DkimResult(False, domain, selector, str(exc))
    return DkimResult(valid, domain, selector, None if valid else "signature does not verify")
