"""Interoperability: signatures made by ``openssl cms -sign`` (an independent CMS producer) verify, and the
verifier's negative answers agree with what ``openssl cms -verify`` says about the same bytes."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from mssecure.crypto.cms import LEGACY, STRICT, encapsulated_content
from tests.support.mailpki import MailPki, make_mail_pki, verify_one
from tests.support.testpki import Credential, openssl_cms_sign

# openssl is installed by CI (.ci/run); without it these tests fail rather than skip.

CONTENT = b"Content-Type: text/plain; charset=utf-8\r\n\r\nCompte rendu d'hospitalisation\r\n"


@pytest.fixture(scope="module")
def pki() -> MailPki:
    return make_mail_pki("OpenSSL Interop", rsa_email="rsa@chu-sud.mssante.test", ec_email="ec@chu-sud.mssante.test")


@pytest.mark.parametrize("signer_name", ["rsa_signer", "ec_signer"])
@pytest.mark.parametrize("detached", [True, False], ids=["detached", "nodetach"])
def test_openssl_signature_verifies(pki: MailPki, tmp_path: Path, signer_name: str, detached: bool) -> None:
    signer: Credential = getattr(pki, signer_name)
    before = datetime.now(UTC).replace(microsecond=0)
    signature = openssl_cms_sign(CONTENT, signer, tmp_path, detached=detached, certfile=[pki.intermediate.certificate])
    after = datetime.now(UTC)
    result = verify_one(signature, CONTENT if detached else None, pki)
    assert result.valid, result.reasons
    assert result.chain == (signer.certificate, pki.intermediate.certificate, pki.root.certificate)
    assert result.signing_time is not None
    assert before <= result.signing_time <= after  # the signer's clock, when it signed
    if not detached:
        assert encapsulated_content(signature) == CONTENT


@pytest.mark.parametrize(
    "extra_args",
    [["-noattr"], ["-keyid"], ["-keyopt", "rsa_padding_mode:pss"], ["-md", "sha512"]],
    ids=["no-signed-attributes", "subject-key-identifier", "rsassa-pss", "sha512"],
)
def test_openssl_signature_variants_verify(pki: MailPki, tmp_path: Path, extra_args: list[str]) -> None:
    signature = openssl_cms_sign(
        CONTENT, pki.rsa_signer, tmp_path, certfile=[pki.intermediate.certificate], extra_args=extra_args
    )
    result = verify_one(signature, CONTENT, pki)
    assert result.valid, result.reasons
    tampered = verify_one(signature, CONTENT.replace(b"hospitalisation", b"hospitalisatioN"), pki)
    expected = "signature is invalid" if "-noattr" in extra_args else "message digest does not match the content"
    assert tampered.reasons == (expected,)


def test_openssl_sha1_signature_needs_legacy_policy(pki: MailPki, tmp_path: Path) -> None:
    signature = openssl_cms_sign(
        CONTENT, pki.rsa_signer, tmp_path, digest="sha1", certfile=[pki.intermediate.certificate]
    )
    assert verify_one(signature, CONTENT, pki, policy=STRICT).reasons == ("digest algorithm sha1 is not allowed",)
    legacy = verify_one(signature, CONTENT, pki, policy=LEGACY)
    assert legacy.valid, legacy.reasons
    assert legacy.digest_algorithm == "sha1"


def _openssl_verify(signature: bytes, content: bytes, pki: MailPki, workdir: Path) -> bool:
    (workdir / "sig.der").write_bytes(signature)
    (workdir / "content.bin").write_bytes(content)
    (workdir / "root.pem").write_bytes(pki.root.certificate.public_bytes(Encoding.PEM))
    command = ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(workdir / "sig.der")]
    command += ["-content", str(workdir / "content.bin"), "-CAfile", str(workdir / "root.pem")]
    command += ["-purpose", "smimesign", "-out", str(workdir / "out.bin")]
    completed = subprocess.run(command, capture_output=True, check=False)
    return completed.returncode == 0


def test_verdicts_agree_with_openssl(pki: MailPki, tmp_path: Path) -> None:
    signature = openssl_cms_sign(CONTENT, pki.ec_signer, tmp_path, certfile=[pki.intermediate.certificate])
    for content in (CONTENT, CONTENT + b"\r\n"):
        ours = verify_one(signature, content, pki).valid
        assert ours == _openssl_verify(signature, content, pki, tmp_path)
    assert _openssl_verify(signature, CONTENT, pki, tmp_path)  # the agreement above is not two failures
