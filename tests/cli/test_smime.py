"""S/MIME as the relay will do it, judged by independent implementations: OpenSSL's cms and GnuPG's gpgsm."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli.test_certs import DOCTOR, FINESS, PHARMACY, RPPS, data, openssl
from tests.cli.test_cli import assert_one_line_error
from tests.conftest import IN_CI, Operator

PRESCRIPTION = (
    "From: Dr Camille LEFÈVRE <camille.lefevre@chu-nord.mssante.test>\n"
    "To: pharmacie@chu-nord.mssante.test\n"
    "Subject: Ordonnance DUPONT Jean\n"
    "Date: Mon, 23 Nov 2026 10:00:00 +0000\n"
    "Message-ID: <rx1@chu-nord.mssante.test>\n"
    "MIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "Amoxicilline 1 g, trois fois par jour pendant 7 jours.\n"
).encode()


@pytest.fixture
def smime_op(operator: Operator) -> Operator:
    for args in (
        ["directory", "add", DOCTOR, "--kind", "personal", "--rpps", RPPS, "--last-name", "LEFÈVRE"],
        ["directory", "add", PHARMACY, "--kind", "organizational", "--finess", FINESS, "--organization", "Pharmacie"],
        ["certs", "issue", DOCTOR],
        ["certs", "issue", PHARMACY],
    ):
        result = operator.run(*args)
        assert result.exit_code == 0, result.output
    return operator


def run_files(op: Operator, tmp_path: Path, command: list[str], content: bytes, name: str) -> Path:
    source, target = tmp_path / f"{name}.in", tmp_path / f"{name}.out"
    source.write_bytes(content)
    result = op.run("smime", *command, str(source), str(target))
    assert result.exit_code == 0, result.output
    return target


def key_and_cert(op: Operator, address: str, tmp_path: Path) -> tuple[Path, Path]:
    """The address's key and certificate as plain PEM files, through the PKCS#12 a professional would import."""
    password = tmp_path / "p12-password"
    password.write_text("p12-password\n")
    p12 = tmp_path / f"{address}.p12"
    assert op.run("certs", "export-p12", address, "--out", str(p12), "--password-file", str(password)).exit_code == 0
    key, cert = tmp_path / f"{address}.key", tmp_path / f"{address}.crt"
    key.write_text(openssl("pkcs12", "-in", str(p12), "-passin", f"file:{password}", "-nodes", "-nocerts").stdout)
    cert.write_text(openssl("pkcs12", "-in", str(p12), "-passin", f"file:{password}", "-clcerts", "-nokeys").stdout)
    return key, cert


def test_signed_message_verifies_with_openssl_and_hides_the_subject(smime_op: Operator, tmp_path: Path) -> None:
    signed = run_files(smime_op, tmp_path, ["sign", "--as", DOCTOR], PRESCRIPTION, "sign")
    head = signed.read_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"multipart/signed" in head
    assert b"micalg=sha-256" in head
    assert b"Subject" not in head  # the outer headers name no patient
    assert b"Message-ID: <rx1@chu-nord.mssante.test>" in head
    inner = tmp_path / "inner"
    ca = data(smime_op) / "pki" / "ca.crt"
    openssl("cms", "-verify", "-in", str(signed), "-CAfile", str(ca), "-purpose", "smimesign", "-out", str(inner))
    assert inner.read_bytes().startswith(b"Content-Type: message/rfc822\r\n\r\n")
    assert b"Subject: Ordonnance DUPONT Jean\r\n" in inner.read_bytes()
    printed = openssl("cms", "-cmsout", "-print", "-in", str(signed)).stdout
    assert "sha256" in printed


def test_a_tampered_signed_message_fails_with_openssl(smime_op: Operator, tmp_path: Path) -> None:
    signed = run_files(smime_op, tmp_path, ["sign", "--as", DOCTOR], PRESCRIPTION, "sign")
    tampered = tmp_path / "tampered"
    tampered.write_bytes(signed.read_bytes().replace(b"7 jours", b"70 jours"))
    ca = data(smime_op) / "pki" / "ca.crt"
    result = openssl("cms", "-verify", "-in", str(tampered), "-CAfile", str(ca), "-out", os.devnull, check=False)
    assert result.returncode != 0


def test_our_encryption_decrypts_with_openssl(smime_op: Operator, tmp_path: Path) -> None:
    signed = run_files(smime_op, tmp_path, ["sign", "--as", DOCTOR], PRESCRIPTION, "sign")
    encrypted = run_files(smime_op, tmp_path, ["encrypt", "--to", PHARMACY], signed.read_bytes(), "enc")
    head = encrypted.read_bytes().split(b"\r\n\r\n", 1)[0]
    assert b"application/pkcs7-mime; smime-type=enveloped-data" in head
    assert b"Subject" not in head
    assert "aes-256-cbc" in openssl("cms", "-cmsout", "-print", "-in", str(encrypted)).stdout
    key, cert = key_and_cert(smime_op, PHARMACY, tmp_path)
    by_openssl = tmp_path / "by-openssl"
    openssl("cms", "-decrypt", "-in", str(encrypted), "-recip", str(cert), "-inkey", str(key), "-binary",
            "-out", str(by_openssl))  # fmt: skip
    ours = run_files(smime_op, tmp_path, ["decrypt", "--as", PHARMACY], encrypted.read_bytes(), "dec")
    assert by_openssl.read_bytes() == ours.read_bytes()
    ca = data(smime_op) / "pki" / "ca.crt"
    openssl("cms", "-verify", "-in", str(ours), "-CAfile", str(ca), "-out", os.devnull)


@pytest.mark.parametrize("cipher", ["-aes128", "-aes256", "-aes-128-gcm", "-aes-256-gcm"])
def test_openssl_encryption_decrypts_with_mssecure(smime_op: Operator, tmp_path: Path, cipher: str) -> None:
    _, cert = key_and_cert(smime_op, PHARMACY, tmp_path)
    entity = tmp_path / "entity"
    entity.write_bytes(b"Content-Type: text/plain\r\n\r\nCompte rendu de biologie.\r\n")
    encrypted = tmp_path / "openssl.p7m"
    openssl("cms", "-encrypt", cipher, "-binary", "-in", str(entity), "-out", str(encrypted), str(cert))
    ours = run_files(smime_op, tmp_path, ["decrypt", "--as", PHARMACY], encrypted.read_bytes(), "dec")
    assert ours.read_bytes() == entity.read_bytes()


def test_decrypting_as_someone_else_is_refused(smime_op: Operator, tmp_path: Path) -> None:
    encrypted = run_files(smime_op, tmp_path, ["encrypt", "--to", PHARMACY], PRESCRIPTION, "enc")
    result = smime_op.run("smime", "decrypt", "--as", DOCTOR, str(encrypted), str(tmp_path / "x"))
    assert result.exit_code == 1
    assert_one_line_error(result.output, "not encrypted to any certificate of " + DOCTOR)


def test_a_suspended_entry_cannot_sign_nor_be_encrypted_to(smime_op: Operator, tmp_path: Path) -> None:
    assert smime_op.run("directory", "suspend", DOCTOR, "--reason", "x").exit_code == 0
    source = tmp_path / "m"
    source.write_bytes(PRESCRIPTION)
    result = smime_op.run("smime", "sign", "--as", DOCTOR, str(source), str(tmp_path / "o"))
    assert_one_line_error(result.output, "no valid certificate")
    result = smime_op.run("smime", "encrypt", "--to", DOCTOR, str(source), str(tmp_path / "o"))
    assert_one_line_error(result.output, "no valid certificate to encrypt to")


def test_a_p256_certificate_signs_but_cannot_be_encrypted_to(smime_op: Operator, tmp_path: Path) -> None:
    renewed = smime_op.run("certs", "renew", PHARMACY, "--key-type", "p256")
    assert renewed.exit_code == 0, renewed.output
    assert f"mssecure cannot encrypt mail to it (RSA recipients only); `mssecure certs renew {PHARMACY} --key-type " \
        "rsa`" in renewed.stderr  # fmt: skip
    reply = PRESCRIPTION.replace(b"From: Dr Camille LEF\xc3\x88VRE <camille.lefevre", b"From: <pharmacie").replace(
        b"To: pharmacie", b"To: camille.lefevre"
    )
    signed = run_files(smime_op, tmp_path, ["sign", "--as", PHARMACY], reply, "p256-signed")
    assert smime_op.run("smime", "verify", str(signed)).exit_code == 0
    (tmp_path / "rx.eml").write_bytes(PRESCRIPTION)
    result = smime_op.run("smime", "encrypt", "--to", DOCTOR, "--to", PHARMACY, str(tmp_path / "rx.eml"),
                          str(tmp_path / "rx.p7m"))  # fmt: skip
    assert result.exit_code == 1
    assert_one_line_error(result.output, f"cannot encrypt to {PHARMACY}: its certificate has an elliptic-curve key "
                          "(P-256), and mssecure encrypts to RSA certificates only")  # fmt: skip


def test_decrypting_something_not_encrypted_is_refused(smime_op: Operator, tmp_path: Path) -> None:
    source = tmp_path / "plain"
    source.write_bytes(PRESCRIPTION)
    result = smime_op.run("smime", "decrypt", "--as", PHARMACY, str(source), str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "mssecure: error:" in result.output


def _gpgsm() -> str:
    found = shutil.which("gpgsm")
    if found is None:
        if IN_CI:
            pytest.fail("gpgsm is missing: CI must install it (see .ci/run)")
        pytest.skip("gpgsm not installed (Debian: apt-get install gpgsm)")
    return found


def test_gpgsm_verifies_our_signature(smime_op: Operator, tmp_path: Path) -> None:
    gpgsm = _gpgsm()
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    (home / "gpgsm.conf").write_text("disable-crl-checks\n")
    env = {**os.environ, "GNUPGHOME": str(home)}
    ca = data(smime_op) / "pki" / "ca.crt"
    fingerprint = openssl("x509", "-in", str(ca), "-noout", "-fingerprint", "-sha1").stdout.split("=", 1)[1].strip()
    (home / "trustlist.txt").write_text(f"{fingerprint} S relax\n")
    subprocess.run([gpgsm, "--batch", "--import", str(ca)], env=env, check=True, capture_output=True, timeout=60)
    signed = run_files(smime_op, tmp_path, ["sign", "--as", DOCTOR], PRESCRIPTION, "sign")
    # gpgsm verifies a detached signature over a file: cut the multipart/signed at its boundaries (RFC 1847).
    raw = signed.read_bytes()
    boundary = re.search(rb'boundary="([^"]+)"', raw)
    assert boundary is not None
    delimiter = b"--" + boundary.group(1)
    first, second = raw.split(delimiter + b"\r\n")[1:3]
    content, signature = tmp_path / "content", tmp_path / "smime.p7s"
    content.write_bytes(first.removesuffix(b"\r\n"))
    signature.write_bytes(base64.b64decode(second.split(b"\r\n\r\n", 1)[1].split(b"\r\n" + delimiter)[0]))
    result = subprocess.run([gpgsm, "--batch", "--verify", str(signature), str(content)], env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Good signature" in result.stderr
    tampered = tmp_path / "tampered"
    tampered.write_bytes(content.read_bytes().replace(b"7 jours", b"8 jours"))
    result = subprocess.run([gpgsm, "--batch", "--verify", str(signature), str(tampered)], env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode != 0
    subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, check=False, timeout=30)


def test_a_tampered_aes_gcm_message_is_refused(smime_op: Operator, tmp_path: Path) -> None:
    _, cert = key_and_cert(smime_op, PHARMACY, tmp_path)
    entity = tmp_path / "entity"
    entity.write_bytes(b"Content-Type: text/plain\r\n\r\nCompte rendu.\r\n")
    encrypted = tmp_path / "gcm.p7m"
    openssl("cms", "-encrypt", "-aes-256-gcm", "-binary", "-in", str(entity), "-out", str(encrypted), str(cert))
    head, body = encrypted.read_bytes().split(b"\n\n", 1)
    der = bytearray(base64.b64decode(body))
    der[-40] ^= 0x01  # inside the ciphertext or the tag
    encrypted.write_bytes(head + b"\n\n" + base64.encodebytes(bytes(der)))
    result = smime_op.run("smime", "decrypt", "--as", PHARMACY, str(encrypted), str(tmp_path / "out"))
    assert result.exit_code == 1
    assert not (tmp_path / "out").exists() or (tmp_path / "out").read_bytes() == b""
