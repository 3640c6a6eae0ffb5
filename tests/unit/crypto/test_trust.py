"""Trust bundles are verified before they are read, and a peer relay's certificate is told from an S/MIME one.

The peer's PKI is made with mssecure's own profiles (``mssecure.crypto.pki``): the CA, the relay certificate that
``init`` issues (serverAuth + clientAuth, dNSName) and the S/MIME certificate ``certs issue`` issues
(emailProtection + clientAuth, rfc822Name) — the one a relay must never accept in its place.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID

from mssecure.crypto.pki import Issued, Revocation, build_crl, fingerprint, issue_smime, issue_tls, new_ca
from mssecure.crypto.trust import BUNDLE_FORMAT, check_relay_certificate, read_bundle, relay_certificate_problems
from mssecure.directory.records import EntryData, Kind
from mssecure.errors import TrustError
from tests.support.testpki import Credential, issue

NOW = datetime.now(UTC)
HOST = "mail.ght-sud.mssante.test"


@dataclass(frozen=True)
class Peer:
    ca: Issued
    relay: Issued
    smime: Issued
    crl: x509.CertificateRevocationList


def _peer(domain: str, hostname: str) -> Peer:
    ca = new_ca(domain, now=NOW - timedelta(days=1))
    entry = EntryData(address=f"pharmacie@{domain}", kind=Kind.ORGANIZATIONAL, organization="Pharmacie").validated()
    return Peer(
        ca=ca,
        relay=issue_tls(ca, hostname, now=NOW),
        smime=issue_smime(ca, entry, now=NOW, crl_url=f"http://{hostname}/crl/ca.crl"),
        crl=build_crl(ca, [], now=NOW),
    )


@pytest.fixture(scope="module")
def peer() -> Peer:
    return _peer("ght-sud.mssante.test", HOST)


@pytest.fixture(scope="module")
def stranger() -> Peer:
    return _peer("ght-sud.mssante.test", HOST)  # same names, another CA key


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


# --- peer relays' certificates -------------------------------------------------------------------------------------


def _problems(peer: Peer, certificate: x509.Certificate, **options: Any) -> tuple[str, ...]:
    options.setdefault("role", "server")
    options.setdefault("at", NOW)
    hostname = options.pop("hostname", HOST)
    return relay_certificate_problems(certificate, hostname, [peer.ca.certificate], **options)


@pytest.mark.parametrize("role", ["server", "client"])
def test_the_peer_relay_certificate_is_accepted_for_both_roles(peer: Peer, role: str) -> None:
    assert _problems(peer, peer.relay.certificate, role=role, crls=[peer.crl]) == ()
    assert _problems(peer, peer.relay.certificate, role=role, hostname=HOST.upper() + ".") == ()
    check_relay_certificate(peer.relay.certificate, HOST, [peer.ca.certificate], role=role, at=NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize("role", ["server", "client"])
def test_an_smime_certificate_of_the_peer_is_never_a_relay_certificate(peer: Peer, role: str) -> None:
    problems = _problems(peer, peer.smime.certificate, role=role)
    assert "extended key usage includes emailProtection: an S/MIME certificate is not a relay's" in problems
    assert "subjectAltName has an rfc822Name: an S/MIME certificate is not a relay's" in problems
    assert f"subjectAltName has no dNSName {HOST}" in problems
    # clientAuth it has (it authenticates a mail client to submission): serverAuth it has not.
    assert ("extended key usage does not include serverAuth" in problems) == (role == "server")
    with pytest.raises(TrustError, match=f"^not the relay certificate of {HOST}: .*emailProtection"):
        check_relay_certificate(peer.smime.certificate, HOST, [peer.ca.certificate], role=role, at=NOW)  # type: ignore[arg-type]


def test_a_domain_bound_smime_certificate_naming_the_host_is_refused(peer: Peer) -> None:
    """A Direct-style S/MIME certificate carries a dNSName: equal to the relay's, it still is not a relay's."""
    domain_bound = issue(
        HOST,
        issuer=Credential(peer.ca.certificate, peer.ca.key),
        key_usage={"digital_signature", "key_encipherment"},
        extended_key_usage=[ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.CLIENT_AUTH,
                            ExtendedKeyUsageOID.SERVER_AUTH],
        extra_extensions=[(x509.SubjectAlternativeName([x509.DNSName(HOST)]), False)],
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=30),
    )  # fmt: skip
    assert _problems(peer, domain_bound.certificate, role="client") == (
        "extended key usage includes emailProtection: an S/MIME certificate is not a relay's",
    )


def _tls_like(peer: Peer, *, names: list[x509.GeneralName], usages: list[x509.ObjectIdentifier] | None,
              ca: bool = False) -> x509.Certificate:  # fmt: skip
    return issue(
        HOST,
        issuer=Credential(peer.ca.certificate, peer.ca.key),
        ca=ca,
        key_usage={"digital_signature", "key_encipherment"} | ({"key_cert_sign"} if ca else set()),
        extended_key_usage=usages,
        extra_extensions=[(x509.SubjectAlternativeName(names), False)],
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=30),
    ).certificate


def test_the_eku_must_match_the_role(peer: Peer) -> None:
    server_only = _tls_like(peer, names=[x509.DNSName(HOST)], usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert _problems(peer, server_only, role="server") == ()
    assert _problems(peer, server_only, role="client") == ("extended key usage does not include clientAuth",)
    no_eku = _tls_like(peer, names=[x509.DNSName(HOST)], usages=None)
    assert _problems(peer, no_eku) == ("no extended key usage (a relay certificate needs serverAuth)",)


def test_the_dns_name_must_be_the_relay_host_exactly(peer: Peer) -> None:
    assert _problems(peer, peer.relay.certificate, hostname="mail.chu-nord.mssante.test") == (
        "subjectAltName has no dNSName mail.chu-nord.mssante.test",
    )
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    wildcard = _tls_like(peer, names=[x509.DNSName("*.ght-sud.mssante.test")], usages=usages)
    assert _problems(peer, wildcard) == (f"subjectAltName has no dNSName {HOST}",)


def test_a_ca_certificate_is_not_a_relay_certificate(peer: Peer) -> None:
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    sub_ca = _tls_like(peer, names=[x509.DNSName(HOST)], usages=usages, ca=True)
    assert "a CA certificate is not a relay certificate" in _problems(peer, sub_ca)


def test_the_relay_certificate_must_chain_to_the_peer_ca(peer: Peer, stranger: Peer) -> None:
    problems = _problems(peer, stranger.relay.certificate)
    assert len(problems) == 1
    assert problems[0].startswith("no certificate chain to a trust anchor")


def test_a_revoked_or_expired_relay_certificate_is_refused(peer: Peer) -> None:
    serial = peer.relay.certificate.serial_number
    revoked = build_crl(peer.ca, [Revocation(serial, NOW - timedelta(minutes=1), "keyCompromise")], now=NOW)
    assert _problems(peer, peer.relay.certificate, crls=[revoked]) == (
        f"certificate revoked (keyCompromise): {peer.relay.certificate.subject.rfc4514_string()}",
    )
    later = peer.relay.certificate.not_valid_after_utc + timedelta(days=1)
    assert [p.partition(":")[0] for p in _problems(peer, peer.relay.certificate, at=later)] == [
        "certificate expired at validation time"
    ]


# --- trust bundles: verified before they are read ------------------------------------------------------------------


def _signed(content: bytes, signer: Issued, *extra: x509.Certificate) -> bytes:
    builder = pkcs7.PKCS7SignatureBuilder().set_data(content)
    builder = builder.add_signer(signer.certificate, signer.key, hashes.SHA256())
    for certificate in extra:
        builder = builder.add_certificate(certificate)
    return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])


def _payload(peer: Peer, crl: x509.CertificateRevocationList | None = None, **changes: Any) -> bytes:
    dkim = base64.b64encode(b"k" * 160).decode()
    payload = {
        "format": BUNDLE_FORMAT,
        "created_at": NOW.isoformat(),
        "operator": {"domain": "ght-sud.mssante.test", "domains": ["ght-sud.mssante.test"], "hostname": HOST,
                     "relay": f"{HOST}:25"},
        "ca_certificates": [_pem(peer.ca.certificate)],
        "crl": base64.b64encode((crl or peer.crl).public_bytes(serialization.Encoding.DER)).decode(),
        "dkim": {"selector": "mssecure", "record": f"v=DKIM1; k=rsa; p={dkim}"},
        "directory": [],
        **changes,
    }  # fmt: skip
    return json.dumps(payload).encode()


def test_a_well_formed_bundle_is_read(peer: Peer) -> None:
    bundle = read_bundle(
        _signed(_payload(peer), peer.relay, peer.ca.certificate),
        confirmed_fingerprint=fingerprint(peer.ca.certificate).replace(":", "").lower(),
        now=NOW,
    )
    assert (bundle.domain, bundle.hostname, bundle.ca) == ("ght-sud.mssante.test", HOST, peer.ca.certificate)


def test_the_fingerprint_is_checked_before_the_content_is_parsed(peer: Peer, stranger: Peer) -> None:
    unreadable = _signed(b"{not json", peer.relay, peer.ca.certificate)
    with pytest.raises(TrustError, match=r"the bundle's CA fingerprint .* is not the one confirmed"):
        read_bundle(unreadable, confirmed_fingerprint=fingerprint(stranger.ca.certificate), now=NOW)
    # The relay's own fingerprint does not make it an anchor: only a CA certificate of the bundle can be confirmed.
    with pytest.raises(TrustError, match=f"fingerprint {fingerprint(peer.ca.certificate)} is not the one confirmed"):
        read_bundle(unreadable, confirmed_fingerprint=fingerprint(peer.relay.certificate), now=NOW)
    with pytest.raises(TrustError, match="content is not JSON"):  # reached only once verified
        read_bundle(unreadable, confirmed_fingerprint=fingerprint(peer.ca.certificate), now=NOW)


def test_the_signature_is_verified_before_the_content_is_parsed(peer: Peer, stranger: Peer) -> None:
    # The confirmed CA travels in the bundle, but another CA's relay signed it.
    forged = _signed(b"{not json", stranger.relay, peer.ca.certificate, stranger.ca.certificate)
    with pytest.raises(TrustError, match="signature does not verify: no certificate chain to a trust anchor"):
        read_bundle(forged, confirmed_fingerprint=fingerprint(peer.ca.certificate), now=NOW)
    without_ca = _signed(b"{not json", peer.relay)
    with pytest.raises(TrustError, match=r"fingerprint none \(it carries no CA certificate\) is not the one"):
        read_bundle(without_ca, confirmed_fingerprint=fingerprint(peer.ca.certificate), now=NOW)


def test_the_content_must_name_the_ca_that_signed_it(peer: Peer, stranger: Peer) -> None:
    other = _payload(peer, ca_certificates=[_pem(stranger.ca.certificate)])
    with pytest.raises(TrustError, match="names another CA than the one its signature chains to"):
        read_bundle(_signed(other, peer.relay, peer.ca.certificate),
                    confirmed_fingerprint=fingerprint(peer.ca.certificate), now=NOW)  # fmt: skip


def test_a_bundle_signed_by_a_revoked_relay_certificate_is_refused(peer: Peer) -> None:
    serial = peer.relay.certificate.serial_number
    crl = build_crl(peer.ca, [Revocation(serial, NOW - timedelta(minutes=1), "keyCompromise")], now=NOW)
    with pytest.raises(TrustError, match=f"not signed by the relay certificate of {HOST}: certificate revoked"):
        read_bundle(_signed(_payload(peer, crl), peer.relay, peer.ca.certificate),
                    confirmed_fingerprint=fingerprint(peer.ca.certificate), now=NOW)  # fmt: skip


def test_a_bundle_over_the_limit_is_refused_naming_it(peer: Peer) -> None:
    data = _signed(_payload(peer), peer.relay, peer.ca.certificate)
    limit = f"larger than the limit of {len(data) - 1} bytes \\(`mssecure trust import --max-size` raises it\\)"
    with pytest.raises(TrustError, match=limit):
        read_bundle(data, confirmed_fingerprint=fingerprint(peer.ca.certificate), now=NOW, max_size=len(data) - 1)
    read_bundle(data, confirmed_fingerprint=fingerprint(peer.ca.certificate), now=NOW, max_size=len(data))
