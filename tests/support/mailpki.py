"""The PKI the CMS verification tests share (``tests/unit/crypto/test_cms*.py``): a root, a mail CA under it, an
RSA-2048 and a P-256 signer under the mail CA, and the one-signer verification those tests call.

Certificates are valid around the real clock (``testpki`` defaults), because ``PKCS7SignatureBuilder`` and
``openssl cms`` stamp the real signingTime; ``NOW`` is the validation time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from mssecure.crypto.cms import SignerResult, verify_signed_data
from tests.support.testpki import Credential, ec_key, end_entity, intermediate_ca, root_ca, rsa_key

__all__ = ["NOW", "MailPki", "make_mail_pki", "verify_one"]

NOW = datetime.now(UTC)


@dataclass(frozen=True)
class MailPki:
    root: Credential
    intermediate: Credential  # the mail CA, issued by the root
    rsa_signer: Credential  # RSA-2048, issued by the mail CA
    ec_signer: Credential  # P-256, issued by the mail CA


def make_mail_pki(name: str, *, rsa_email: str, ec_email: str) -> MailPki:
    """``<name> Root CA`` → ``<name> Mail CA`` → an RSA signer ``rsa_email`` and an EC signer ``ec_email``."""
    root = root_ca(f"{name} Root CA")
    intermediate = intermediate_ca(f"{name} Mail CA", root)
    return MailPki(
        root=root,
        intermediate=intermediate,
        rsa_signer=end_entity(rsa_email, intermediate, key=rsa_key(2048)),
        ec_signer=end_entity(ec_email, intermediate, key=ec_key()),
    )


def verify_one(signature: bytes, content: bytes | None, pki: MailPki, **options: object) -> SignerResult:
    """``verify_signed_data`` of a SignedData that has exactly one signer; by default anchored at the root, at NOW."""
    options.setdefault("anchors", [pki.root.certificate])
    options.setdefault("at", NOW)
    results = verify_signed_data(signature, content, **options)  # type: ignore[arg-type]
    assert len(results) == 1
    return results[0]
