"""DKIM signatures with the operator's key, verified with keys from the trust bundle (no DNS)."""

from __future__ import annotations

import base64
import hashlib

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from mssecure.crypto.dkim import _relaxed_body_hash, _split, dkim_sign, dkim_verify, relaxed_body, signature_domain
from mssecure.errors import SignatureError

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


def dkimpy_signed(message: bytes = MESSAGE, **options: object) -> bytes:
    pem = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())  # fmt: skip
    header: bytes = dkim.sign(message, b"mssecure", b"chu-nord.mssante.test", pem, **options)
    return header + message


def dkimpy_verifies(message: bytes) -> bool:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return KEYS.get(name.decode().rstrip("."), "").encode() or None

    return bool(dkim.verify(message, dnsfunc=lookup))


def test_dkimpy_verifies_what_we_sign() -> None:
    spaced = MESSAGE.replace(b"Amoxicilline 1 g.\r\n", b"Amoxicilline \t 1 g.  \r\n\r\n")
    for message in (MESSAGE, spaced, MESSAGE.replace(b"Amoxicilline 1 g.", b"QUJD")):
        assert dkimpy_verifies(signed(message))
        assert not dkimpy_verifies(signed(message).replace(b"Subject: Ordonnance", b"Subject: Autre"))


@pytest.mark.parametrize("canonicalize", [(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")])
@pytest.mark.parametrize("length", [False, True])
def test_we_verify_what_dkimpy_signs(canonicalize: tuple[bytes, bytes], length: bool) -> None:
    spaced = MESSAGE.replace(b"Amoxicilline 1 g.\r\n", b"Amoxicilline \t 1 g.  \r\n\r\n")
    for message in (MESSAGE, spaced):
        theirs = dkimpy_signed(message, canonicalize=canonicalize, length=length)
        assert dkim_verify(theirs, keys=KEYS).valid
        assert not dkim_verify(theirs.replace(b"1 g.", b"2 g."), keys=KEYS).valid
        assert not dkim_verify(theirs.replace(b"To: pharmacie", b"To: autre"), keys=KEYS).valid
    # l=: what follows the signed length is not covered (RFC 6376 §8.2), as dkimpy itself decides.
    theirs = dkimpy_signed(MESSAGE, canonicalize=canonicalize, length=length)
    assert dkim_verify(theirs + b"P.S.\r\n", keys=KEYS).valid == length == dkimpy_verifies(theirs + b"P.S.\r\n")


def test_rsa_sha1_and_small_keys_are_refused() -> None:
    sha1 = dkimpy_signed(signature_algorithm=b"rsa-sha1")
    assert dkimpy_verifies(sha1)  # dkimpy would accept it
    assert dkim_verify(sha1, keys=KEYS).reason == "algorithm rsa-sha1 is not accepted (rsa-sha256 only)"
    small = rsa.RSAPublicNumbers(65537, (1 << 511) | 0xF1).public_key()  # a 512-bit modulus (no key pair needed)
    der = small.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    small_record = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    result = dkim_verify(signed(), keys={"mssecure._domainkey.chu-nord.mssante.test": small_record})
    assert (result.valid, result.reason) == (False, "public key too small: 512 bits")


def test_malformed_signatures_are_refused_with_a_reason() -> None:
    good = signed()
    for broken in (
        good.replace(b"a=rsa-sha256", b"a=rsa-sha999"),
        good.replace(b"bh=", b"bh=!!"),
        good.replace(b"c=relaxed/relaxed", b"c=odd/relaxed"),
        good.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; v=2;"),
        good.replace(b"s=mssecure", b"s=unknown"),
    ):
        result = dkim_verify(broken, keys=KEYS)
        assert not result.valid
        assert result.reason


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


def test_a_base64_body_and_a_body_with_whitespace_both_verify_with_dkimpy() -> None:
    base64_body = MESSAGE.replace(b"Amoxicilline 1 g.\r\n", b"QUJD\r\nREVG\r\n\r\n\r\n")
    spaced = MESSAGE.replace(b"Amoxicilline 1 g.\r\n", b"Amoxicilline \t 1 g.  \r\n\r\n Posologie\r\n\r\n")
    folded = MESSAGE.replace(b"Subject: Ordonnance", b"Subject: Ordonnance\r\n\tdu jour")
    for message in (base64_body, spaced, folded, MESSAGE.replace(b"\r\n\r\nAmoxicilline 1 g.\r\n", b"\r\n\r\n")):
        assert dkim_verify(signed(message), keys=KEYS).valid, message
    # The trailing empty lines are not covered (RFC 6376 §3.4.4); any other change is.
    assert dkim_verify(signed(base64_body) + b"\r\n", keys=KEYS).valid
    assert not dkim_verify(signed(base64_body).replace(b"REVG", b"REVH"), keys=KEYS).valid
    assert not dkim_verify(signed(spaced).replace(b" Posologie", b"Posologie"), keys=KEYS).valid


def test_the_signed_fields_are_those_present_and_from_is_required() -> None:
    head = signed().split(b"\r\n\r\n")[0].replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    tags = dict(p.strip().split(b"=", 1) for p in head.split(b"\r\n")[0].split(b":", 1)[1].split(b";"))
    assert tags[b"h"].replace(b" ", b"").split(b":") == [b"from", b"to", b"subject", b"date", b"message-id"]
    assert (tags[b"d"], tags[b"s"], tags[b"i"]) == (b"chu-nord.mssante.test", b"mssecure", b"@chu-nord.mssante.test")
    with pytest.raises(SignatureError, match="no From"):
        signed(MESSAGE.replace(b"From: Dr Camille LEFEVRE <camille.lefevre@chu-nord.mssante.test>\r\n", b""))


def test_bare_line_ends_are_refused_rather_than_signed() -> None:
    with pytest.raises(SignatureError, match="bare CR or LF"):
        signed(MESSAGE.replace(b"\r\n", b"\n"))
    assert dkim_verify(signed().replace(b"1 g.\r\n", b"1 g.\n"), keys=KEYS).reason == "bare CR or LF in the message"


def test_the_same_message_and_time_give_the_same_signature() -> None:
    first = dkim_sign(MESSAGE, domain="chu-nord.mssante.test", selector="mssecure", key=KEY, now=1_790_000_000)
    again = dkim_sign(MESSAGE, domain="chu-nord.mssante.test", selector="mssecure", key=KEY, now=1_790_000_000)
    assert first == again
    assert b"t=1790000000" in first


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=8))
def test_relaxed_body_is_dkimpys_on_crlf_bodies(lines: list[bytes]) -> None:
    body = b"".join(line + b"\r\n" for line in lines)
    for candidate in (body, body.rstrip(b"\r\n"), body + b"\r\n\r\n"):
        if candidate.endswith(b"\r"):
            continue
        assert relaxed_body(candidate) == Relaxed.canonicalize_body(candidate)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"QUJD", b"x y", b"\t", b"", b"=="]), max_size=8), st.integers(0, 3))
def test_the_body_hash_without_copies_is_the_hash_of_the_relaxed_body(lines: list[bytes], trailing: int) -> None:
    body = b"".join(line + b"\r\n" for line in lines) + b"\r\n" * trailing
    message = b"From: a@b.test\r\n\r\n" + body
    head, start = _split(message)
    assert (head, message[start:]) == (b"From: a@b.test", body)
    assert _relaxed_body_hash(message, start) == hashlib.sha256(relaxed_body(body)).digest()
