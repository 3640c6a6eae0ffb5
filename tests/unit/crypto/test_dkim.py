"""DKIM signatures with the operator's key, verified with keys from the trust bundle (no DNS)."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mssecure.crypto.dkim import dkim_sign, dkim_verify, signature_domain

MESSAGE = (
    b"From: Dr Camille LEFEVRE <camille.lefevre@chu-nord.mssante.test>\r\n"
    b"To: pharmacie@ght-sud.mssante.test\r\n"
    b"Subject: Ordonnance\r\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <rx1@chu-nord.mssante.test>\r\n"
    b"\r\n"
    b"Amoxicilline 1 g.\r\n"
)
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def record(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


KEYS = {"mssecure._domainkey.chu-nord.mssante.test": record(KEY)}


def signed(message: bytes = MESSAGE) -> bytes:
    return dkim_sign(message, domain="chu-nord.mssante.test", selector="mssecure", key=KEY)


def test_sign_then_verify_with_a_bundle_key() -> None:
    message = signed()
    assert message.startswith(b"DKIM-Signature: ")
    assert b"a=rsa-sha256" in message.split(b"\r\n\r\n")[0]
    assert b"c=relaxed/relaxed" in message.split(b"\r\n\r\n")[0]
    assert signature_domain(message) == ("chu-nord.mssante.test", "mssecure")
    result = dkim_verify(message, keys=KEYS)
    assert (result.valid, result.domain, result.selector) == (True, "chu-nord.mssante.test", "mssecure")


def test_relaxed_canonicalisation_tolerates_whitespace_changes_in_headers() -> None:
    message = signed().replace(b"Subject: Ordonnance", b"Subject:   Ordonnance")
    assert dkim_verify(message, keys=KEYS).valid


def test_a_changed_body_or_header_fails() -> None:
    assert not dkim_verify(signed().replace(b"1 g.", b"2 g."), keys=KEYS).valid
    assert not dkim_verify(signed().replace(b"To: pharmacie", b"To: autre"), keys=KEYS).valid


def test_an_unknown_key_fails_without_dns() -> None:
    other = {"mssecure._domainkey.chu-nord.mssante.test": record(rsa.generate_private_key(65537, 2048))}
    assert not dkim_verify(signed(), keys=other).valid
    result = dkim_verify(signed(), keys={})
    assert not result.valid


def test_an_unsigned_message() -> None:
    result = dkim_verify(MESSAGE, keys=KEYS)
    assert (result.valid, result.reason) == (False, "no DKIM signature")
