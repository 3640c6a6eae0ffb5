"""The trust space: trust bundles exchanged between operators.

A trust bundle is what a peer needs to talk to us: our domains, our relay endpoint, our CA certificate and CRL,
our DKIM public key, and our public directory (addresses, kinds, identities, S/MIME certificates; "liste rouge"
entries excluded). It is a JSON document inside a CMS SignedData signed with our relay's key (its certificate and
our CA travel inside). Importing one checks the signature against the CA it presents *and* the CA fingerprint the
operator confirmed out of band (``--fingerprint``, printed by ``trust export``) — a bundle alone proves nothing.
The order matters: the CA is taken from the SignedData's certificates by that fingerprint and the signature verified
against it before a byte of the JSON payload is parsed; the payload is then held to that CA (same CA certificate,
CRL signed by it, signer the relay certificate of the host it names and not revoked by that CRL). A bundle larger
than ``DEFAULT_MAX_BUNDLE`` (256 MiB) is refused unless the operator raises the limit (``trust import --max-size``).

``check_relay_certificate`` is the relay's test of a peer relay's TLS certificate, the one a bundle's signer passes.

Re-importing a peer's bundle replaces its directory: entries gone from the bundle are revoked here.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy.orm import Session

from mssecure.config import Config, validate_domain
from mssecure.crypto.authority import OperatorMaterial
from mssecure.crypto.cms import (
    VerificationPolicy,
    embedded_certificates,
    encapsulated_content,
    validate_certificate,
    verify_signed_data,
)
from mssecure.crypto.models import CertificateRecord, TrustedOperator
from mssecure.crypto.pki import fingerprint, serial_hex
from mssecure.db import utcnow
from mssecure.directory.formats import Record
from mssecure.directory.importer import ImportReport, import_records
from mssecure.directory.models import Entry
from mssecure.directory.records import DATA_FIELDS, EntryData, Status
from mssecure.directory.service import Directory
from mssecure.errors import InvalidEntry, MssecureError, TrustError

__all__ = [
    "BUNDLE_FORMAT",
    "DEFAULT_MAX_BUNDLE",
    "Bundle",
    "RelayRole",
    "TrustSpace",
    "check_relay_certificate",
    "export_bundle",
    "read_bundle",
    "relay_certificate_problems",
]

BUNDLE_FORMAT = "mssecure-trust-bundle/1"
_MIB = 1024 * 1024
# An address with one RSA certificate takes ~2.5 KB of bundle (measured): 100,000 addresses fit in 256 MiB. A
# national directory (~1-2 GiB) needs ``trust import --max-size`` and the memory to match (the bundle, its content
# and the parsed JSON at once).
DEFAULT_MAX_BUNDLE = 256 * _MIB
# The bundle is signed by the relay's certificate (serverAuth/clientAuth), not an S/MIME one.
_BUNDLE_POLICY = VerificationPolicy(require_email_protection=False)


@dataclass(frozen=True)
class Bundle:
    """A verified trust bundle."""

    domain: str
    domains: tuple[str, ...]
    hostname: str
    relay: str
    ca: x509.Certificate
    crl: bytes | None
    dkim_selector: str
    dkim_record: str
    created_at: datetime
    entries: tuple[tuple[EntryData, tuple[x509.Certificate, ...]], ...]

    @property
    def ca_fingerprint(self) -> str:
        return fingerprint(self.ca)


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def export_bundle(session: Session, config: Config, material: OperatorMaterial, *, now: datetime) -> bytes:
    """Our trust bundle (DER CMS SignedData): local, listed entries with their valid S/MIME certificates."""
    domains = sorted(config.operator.domains)
    entries = []
    query = (
        sa.select(Entry)
        .where(Entry.domain.in_(domains), Entry.unlisted.is_(False))
        .order_by(Entry.address)
        .execution_options(yield_per=1000)
    )
    for entry in session.scalars(query):
        certificates = session.scalars(
            sa.select(CertificateRecord.certificate_pem).where(
                CertificateRecord.address == entry.address,
                CertificateRecord.status == "valid",
                CertificateRecord.not_after > now,
            )
        ).all()
        values = entry.to_data().to_dict()
        values["kind"], values["status"] = entry.kind, entry.status
        del values["unlisted"]
        entries.append({**values, "certificates": list(certificates)})
    record = material.dkim_record_path.read_text().strip()
    payload = {
        "format": BUNDLE_FORMAT,
        "created_at": now.isoformat(),
        "operator": {
            "domain": config.operator.domain,
            "domains": domains,
            "hostname": config.operator.hostname,
            "relay": config.relay_endpoint,
        },
        "ca_certificates": [_pem(material.ca_certificate())],
        "crl": base64.b64encode(material.crl_path.read_bytes()).decode(),
        "dkim": {"selector": config.dkim.selector, "record": record.split(" IN TXT ", 1)[1].strip('"')},
        "directory": entries,
    }
    content = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    tls = material.tls()
    return (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(tls.certificate, tls.key, hashes.SHA256())
        .add_certificate(material.ca_certificate())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )


def _normal_fingerprint(value: str) -> str:
    return value.replace(":", "").replace(" ", "").upper()


def read_bundle(
    data: bytes, *, confirmed_fingerprint: str, now: datetime, max_size: int = DEFAULT_MAX_BUNDLE
) -> Bundle:
    """Verify, then parse a trust bundle; every problem is a TrustError naming it. The JSON payload is only parsed
    once the signature verifies against the SignedData's CA certificate that has the confirmed fingerprint."""
    if len(data) > max_size:
        raise TrustError(
            f"the trust bundle is larger than the limit of {_size(max_size)} "
            "(`mssecure trust import --max-size` raises it)"
        )
    try:
        presented = embedded_certificates(data)
    except MssecureError:
        raise TrustError("not a trust bundle (expected a CMS SignedData made by `mssecure trust export`)") from None
    authorities = [c for c in presented if _is_ca(c)]
    wanted = _normal_fingerprint(confirmed_fingerprint)
    ca = next((c for c in authorities if _normal_fingerprint(fingerprint(c)) == wanted), None)
    if ca is None:
        found = ", ".join(fingerprint(c) for c in authorities) or "none (it carries no CA certificate)"
        raise TrustError(
            f"the bundle's CA fingerprint {found} is not the one confirmed ({confirmed_fingerprint}): refusing it"
        )
    try:
        results = verify_signed_data(data, None, anchors=[ca], at=now, policy=_BUNDLE_POLICY)
    except MssecureError:
        raise TrustError("not a trust bundle (expected a CMS SignedData made by `mssecure trust export`)") from None
    signers = [r.certificate for r in results if r.valid and r.certificate is not None]
    if not signers:
        reasons = "; ".join(reason for r in results for reason in r.reasons) or "no signer"
        raise TrustError(f"the trust bundle's signature does not verify: {reasons}")
    # From here on the content is the peer's word (signed under the CA the operator confirmed).
    try:
        payload = json.loads(encapsulated_content(data))
    except (ValueError, RecursionError):
        raise TrustError("the trust bundle's content is not JSON") from None
    if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
        raise TrustError(f"not a trust bundle of format {BUNDLE_FORMAT}")
    try:
        named = x509.load_pem_x509_certificate(payload["ca_certificates"][0].encode())
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        raise TrustError("the trust bundle carries no readable CA certificate") from None
    if named != ca:
        raise TrustError("the trust bundle's content names another CA than the one its signature chains to")
    crl = _bundle_crl(payload, ca)
    try:
        bundle = _parse(payload, ca, crl)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise TrustError(f"malformed trust bundle: {type(exc).__name__}: {exc}") from None
    # Only the peer's relay may speak for the peer: not any certificate its CA issued (a professional's, say).
    problems = [
        relay_certificate_problems(signer, bundle.hostname, [ca], role="server", at=now, crls=[crl],
                                   intermediates=presented)
        for signer in signers
    ]  # fmt: skip
    if all(problems):
        raise TrustError(
            f"the trust bundle is not signed by the relay certificate of {bundle.hostname}: {'; '.join(problems[0])}"
        )
    return bundle


def _size(count: int) -> str:
    return f"{count / _MIB:.0f} MiB" if count >= _MIB else f"{count} bytes"


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return False


def _bundle_crl(payload: dict[str, Any], ca: x509.Certificate) -> x509.CertificateRevocationList:
    """The bundle's CRL, which must be there, be a CRL, and be signed by the bundle's CA."""
    try:
        crl = x509.load_der_x509_crl(base64.b64decode(payload["crl"], validate=True))
    except (KeyError, TypeError, ValueError):
        raise TrustError("the trust bundle carries no readable CRL") from None
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        raise TrustError("the trust bundle's CRL is not signed by its CA")
    return crl


# --- peer relays' certificates -----------------------------------------------------------------------------------

RelayRole = Literal["server", "client"]
_ROLE_USAGE = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
_ROLE_USAGE_NAME = {"server": "serverAuth", "client": "clientAuth"}


def relay_certificate_problems(
    certificate: x509.Certificate,
    hostname: str,
    anchors: Sequence[x509.Certificate],
    *,
    role: RelayRole,
    at: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
    intermediates: Sequence[x509.Certificate] = (),
) -> tuple[str, ...]:
    """Why ``certificate`` is not the TLS certificate of the peer relay ``hostname`` (empty: it is).

    ``anchors`` are the peer's CA (from its trust bundle), ``crls`` its CRL; ``role`` is what the certificate is
    presented for: ``server`` when we connect to the peer (EKU serverAuth, RFC 5280 §4.2.1.12), ``client`` when the
    peer connects to us with mutual TLS (clientAuth). It must be an end-entity certificate whose subjectAltName has
    the dNSName ``hostname`` exactly (no wildcard; RFC 6125 §6.4) and that chains to an anchor, valid at ``at``, not
    revoked. An S/MIME certificate is never a relay's, even one with clientAuth (ours) or a dNSName (a Direct
    domain-bound one): emailProtection in the EKU or an rfc822Name in the SAN refuses it."""
    wanted = hostname.strip().rstrip(".").lower()
    problems: list[str] = []
    try:
        extensions = certificate.extensions
        constraints = _extension(extensions, x509.BasicConstraints)
        usages = _extension(extensions, x509.ExtendedKeyUsage)
        names = _extension(extensions, x509.SubjectAlternativeName)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return ("certificate extensions are malformed",)
    if constraints is not None and constraints.ca:
        problems.append("a CA certificate is not a relay certificate")
    if usages is None:
        problems.append(f"no extended key usage (a relay certificate needs {_ROLE_USAGE_NAME[role]})")
    else:
        if _ROLE_USAGE[role] not in usages:
            problems.append(f"extended key usage does not include {_ROLE_USAGE_NAME[role]}")
        if ExtendedKeyUsageOID.EMAIL_PROTECTION in usages:
            problems.append("extended key usage includes emailProtection: an S/MIME certificate is not a relay's")
    dns_names = [] if names is None else [n.lower() for n in names.get_values_for_type(x509.DNSName)]
    if wanted not in dns_names:
        problems.append(f"subjectAltName has no dNSName {wanted}")
    if names is not None and names.get_values_for_type(x509.RFC822Name):
        problems.append("subjectAltName has an rfc822Name: an S/MIME certificate is not a relay's")
    _, reasons = validate_certificate(
        certificate, anchors=anchors, at=at, crls=crls, intermediates=intermediates, policy=_BUNDLE_POLICY
    )
    problems.extend(reasons)
    return tuple(problems)


def check_relay_certificate(
    certificate: x509.Certificate,
    hostname: str,
    anchors: Sequence[x509.Certificate],
    *,
    role: RelayRole,
    at: datetime,
    crls: Sequence[x509.CertificateRevocationList] = (),
    intermediates: Sequence[x509.Certificate] = (),
) -> None:
    """``relay_certificate_problems``, raising a TrustError that names every problem (for the log, never the
    peer)."""
    problems = relay_certificate_problems(
        certificate, hostname, anchors, role=role, at=at, crls=crls, intermediates=intermediates
    )
    if problems:
        raise TrustError(f"not the relay certificate of {hostname}: {'; '.join(problems)}")


_E = TypeVar("_E", bound=x509.ExtensionType)


def _extension(extensions: x509.Extensions, kind: type[_E]) -> _E | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


_RELAY = re.compile(r"([a-z0-9.-]+):(\d{1,5})")


def _check_relay_host(host: str) -> None:
    """A relay endpoint's host: a DNS name, or an IPv4 address (a private network, a test on loopback). The TLS
    certificate is checked against the bundle's host name either way, never against this address."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        validate_domain(host)


def _parse(payload: dict[str, Any], ca: x509.Certificate, crl: x509.CertificateRevocationList) -> Bundle:
    operator = payload["operator"]
    domains = tuple(validate_domain(d) for d in operator["domains"])
    domain = validate_domain(operator["domain"])
    if domain not in domains:
        raise ValueError("the main domain is not among the domains")
    entries = []
    for item in payload["directory"]:
        values = {k: v for k, v in item.items() if k in DATA_FIELDS}
        try:
            data = EntryData.from_values(values)
        except InvalidEntry as exc:
            raise ValueError(f"entry {item.get('address')!r}: {exc}") from None
        if data.domain not in domains:
            raise ValueError(f"entry {data.address} is outside the operator's domains")
        certificates = tuple(x509.load_pem_x509_certificate(pem.encode()) for pem in item.get("certificates", []))
        for certificate in certificates:
            if certificate.issuer != ca.subject:
                raise ValueError(f"a certificate of {data.address} is not issued by the bundle's CA")
            certificate.verify_directly_issued_by(ca)
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            if data.address not in [a.lower() for a in san.get_values_for_type(x509.RFC822Name)]:
                raise ValueError(f"a certificate listed for {data.address} is not that address's")
        entries.append((data, certificates))
    dkim = payload["dkim"]
    relay = _RELAY.fullmatch(str(operator["relay"]).lower())
    if relay is None or not 0 < int(relay.group(2)) < 65536:
        raise ValueError("the relay endpoint is not host:port")
    _check_relay_host(relay.group(1))
    selector, record = str(dkim["selector"]), str(dkim["record"])
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", selector):
        raise ValueError("the DKIM selector is not a DNS label")
    if not re.fullmatch(r"v=DKIM1; k=rsa; p=[A-Za-z0-9+/=]{100,2000}", record):
        raise ValueError("the DKIM record is not an RSA DKIM1 record")
    return Bundle(
        domain=domain,
        domains=domains,
        hostname=validate_domain(operator["hostname"]),
        relay=relay.group(0),
        ca=ca,
        crl=crl.public_bytes(serialization.Encoding.DER),
        dkim_selector=selector,
        dkim_record=record,
        created_at=datetime.fromisoformat(payload["created_at"]),
        entries=tuple(entries),
    )


@dataclass(frozen=True)
class ImportOutcome:
    operator: TrustedOperator
    directory: ImportReport
    revoked: list[str]


class TrustSpace:
    """The trusted peer operators, in one session."""

    def __init__(
        self,
        session: Session,
        config: Config,
        *,
        actor: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.session = session
        self.config = config
        self.actor = actor
        self.clock = clock

    def operators(self) -> list[TrustedOperator]:
        return list(self.session.scalars(sa.select(TrustedOperator).order_by(TrustedOperator.domain)))

    def get(self, domain: str) -> TrustedOperator:
        wanted = domain.strip().lower()
        for operator in self.operators():
            if wanted in operator.domains:
                return operator
        raise TrustError(f"{domain} is not in the trust space")

    def anchor_for(self, address: str) -> x509.Certificate | None:
        """The CA that may certify ``address``: the CA of the peer serving its domain (None if none does).
        A peer's CA is never an anchor for another domain: each operator speaks only for its own addresses."""
        domain = address.rpartition("@")[2].lower()
        for operator in self.operators():
            if domain in operator.domains:
                return x509.load_pem_x509_certificate(operator.ca_pem.encode())
        return None

    def anchors(self, our_ca: x509.Certificate) -> Callable[[str | None], list[x509.Certificate]]:
        """The trust anchors for a signer address, as ``smime.verify`` takes them: our CA for our domains, a peer's
        CA for that peer's domains, nothing for anyone else."""
        ours = self.config.operator.domains

        def anchors_for(address: str | None) -> list[x509.Certificate]:
            if address is None:
                return []
            if address.rpartition("@")[2] in ours:
                return [our_ca]
            peer = self.anchor_for(address)
            return [peer] if peer is not None else []

        return anchors_for

    def crls(self) -> list[x509.CertificateRevocationList]:
        """The peers' CRLs, as their last bundles carried them."""
        crls = []
        for operator in self.operators():
            try:
                crls.append(x509.load_der_x509_crl(operator.crl_der or b""))
            except ValueError:
                continue  # checked at import; a damaged row must not stop every verification
        return crls

    def dkim_keys(self) -> dict[str, str]:
        """``<selector>._domainkey.<domain>`` → TXT value for every domain of every peer."""
        return {f"{o.dkim_selector}._domainkey.{d}": o.dkim_record for o in self.operators() for d in o.domains}

    def trusted_domains(self) -> frozenset[str]:
        return frozenset(d for operator in self.operators() for d in operator.domains)

    def import_bundle(self, bundle: Bundle, *, replace_ca: bool = False) -> ImportOutcome:
        ours = self.config.operator.domains & set(bundle.domains)
        if ours:
            raise TrustError(f"the bundle claims our own domain(s) {', '.join(sorted(ours))}: refusing it")
        operator = self.session.scalars(
            sa.select(TrustedOperator).where(TrustedOperator.domain == bundle.domain)
        ).one_or_none()
        for other in self.operators():
            clash = set(other.domains) & set(bundle.domains)
            if other is not operator and clash:
                raise TrustError(f"{', '.join(sorted(clash))} already belong to trusted operator {other.domain}")
        if operator is not None:
            if operator.ca_fingerprint != bundle.ca_fingerprint and not replace_ca:
                raise TrustError(
                    f"{bundle.domain} is trusted with another CA ({operator.ca_fingerprint}): if the peer really "
                    "changed its CA, confirm it and import again with --replace-ca"
                )
            if bundle.created_at <= operator.bundle_created_at:
                raise TrustError(
                    f"this bundle of {bundle.domain} ({bundle.created_at:%Y-%m-%d %H:%M:%S}) is not newer than the "
                    f"one imported ({operator.bundle_created_at:%Y-%m-%d %H:%M:%S}): refusing a replay"
                )
        now = self.clock()
        if operator is None:
            operator = TrustedOperator(domain=bundle.domain)
            self.session.add(operator)
        operator.domains = list(bundle.domains)
        operator.hostname, operator.relay = bundle.hostname, bundle.relay
        operator.ca_pem, operator.ca_fingerprint = _pem(bundle.ca), bundle.ca_fingerprint
        operator.crl_der, operator.dkim_selector, operator.dkim_record = (
            bundle.crl,
            bundle.dkim_selector,
            bundle.dkim_record,
        )
        operator.bundle_created_at, operator.imported_at, operator.entries = bundle.created_at, now, len(bundle.entries)
        self.session.flush()
        records = [Record(line, data, sets_status=True) for line, (data, _) in enumerate(bundle.entries, 1)]
        report = import_records(
            self.session.connection(),
            records,
            actor=self.actor,
            source=f"trust import {bundle.domain}",
            clock=self.clock,
        )
        self._replace_certificates(bundle, now)
        listed = {data.address for data, _ in bundle.entries}
        revoked = self._revoke_missing(bundle.domains, listed, reason=f"gone from {bundle.domain}'s trust bundle")
        return ImportOutcome(operator, report, revoked)

    def _replace_certificates(self, bundle: Bundle, now: datetime) -> None:
        self._drop_peer_certificates(bundle.domains)
        for data, certificates in bundle.entries:
            for certificate in certificates:
                self.session.add(
                    CertificateRecord(
                        serial=serial_hex(certificate),
                        issuer=certificate.issuer.rfc4514_string(),
                        address=data.address,
                        purpose="smime",
                        subject=certificate.subject.rfc4514_string(),
                        key_type=type(certificate.public_key()).__name__.removesuffix("PublicKey").lower(),
                        fingerprint=fingerprint(certificate),
                        not_before=certificate.not_valid_before_utc,
                        not_after=certificate.not_valid_after_utc,
                        status="valid",
                        certificate_pem=_pem(certificate),
                        private_key_pem=None,
                        created_at=now,
                    )
                )
        try:
            self.session.flush()
        except sa.exc.IntegrityError:
            # A certificate is unique per (issuer, serial): listed twice, or the issuer name and serial of one
            # already stored (ours, or another peer's whose CA has the same name).
            raise TrustError(
                f"the trust bundle of {bundle.domain} lists a certificate twice, or one whose issuer and serial "
                "number are those of a certificate already stored: refusing it"
            ) from None

    def _drop_peer_certificates(self, domains: tuple[str, ...]) -> None:
        """Forget the certificates we hold for addresses of these (peer) domains — never one with a key here."""
        addresses = sa.select(Entry.address).where(Entry.domain.in_(domains))
        self.session.execute(
            sa.delete(CertificateRecord).where(
                CertificateRecord.private_key_pem.is_(None), CertificateRecord.address.in_(addresses)
            )
        )

    def _revoke_missing(self, domains: tuple[str, ...], listed: set[str], *, reason: str) -> list[str]:
        book = Directory(self.session, local_domains=self.config.operator.domains, actor=self.actor,
                         source="trust import", clock=self.clock)  # fmt: skip
        query = sa.select(Entry.address).where(Entry.domain.in_(domains), Entry.status != Status.REVOKED.value)
        gone = [address for address in self.session.scalars(query) if address not in listed]
        for address in gone:
            book.revoke(address, reason=reason)
        return gone

    def remove(self, domain: str) -> tuple[TrustedOperator, list[str]]:
        """Take an operator out of the trust space: its entries are revoked here, its certificates dropped."""
        operator = self.get(domain)
        revoked = self._revoke_missing(tuple(operator.domains), set(), reason=f"{operator.domain} left the trust space")
        self._drop_peer_certificates(tuple(operator.domains))
        self.session.delete(operator)
        self.session.flush()
        return operator, revoked
