"""What the relay does to a message between the SMTP handlers and the queue: synchronous, called off the event
loop, with the database and the operator's keys. Every refusal is a ``Refused`` (reply + precise reason).

- **submission** (a professional's mail client): sign with the sender's certificate (or verify what the client
  signed itself: end-to-end mode), then per destination — local recipients get the signed message with an
  ``Authentication-Results`` header; each peer operator gets one message encrypted to its recipients'
  certificates and DKIM-signed by us.
- **inbound** (a peer operator): decrypt with a recipient's key, verify the S/MIME signature (the signer must be a
  certified address of that peer) and DKIM, and queue the decrypted signed message, with the verified identity in
  ``Authentication-Results``, for the local recipients (entries flagged end-to-end get the encrypted form).
  Acknowledgments: a ``processed`` MDN goes back when asked for; a notice about a message we sent is matched to
  its tracking row, so the sender gets exactly one final notice.
- **notifications**: DSNs (from ``mailer-daemon@<domain>``) and MDNs (on behalf of the recipient, the Direct
  Project way), signed, and encrypted when they leave for a peer.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import make_msgid

import sqlalchemy as sa
from cryptography import x509
from sqlalchemy.orm import Session, sessionmaker

from mssecure.config import Config
from mssecure.crypto import smime
from mssecure.crypto.authority import CertificateService, OperatorMaterial
from mssecure.crypto.dkim import DkimResult, dkim_sign, dkim_verify
from mssecure.crypto.pki import fingerprint
from mssecure.crypto.trust import TrustSpace
from mssecure.db import utcnow
from mssecure.directory import Directory
from mssecure.directory.models import Entry
from mssecure.directory.records import EntryData, Kind
from mssecure.errors import CertificateError, EntryExists, Refused, SignatureError, TrustError
from mssecure.smtp import mime, notifications, replies
from mssecure.smtp.events import Event, digest
from mssecure.smtp.models import Delegation, Mailbox, PrescriptionDelivery, Tracking
from mssecure.smtp.policy import EntryView, check_header_from, check_header_size
from mssecure.smtp.queue import Claim, Outgoing
from mssecure.xdm import (
    CODECDA_HEADER,
    INS_HEADER,
    PRESCRIPTION_ID_HEADER,
    XdmError,
    XdmPackage,
    find_xdm_parts,
    validate_package,
)

__all__ = ["Envelope", "Processor", "notice_sender"]

log = logging.getLogger("mssecure.relay")

MAILER_DAEMON = "mailer-daemon"
DUPLICATE_HEADER = "X-MSSecure-Prescription-Duplicate"
# The MSSanté fields pharmacy software reads: shown outside the signature as the signed message has them (when it
# has them: a client that signs only the body leaves them outside, where they stay as it wrote them).
_MSS_FIELDS = (CODECDA_HEADER, INS_HEADER, PRESCRIPTION_ID_HEADER)
_REPLACED_FIELDS = {"authentication-results", "return-path", "dkim-signature", DUPLICATE_HEADER.lower()}
_XDM_DIRECTORY = re.compile(rb"(?i)ihe_xdm/")  # a zip's entry names are stored uncompressed


def xdm_packages(message: bytes) -> list[XdmPackage]:
    """The valid XDM packages a message carries; ``Refused`` (with the reason) when one is not valid. Messages that
    cannot carry one (no zip, no IHE_XDM name anywhere) are not parsed."""
    if b"UEsDB" not in message and b"ihe_xdm" not in message.lower():
        return []  # neither the base64 of a zip's first bytes nor the package's name
    packages = []
    for part in find_xdm_parts(message):
        if part.found_by == "content type" and not _XDM_DIRECTORY.search(part.data):
            continue  # an ordinary zip attachment, not a package
        try:
            packages.append(validate_package(part.data))
        except XdmError as error:
            reason = error.reason.encode("ascii", "replace").decode()[:200]
            raise Refused(replies.XDM_INVALID.with_text(f"invalid XDM package: {reason}"),
                          f"invalid XDM package ({part.found_by}): {error.reason}") from None  # fmt: skip
    return packages


def prescription_id(message: bytes, packages: Sequence[XdmPackage]) -> str | None:
    """The one prescription identifier of a message (its XDM packages and its X-MSS-Prescription-Id header), or
    None; ``Refused`` when they name different ones (a pharmacy could not tell which one it holds)."""
    found = {p.prescription_id for p in packages if p.prescription_id}
    found.update(v.strip() for v in mime.header_value(message, PRESCRIPTION_ID_HEADER) if v.strip())
    if len(found) > 1:
        raise Refused(replies.PRESCRIPTION_CONFLICT, f"prescription identifiers {sorted(found)}")
    return found.pop() if found else None


def notice_sender(domain: str) -> str:
    return f"{MAILER_DAEMON}@{domain}"


@dataclass(frozen=True)
class Envelope:
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    actor: str  # the authenticated address, or the peer operator's domain
    trail: list[Event] = field(default_factory=list, compare=False)  # what processing did (signed, verified…)


class DirectoryView:
    """The policy's view of the directory and the trust space, over one session."""

    def __init__(self, session: Session, config: Config) -> None:
        self.session = session
        self.config = config
        self.local_domains = config.operator.domains
        self._trusted: frozenset[str] | None = None

    def entry(self, address: str) -> EntryView | None:
        row = self.session.execute(
            sa.select(Entry.address, Entry.kind, Entry.status).where(Entry.address == address.lower())
        ).one_or_none()
        if row is None:
            return None
        return EntryView(row.address, row.kind, row.status, row.address.rpartition("@")[2] in self.local_domains)

    def is_delegate(self, organization: str, person: str) -> bool:
        found = self.session.scalar(
            sa.select(Delegation.id).where(Delegation.organization == organization, Delegation.delegate == person)
        )
        return found is not None

    def trusted_domains(self) -> frozenset[str]:
        if self._trusted is None:
            self._trusted = TrustSpace(self.session, self.config, actor="relay").trusted_domains()
        return self._trusted


def _quoted(value: str) -> str:
    cleaned = " ".join(value.replace("\\", "\\\\").replace('"', '\\"').split())
    return f'"{cleaned}"'


class Processor:
    def __init__(
        self,
        config: Config,
        sessions: sessionmaker[Session],
        material: OperatorMaterial,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.material = material
        self.clock = clock
        self.hostname = config.operator.hostname
        self._ca = material.ca_certificate()
        self._dkim_key = material.keystore.load("dkim")

    # Identities and credentials

    def ensure_notice_identity(self) -> None:
        """The ``mailer-daemon@<domain>`` applicative entry and certificate that sign our DSNs."""
        address = notice_sender(self.config.operator.domain)
        with self.sessions.begin() as session:
            book = Directory(session, local_domains=self.config.operator.domains, actor="relay", source="relay")
            if book.find(address) is None:
                with contextlib.suppress(EntryExists):
                    book.add(EntryData(address=address, kind=Kind.APPLICATIVE, organization="mssecure relay"))
            service = CertificateService(session, self.material, clock=self.clock)
            try:
                service.current(address)
            except CertificateError:
                service.issue(address)

    def password_hash(self, login: str) -> str | None:
        """The stored hash of an active local entry's mailbox (None for anyone else)."""
        with self.sessions() as session:
            row = session.execute(
                sa.select(Mailbox.password_hash)
                .join(Entry, Entry.address == Mailbox.address)
                .where(Mailbox.address == login.lower(), Entry.status == "active")
            ).one_or_none()
        return row.password_hash if row is not None else None

    def client_certificate_owner(self, der: bytes) -> str | None:
        """The local address a TLS client certificate was issued to by our CA (valid, not on hold), else None."""
        try:
            certificate = x509.load_der_x509_certificate(der)
        except ValueError:
            return None
        with self.sessions() as session:
            from mssecure.crypto.models import CertificateRecord

            record = session.scalars(
                sa.select(CertificateRecord).where(CertificateRecord.fingerprint == fingerprint(certificate))
            ).first()
        now = self.clock()
        if record is None or record.private_key_pem is None or record.status != "valid":
            return None
        if not record.not_before <= now <= record.not_after:
            return None
        return record.address

    # Submission

    def submission(self, envelope: Envelope) -> list[Outgoing]:
        data = envelope.data
        check_header_size(data, self.config.smtp.max_header_size)
        check_header_from(mime.header_from(data), envelope.sender)
        if not mime.header_value(data, "message-id"):
            data = mime.prepend(data, f"Message-ID: {make_msgid(domain=self.hostname)}")
        if not mime.header_value(data, "date"):
            from email.utils import format_datetime

            data = mime.prepend(data, f"Date: {format_datetime(self.clock())}")
        message_id = mime.header_value(data, "message-id")[0]
        request = notifications.notification_request(data)
        if not smime.is_encrypted(data):
            # Refused at once, so the professional's client says why (rather than a DSN from the pharmacy's side).
            prescription_id(data, xdm_packages(data))
        with self.sessions.begin() as session:
            certificates = CertificateService(session, self.material, clock=self.clock)
            if smime.is_encrypted(data):
                signed = data  # end-to-end: the client encrypted; nothing to verify here
                envelope.trail.append(
                    Event("encrypted", "ok", actor=envelope.actor, message_id=message_id, sender=envelope.sender,
                          recipients=envelope.recipients, sha256=digest(data), reason="encrypted by the client")
                )  # fmt: skip
            elif smime.is_signed(data):
                verification = self._verify(session, data)
                if not verification.valid:
                    raise Refused(replies.VERIFICATION_FAILED, "; ".join(verification.all_reasons()))
                signer = verification.valid_signer
                if signer is None or (signer.address or "").lower() != envelope.sender.lower():
                    # The relay vouches for the sender: a colleague's signed message is not the sender's to send.
                    who = signer.address if signer is not None else "nobody"
                    raise Refused(replies.VERIFICATION_FAILED, f"signed by {who}, not by the sender {envelope.sender}")
                signed = data
                envelope.trail.append(
                    Event("verified", "ok", actor=envelope.actor, message_id=message_id, sender=envelope.sender,
                          sha256=digest(data), reason=f"signed by the client as {signer.address}; signature valid")
                )  # fmt: skip
            else:
                try:
                    record = certificates.current(envelope.sender)
                except CertificateError as exc:
                    raise Refused(replies.SIGNING_FAILED, str(exc)) from None
                certificate = x509.load_pem_x509_certificate(record.certificate_pem.encode())
                signed = smime.sign(data, certificate, certificates.key_of(record), chain=[self._ca])
                envelope.trail.append(
                    Event("signed", "ok", actor="relay", message_id=message_id, sender=envelope.sender,
                          sha256=digest(signed), reason=f"S/MIME signature of {envelope.sender}, certificate "
                          f"serial {record.serial}")
                )  # fmt: skip
            outgoing = self._route(session, envelope, signed, certificates, message_id, request)
            if request.disposition_to:
                self._track(session, message_id, envelope.recipients, envelope.sender, request.final_delivery)
        return outgoing

    def _route(
        self,
        session: Session,
        envelope: Envelope,
        signed: bytes,
        certificates: CertificateService,
        message_id: str,
        request: notifications.NotificationRequest,
    ) -> list[Outgoing]:
        local = [r for r in envelope.recipients if r.rpartition("@")[2] in self.config.operator.domains]
        remote: dict[str, list[str]] = {}
        space = TrustSpace(session, self.config, actor="relay")
        for recipient in envelope.recipients:
            if recipient in local:
                continue
            try:
                peer = space.get(recipient.rpartition("@")[2])
            except TrustError:
                raise Refused(replies.RECIPIENT_OUTSIDE_TRUST_SPACE, f"{recipient} left the trust space") from None
            remote.setdefault(peer.domain, []).append(recipient)
        outgoing: list[Outgoing] = []
        if local:
            outgoing.extend(
                self._for_local(session, signed, tuple(local), origin="submission", sender=envelope.sender,
                                actor=envelope.actor, peer_domains=None, dkim=None, trail=envelope.trail)
            )  # fmt: skip
        for domain, recipients in remote.items():
            if smime.is_encrypted(signed):
                wire = signed
            else:
                try:
                    targets = [certificates.for_encryption(r) for r in recipients]
                    wire = smime.encrypt(signed, targets)
                except (CertificateError, SignatureError) as exc:
                    raise Refused(replies.RECIPIENT_NO_CERTIFICATE, str(exc)) from None
            wire = self._dkim(wire, envelope.sender)
            wire_sha256 = digest(wire)  # for the event and the queue row alike
            envelope.trail.append(
                Event("encrypted", "ok", actor="relay", message_id=message_id, sender=envelope.sender,
                      recipients=tuple(recipients), sha256=wire_sha256,
                      reason=f"for {domain}: S/MIME encrypted to each recipient's certificate, DKIM signed")
            )  # fmt: skip
            outgoing.append(
                Outgoing(destination=domain, recipients=tuple(recipients), data=wire, origin="submission",
                         kind="message", sender=envelope.sender, actor=envelope.actor, message_id=message_id,
                         disposition_to=request.disposition_to, final_delivery=request.final_delivery,
                         sha256=wire_sha256)
            )  # fmt: skip
        return outgoing

    def _dkim(self, message: bytes, sender: str) -> bytes:
        domain = sender.rpartition("@")[2] or self.config.operator.domain
        if domain not in self.config.operator.domains:
            domain = self.config.operator.domain
        return dkim_sign(message, domain=domain, selector=self.config.dkim.selector, key=self._dkim_key)

    def _track(
        self, session: Session, message_id: str, recipients: Sequence[str], sender: str, final_delivery: bool
    ) -> None:
        now = self.clock()
        message_id = notifications.normalize_message_id(message_id) or message_id
        for recipient in recipients:
            exists = session.scalar(
                sa.select(Tracking.id).where(Tracking.message_id == message_id, Tracking.recipient == recipient)
            )
            if exists is None:
                session.add(
                    Tracking(message_id=message_id, recipient=recipient, sender=sender, final_delivery=final_delivery,
                             outcome=None, created_at=now, updated_at=now)
                )  # fmt: skip

    # Inbound

    def inbound(self, envelope: Envelope, peer_domains: frozenset[str]) -> list[Outgoing]:
        data = envelope.data
        check_header_size(data, self.config.smtp.max_header_size)
        with self.sessions.begin() as session:
            space = TrustSpace(session, self.config, actor="relay")
            dkim = dkim_verify(data, keys=space.dkim_keys())
            return self._for_local(session, data, envelope.recipients, origin="inbound", sender=envelope.sender,
                                   actor=envelope.actor, peer_domains=peer_domains, dkim=dkim,
                                   trail=envelope.trail)  # fmt: skip

    def _for_local(
        self,
        session: Session,
        message: bytes,
        recipients: tuple[str, ...],
        *,
        origin: str,
        sender: str,
        actor: str,
        peer_domains: frozenset[str] | None,
        dkim: DkimResult | None,
        trail: list[Event],
    ) -> list[Outgoing]:
        """Decrypt (when encrypted) and verify a message for local recipients; the queue items that deliver it.
        What was decided is added to ``trail`` (verified, notices received, MDNs sent)."""
        certificates = CertificateService(session, self.material, clock=self.clock)
        end_to_end = set(
            session.scalars(
                sa.select(Mailbox.address).where(Mailbox.address.in_(recipients), Mailbox.end_to_end.is_(True))
            )
        )
        if smime.is_encrypted(message):
            signed = self._decrypt(certificates, message, recipients)
        elif origin == "inbound" and self.config.delivery.require_encrypted_inbound:
            raise Refused(replies.NOT_ENCRYPTED, "inbound message is not encrypted")
        else:
            signed = message
        if not smime.is_signed(signed):
            raise Refused(replies.NOT_SIGNED, "message is not S/MIME signed")
        verification = self._verify(session, signed)
        if not verification.valid:
            raise Refused(replies.VERIFICATION_FAILED, "; ".join(verification.all_reasons()))
        signer = verification.valid_signer
        if signer is None or signer.address is None:
            raise Refused(replies.VERIFICATION_FAILED, "no valid signer with an address")
        signer_domain = signer.address.rpartition("@")[2]
        if peer_domains is not None and signer_domain not in peer_domains:
            raise Refused(replies.VERIFICATION_FAILED, f"signer {signer.address} is not an address of the peer")
        if signer.address.lower() != sender.lower():
            raise Refused(replies.VERIFICATION_FAILED, f"signer {signer.address} is not the envelope sender {sender}")
        entry = session.scalars(sa.select(Entry).where(Entry.address == signer.address)).one_or_none()
        if entry is None or entry.status != "active":
            state = "not in the directory" if entry is None else entry.status
            raise Refused(replies.VERIFICATION_FAILED, f"signer {signer.address} is {state}")
        inner = verification.inner_message or verification.content
        header = self._authentication_results(signer.address, entry, signer.result.certificate, dkim)
        # Our own verdict replaces any a sender wrote (RFC 8601 §5); the transport DKIM signature does not survive
        # decryption, so it goes too.
        delivered = mime.without_fields(signed, _REPLACED_FIELDS)
        if mime.header_from(delivered) != signer.address.lower():
            # What the reader sees as the sender must be who signed (the unsigned outer header could say anything).
            raise Refused(replies.VERIFICATION_FAILED, f"the From shown is not the signer {signer.address}")
        subjects = mime.header_value(inner, "subject")
        if subjects and not mime.header_value(delivered, "subject"):
            delivered = mime.prepend(delivered, f"Subject: {subjects[0]}")
        signed_fields = [f"{name}: {value}" for name in _MSS_FIELDS for value in mime.header_value(inner, name)]
        if signed_fields:
            delivered = mime.without_fields(delivered, {f.lower() for f in _MSS_FIELDS})
            delivered = mime.prepend(delivered, *signed_fields)
        delivered = mime.prepend(delivered, f"Return-Path: <{sender}>", header)
        ids = mime.header_value(inner, "message-id")
        message_id = ids[0] if ids else None
        request = notifications.notification_request(inner)
        notice = notifications.parse_notice(inner)
        normal = tuple(r for r in recipients if r not in end_to_end)
        packages = xdm_packages(inner)
        prescription = prescription_id(inner, packages)
        flag: tuple[str, ...] = ()
        if prescription is not None:
            duplicate = self._prescription_delivered(session, prescription, recipients, sender, message_id, trail)
            if duplicate is not None:
                flag = (f"{DUPLICATE_HEADER}: {duplicate}",)
                delivered = mime.prepend(delivered, *flag)
        decrypted = "decrypted, " if signed is not message else ""
        dkim_text = ""
        if dkim is not None:
            dkim_text = f"; DKIM pass d={dkim.domain}" if dkim.valid else f"; DKIM fail ({dkim.reason or 'invalid'})"
        trail.append(
            Event("verified", "ok", actor=signer.address.lower(), message_id=message_id, sender=sender,
                  recipients=recipients, sha256=digest(message),
                  reason=f"{decrypted}signature of {signer.address.lower()} valid, active in the directory{dkim_text}")
        )  # fmt: skip
        if notice is not None:
            for part in notice.per_recipient():
                trail.append(
                    Event(f"{notice.kind}.received", part.outcome, actor=signer.address.lower(),
                          message_id=part.original_message_id, sender=sender,
                          recipients=(part.final_recipient,) if part.final_recipient else (),
                          reason=f"{notice.kind} {part.outcome}" + (f" {part.status}" if part.status else "")
                          + (f"; notice {message_id}" if message_id else ""))
                )  # fmt: skip
        if (
            notice is not None
            and origin == "inbound"
            and not self._notice_wanted(session, notice, signer.address.lower())
        ):
            log.info("notice suppressed: %s for %s (%s)", notice.outcome, notice.final_recipient, notice.kind)
            return []
        kind = notice.kind if notice is not None else "message"
        outgoing = []
        if normal:
            outgoing.append(
                Outgoing(destination="local", recipients=normal, data=delivered, origin=origin, kind=kind,
                         sender=sender, actor=actor, message_id=message_id,
                         disposition_to=request.disposition_to if notice is None else None,
                         final_delivery=request.final_delivery)
            )  # fmt: skip
        if end_to_end:
            encrypted = mime.prepend(
                mime.without_fields(message, {"authentication-results", "return-path", DUPLICATE_HEADER.lower()}),
                f"Return-Path: <{sender}>",
                header,
                *flag,
            )
            outgoing.append(
                Outgoing(destination="local", recipients=tuple(sorted(end_to_end)), data=encrypted, origin=origin,
                         kind=kind, sender=sender, actor=actor, message_id=message_id,
                         disposition_to=request.disposition_to if notice is None else None,
                         final_delivery=request.final_delivery)
            )  # fmt: skip
        # RFC 8098 §2.1: an automatic MDN goes only to the Return-Path, never to a third party the sender names.
        if notice is None and request.disposition_to and request.disposition_to == sender.lower() and message_id:
            subject = subjects[0] if subjects else None
            for recipient in recipients:
                notices = self.mdn(session, recipient, request.disposition_to, message_id, "processed", subject=subject)
                outgoing.extend(notices)
                if notices:
                    trail.append(
                        Event("mdn.sent", "processed", actor=recipient, message_id=message_id, sender=recipient,
                              recipients=(recipient,), reason=f"processed MDN to {request.disposition_to}")
                    )  # fmt: skip
        return outgoing

    def _decrypt(self, certificates: CertificateService, message: bytes, recipients: Sequence[str]) -> bytes:
        for recipient in recipients:
            try:
                pairs = certificates.decryption_keys(recipient)
            except CertificateError:
                continue
            for certificate, key in pairs:
                try:
                    return mime.with_entity(message, smime.decrypt(message, certificate, key))
                except SignatureError:
                    continue
        raise Refused(replies.DECRYPTION_FAILED, "no recipient key decrypts the message")

    def _verify(self, session: Session, message: bytes) -> smime.Verification:
        space = TrustSpace(session, self.config, actor="relay")
        try:
            return smime.verify(
                message,
                anchors=space.anchors(self._ca),
                crls=[self.material.crl(), *space.crls()],
                at=self.clock(),
            )
        except SignatureError as exc:
            raise Refused(replies.VERIFICATION_FAILED, str(exc)) from None

    def _prescription_delivered(
        self,
        session: Session,
        prescription: str,
        recipients: Sequence[str],
        sender: str,
        message_id: str | None,
        trail: list[Event],
    ) -> str | None:
        """Index the prescription's delivery to ``recipients``; when it already went to another mailbox, refuse it
        (``delivery.duplicate_prescription = "refuse"``) or return the value of the flag header."""
        now = self.clock()
        earlier = list(
            session.scalars(
                sa.select(PrescriptionDelivery)
                .where(PrescriptionDelivery.prescription_id == prescription)
                .order_by(PrescriptionDelivery.first_seen_at, PrescriptionDelivery.id)
            )
        )
        known = {row.recipient for row in earlier}
        new = [r for r in recipients if r not in known]
        first = earlier[0] if earlier else None
        others = [r for r in recipients if first is None or r != first.recipient]
        duplicate = bool(others) and (first is not None or len(recipients) > 1)
        refuse = duplicate and self.config.delivery.duplicate_prescription == "refuse"
        where = f"first delivered {first.first_seen_at:%Y-%m-%d %H:%M} UTC" if first else "sent to several mailboxes"
        trail.append(
            Event("prescription.duplicate" if duplicate else "prescription.received",
                  "refused" if refuse else ("flagged" if duplicate else "ok"), actor=sender, message_id=message_id,
                  sender=sender, recipients=tuple(recipients),
                  reason=f"prescription {prescription}" + (f"; {where}" if duplicate else ""))
        )  # fmt: skip
        if refuse:
            raise Refused(replies.PRESCRIPTION_DUPLICATE, f"prescription {prescription} already delivered ({where})")
        for recipient in new:
            session.add(PrescriptionDelivery(prescription_id=prescription, recipient=recipient, sender=sender,
                                             message_id=message_id, first_seen_at=now))  # fmt: skip
        return f"{prescription}; {where}" if duplicate else None

    def _authentication_results(
        self, address: str, entry: Entry, certificate: x509.Certificate | None, dkim: DkimResult | None
    ) -> str:
        """RFC 8601 with the S/MIME method of RFC 7281, and the signer's identity as found in the directory."""
        smime_part = f"smime=pass body.smime-identifier={address}"
        if certificate is not None:
            smime_part += f" body.smime-serial={certificate.serial_number:X}"
        identity = {
            "name": entry.to_data().display_name,
            "national-id": entry.national_id,
            "profession": entry.profession_label,
            "specialty": entry.specialty_label,
            "organization": entry.organization,
        }
        for key, value in identity.items():
            if value:
                smime_part += f" policy.mssecure-{key}={_quoted(value)}"
        if dkim is None:
            dkim_part = "dkim=none"
        elif dkim.valid:
            dkim_part = f"dkim=pass header.d={dkim.domain} header.s={dkim.selector}"
        else:
            dkim_part = f"dkim=fail ({_quoted(dkim.reason or 'invalid')[1:-1]})"
        return f"Authentication-Results: {self.hostname};\r\n\t{smime_part};\r\n\t{dkim_part}"

    # Notifications

    def _notice_wanted(self, session: Session, notice: notifications.Notice, signer: str) -> bool:
        """Whether a notice about a message we sent reaches its sender: exactly one final notice per recipient.

        A notice counts for a recipient only when it speaks for it: an MDN signed by that recipient, a DSN signed by
        the mailer-daemon of that recipient's domain. Anything else is delivered as it is, without settling
        anything. A notice reporting several recipients is wanted when it brings news for at least one of them."""
        wanted = False
        for part in notice.per_recipient():
            if not part.original_message_id or not part.final_recipient:
                wanted = True
                continue
            speaker = part.final_recipient
            if part.kind == "dsn":
                speaker = notice_sender(part.final_recipient.rpartition("@")[2])
            if signer != speaker:
                log.warning("notice about %s signed by %s: not taken as its final notice", part.final_recipient, signer)
                wanted = True
                continue
            row = session.scalars(
                sa.select(Tracking).where(
                    Tracking.message_id == part.original_message_id, Tracking.recipient == part.final_recipient
                )
            ).one_or_none()
            if row is None:
                wanted = True  # not a message we track: deliver it as it is
            elif row.outcome is not None:
                continue  # a late duplicate, or a notice after the final one
            elif notifications.is_final(part, final_delivery_requested=row.final_delivery):
                row.outcome, row.updated_at = part.outcome, self.clock()
                wanted = True
            # else "processed" when the sender asked for final delivery: wait for "dispatched" (or a failure)
        return wanted

    def mdn(
        self,
        session: Session,
        recipient: str,
        to: str,
        message_id: str,
        disposition: notifications.Disposition,
        *,
        subject: str | None = None,
    ) -> list[Outgoing]:
        """An MDN from ``recipient`` (signed with its key) to ``to``: queued locally, or encrypted for a peer."""
        body = notifications.build_mdn(
            final_recipient=recipient, to_address=to, original_message_id=message_id, disposition=disposition,
            reporting_ua=self.hostname, now=self.clock(), original_subject=subject,
        )  # fmt: skip
        return self._notification(session, body, signer=recipient, to=to, kind="mdn", envelope_sender=recipient)

    def dsn(self, claim: Claim, failures: Sequence[notifications.FailedRecipient], original: bytes) -> list[Outgoing]:
        """One DSN to the claim's sender for ``failures`` (only ever for our own local senders)."""
        if not claim.sender or claim.kind != "message":
            return []  # never a notice about a notice (RFC 3464 §2: no DSN for a null reverse-path)
        head, _ = mime.split(original)
        body = notifications.build_dsn(
            reporting_mta=self.hostname, from_address=notice_sender(self.config.operator.domain),
            to_address=claim.sender, original_message_id=claim.message_id, original_headers=head,
            recipients=failures, arrival=claim.created_at, now=self.clock(),
        )  # fmt: skip
        with self.sessions.begin() as session:
            tracked_id = notifications.normalize_message_id(claim.message_id)
            for failure in failures:
                if tracked_id:
                    row = session.scalars(
                        sa.select(Tracking).where(
                            Tracking.message_id == tracked_id, Tracking.recipient == failure.address
                        )
                    ).one_or_none()
                    if row is not None and row.outcome is None:
                        row.outcome, row.updated_at = "failed", self.clock()
            return self._notification(
                session, body, signer=notice_sender(self.config.operator.domain), to=claim.sender, kind="dsn",
                envelope_sender="",
            )  # fmt: skip

    def dispatched(self, claim: Claim, recipient: str, original: bytes) -> list[Outgoing]:
        """The ``dispatched`` MDN once a message is in the recipient's mailbox, when final delivery was asked."""
        if not (claim.kind == "message" and claim.disposition_to and claim.final_delivery and claim.message_id):
            return []
        subjects = mime.header_value(original, "subject")
        with self.sessions.begin() as session:
            return self.mdn(session, recipient, claim.disposition_to, claim.message_id, "dispatched",
                            subject=subjects[0] if subjects else None)  # fmt: skip

    def _notification(
        self, session: Session, body: bytes, *, signer: str, to: str, kind: str, envelope_sender: str
    ) -> list[Outgoing]:
        certificates = CertificateService(session, self.material, clock=self.clock)
        try:
            record = certificates.current(signer)
        except CertificateError as exc:
            log.warning("cannot sign a %s as %s: %s", kind, signer, exc)
            return []
        certificate = x509.load_pem_x509_certificate(record.certificate_pem.encode())
        signed = smime.sign(body, certificate, certificates.key_of(record), chain=[self._ca])
        domain = to.rpartition("@")[2]
        message_id = mime.header_value(body, "message-id")[0] if mime.header_value(body, "message-id") else None
        if domain in self.config.operator.domains:
            verification = self._verify(session, signed)
            entry = session.scalars(sa.select(Entry).where(Entry.address == signer)).one()
            certificate_ = verification.valid_signer.result.certificate if verification.valid_signer else None
            header = self._authentication_results(signer, entry, certificate_, None)
            data = mime.prepend(signed, f"Return-Path: <{envelope_sender}>", header)
            return [Outgoing(destination="local", recipients=(to,), data=data, origin="notification", kind=kind,
                             sender=envelope_sender, actor="relay", message_id=message_id)]  # fmt: skip
        space = TrustSpace(session, self.config, actor="relay")
        try:
            peer = space.get(domain)
            wire = smime.encrypt(signed, [certificates.for_encryption(to)])
        except (TrustError, CertificateError, SignatureError) as exc:
            log.warning("cannot send a %s to %s: %s", kind, to, exc)
            return []
        wire = self._dkim(wire, signer)
        return [Outgoing(destination=peer.domain, recipients=(to,), data=wire, origin="notification", kind=kind,
                         sender=envelope_sender, actor="relay", message_id=message_id)]  # fmt: skip
