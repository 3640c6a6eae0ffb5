"""Composing the message ``mssecure send`` submits: a MIME message in canonical form, bytes out.

Pure: no click, no network, no file system, no clock or randomness of its own (``now`` and ``new_uuid`` are passed
in). The CLI reads the files, looks the sender up in the directory and hands over a ``Draft``; ``compose`` returns
the bytes and what an integrator needs to know about them (``Composed``), or raises ``ComposeError`` with one line
saying what to change.

What the message is like (RFC 5322 / RFC 2045-2049, serialised with ``email.policy.SMTP``):

- CRLF line endings everywhere (the relay refuses a bare CR or LF: RFC 5321 §2.3.8), header fields folded at 78,
  non-ASCII header text RFC 2047-encoded, ``Date``, ``Message-ID`` and ``MIME-Version`` always present;
- the text body as UTF-8 ``8bit`` when its lines are short (submitted with ``BODY=8BITMIME``, RFC 6152), else
  quoted-printable or base64 as the email package judges shortest; attachments in base64, so their bytes (and the
  hashes an XDM package declares for them) cross every relay unchanged;
- with XDM (``XdmRequest``): the attachments packaged as ``IHE_XDM.ZIP`` (``application/zip``), the MSSanté
  ``X-MSS-*`` header fields and, unless the caller gave one, the subject convention ``XDM/1.0/DDM+…`` (see
  ``mssecure.xdm.mssante``). The original documents are attached too, after the body and before the zip, so a
  person reads them without unzipping; ``attach_originals=False`` sends the zip alone;
- with an MDN request: ``Disposition-Notification-To`` (RFC 8098 §2.1) naming the sender and, for Direct's
  "timely and reliable" delivery, ``Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,
  true``, which is what ``mssecure.smtp.notifications.notification_request`` reads on the relay.

A zip attachment that is not an XDM package is labelled ``application/octet-stream``: the relay takes every
``application/zip`` part for an XDM package and refuses one that does not validate. Any part that will be taken for
an XDM package (ours, or a ready-made ``IHE_XDM.ZIP`` the caller attaches) is checked here with
``validate_package``, so a package the relay would refuse is refused before connecting.
"""

from __future__ import annotations

import email.policy
import mimetypes
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Literal

from mssecure.directory.identifiers import check_address
from mssecure.errors import InvalidEntry, MssecureError
from mssecure.smtp.notifications import FINAL_DELIVERY_OPTION
from mssecure.xdm import (
    PACKAGE_FILE_NAME,
    PRESCRIPTION_ID_HEADER,
    Author,
    Document,
    Patient,
    XdmError,
    build_package,
    check_prescription_id,
    find_xdm_parts,
    mss_headers,
    validate_package,
    xdm_subject,
)

__all__ = [
    "DEFAULT_DOCUMENT_LABEL",
    "DEFAULT_PRESCRIPTION_LABEL",
    "Attachment",
    "ComposeError",
    "Composed",
    "Draft",
    "MessageTooLarge",
    "XdmRequest",
    "compose",
    "guess_mime_type",
    "split_patient_name",
]

DEFAULT_PRESCRIPTION_LABEL = "Ordonnance"  # the XDM label when a prescription identifier is given
DEFAULT_DOCUMENT_LABEL = "Document"  # otherwise
_SMTP = email.policy.SMTP  # CRLF, 8bit allowed in bodies, headers RFC 2047-encoded (utf8=False)
_ZIP_MAGIC = b"PK\x03\x04"
# Content sniffing first (a file's name can lie, its first bytes rarely do), then the name.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (_ZIP_MAGIC, "application/zip"),
)
# The standard library's built-in table only (no /etc/mime.types): the same answer on every machine.
_TYPES = mimetypes.MimeTypes(filenames=())
_MIME_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
_FILE_NAME_FORBIDDEN = re.compile(r'[/\\\x00-\x1f\x7f"]')


class ComposeError(MssecureError):
    """The message cannot be composed from what was given (the message says which input and why)."""


class MessageTooLarge(ComposeError):
    """The composed message is larger than the relay accepts (``smtp.max_message_size``, RFC 1870 SIZE)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the message is {size} bytes, over the relay's limit of {limit} bytes (smtp.max_message_size): "
            "send fewer or smaller attachments"
        )
        self.size = size
        self.limit = limit


def guess_mime_type(file_name: str, content: bytes) -> str:
    """The MIME type of an attachment: from its first bytes when they are telling (PDF, PNG, JPEG, TIFF, zip), else
    from its name (``.xml`` → ``text/xml``, as CDA documents travel), else ``application/octet-stream``.

    XML is recognised by content too (an ``<?xml`` declaration, or a ``.cda`` file), so a CDA document named
    without the usual extension still gets ``text/xml`` and its type code reaches ``X-MSS-CODECDA``.
    """
    for magic, mime_type in _MAGIC:
        if content.startswith(magic):
            return mime_type
    head = content[:64].removeprefix(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"<?xml"):
        return "text/xml"
    guessed, encoding = _TYPES.guess_type(file_name, strict=True)
    if guessed is None or encoding is not None:  # report.pdf.gz is gzip data, not a PDF
        return "application/octet-stream"
    return guessed


def split_patient_name(value: str) -> tuple[str, str]:
    """``"NOM Prénom"`` → (family name, given names), as identity traits are written in France.

    The family name is the leading words written in capitals (``"DE LA TOUR Jean-Pierre"``); when no word is, the
    first word. ``ComposeError`` when one part would be empty: then the caller asks for the parts separately.
    """
    words = value.split()
    capitals = 0
    for word in words:
        if word.upper() != word or not any(c.isalpha() for c in word):
            break
        capitals += 1
    cut = capitals if 0 < capitals < len(words) else 1
    family, given = " ".join(words[:cut]), " ".join(words[cut:])
    if not family or not given:
        raise ComposeError(
            f'cannot split the patient name {value!r} into family and given names: write it as "NOM Prénom" '
            "or give --patient-last and --patient-first"
        )
    return family, given


@dataclass(frozen=True)
class Attachment:
    """A file to attach: the name the recipient sees (no directories), its bytes and MIME type (``None``: guessed)."""

    file_name: str
    content: bytes
    mime_type: str | None = None

    def resolved_type(self) -> str:
        return (self.mime_type or guess_mime_type(self.file_name, self.content)).lower()


@dataclass(frozen=True)
class XdmRequest:
    """Package the attachments as IHE XDM: who wrote them (from the directory), about whom, under which label."""

    author: Author
    patient: Patient
    label: str | None = None  # the subject label and submission set title; default: "Ordonnance" or "Document"
    attach_originals: bool = True  # also attach each document as itself, readable without unzipping

    def resolved_label(self, prescription_id: str | None) -> str:
        if self.label is not None:
            return self.label
        return DEFAULT_PRESCRIPTION_LABEL if prescription_id else DEFAULT_DOCUMENT_LABEL


@dataclass(frozen=True)
class Draft:
    """What the sender wants to send. ``subject`` None is allowed only with ``xdm`` (the convention then applies)."""

    sender: str
    to: Sequence[str]
    subject: str | None
    body: str | None = None
    cc: Sequence[str] = ()
    sender_name: str | None = None  # the display name of the From field (the directory's, when it knows one)
    attachments: Sequence[Attachment] = ()
    xdm: XdmRequest | None = None
    prescription_id: str | None = None  # X-MSS-Prescription-Id, and in the XDM metadata with ``xdm``
    request_mdn: bool = False
    final_delivery: bool = False  # Direct's X-DIRECT-FINAL-DESTINATION-DELIVERY (needs ``request_mdn``)


@dataclass(frozen=True)
class AttachedFile:
    """One attachment as it went into the message."""

    file_name: str
    mime_type: str
    size: int


@dataclass(frozen=True)
class XdmFacts:
    """The XDM package of a composed message."""

    file_name: str
    size: int
    documents: int
    prescription_id: str | None
    originals_attached: bool
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Composed:
    """The message, ready to submit or to write, and what it holds."""

    data: bytes = field(repr=False)
    sender: str
    recipients: tuple[str, ...]  # the envelope: To then Cc, each once
    message_id: str
    subject: str
    subject_source: Literal["given", "xdm"]  # the caller's subject, or the MSSanté XDM convention
    attachments: tuple[AttachedFile, ...]
    xdm: XdmFacts | None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def eight_bit(self) -> bool:
        """Whether the message holds 8-bit octets, to be submitted with ``BODY=8BITMIME`` (RFC 6152)."""
        return not self.data.isascii()


def compose(
    draft: Draft,
    *,
    now: datetime,
    max_size: int | None = None,
    new_uuid: Callable[[], uuid.UUID] = uuid.uuid4,
) -> Composed:
    """The message ``draft`` describes, or ``ComposeError`` (``MessageTooLarge`` above ``max_size`` bytes).

    ``now`` dates the message (and the XDM package); ``new_uuid`` makes the Message-ID and the package's unique
    ids, so the same inputs with a deterministic ``new_uuid`` give the same bytes.
    """
    if now.tzinfo is None:
        raise ComposeError("the message date must carry a time zone")
    sender = _address(draft.sender, "sender")
    to = list(dict.fromkeys(_address(a, "recipient") for a in draft.to))
    cc = [a for a in dict.fromkeys(_address(a, "Cc recipient") for a in draft.cc) if a not in to]
    if not to:
        raise ComposeError("the message needs at least one recipient (--to)")
    recipients = tuple(dict.fromkeys([*to, *cc]))
    if draft.final_delivery and not draft.request_mdn:
        raise ComposeError("final-delivery notification needs an MDN request (--request-mdn)")
    prescription_id = _prescription_id(draft.prescription_id)
    attachments = [(_file_name(a.file_name), a.content, _mime_type(a)) for a in draft.attachments]
    if draft.body is None and not attachments:
        raise ComposeError("nothing to send: give a body (--body or --body-file) or attachments (--attach)")

    xdm_headers: list[tuple[str, str]] = []
    package: bytes | None = None
    xdm_default_subject: str | None = None
    if draft.xdm is not None:
        package, xdm_headers, xdm_default_subject = _package(draft.xdm, attachments, prescription_id, now, new_uuid)
    elif prescription_id is not None:
        xdm_headers = [(PRESCRIPTION_ID_HEADER, prescription_id)]

    source: Literal["given", "xdm"]
    if draft.subject is not None:
        subject, source = _subject(draft.subject), "given"
    elif xdm_default_subject is not None:
        subject, source = xdm_default_subject, "xdm"
    else:
        raise ComposeError("the message needs a subject (--subject)")

    message = EmailMessage(policy=_SMTP)
    message["From"] = Address(_display_name(draft.sender_name), addr_spec=sender)
    message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message_id = f"<{new_uuid().hex}@{sender.rpartition('@')[2]}>"
    message["Message-ID"] = message_id
    message["MIME-Version"] = "1.0"
    if draft.request_mdn:
        message["Disposition-Notification-To"] = sender  # RFC 8098 §2.1: one mailbox, the sender's
        if draft.final_delivery:
            message["Disposition-Notification-Options"] = f"{FINAL_DELIVERY_OPTION}=optional,true"
    for name, value in xdm_headers:
        message[name] = value

    attached: list[AttachedFile] = []
    if draft.body is not None:
        message.set_content(_body(draft.body), charset="utf-8")
    if attachments:
        # The body (if any) becomes the first part. "=_" occurs in no base64 or quoted-printable text (RFC 2045
        # §6.7), and the UUID in no text by chance; from new_uuid, so the bytes are reproducible in tests.
        message.make_mixed(boundary=f"=_{new_uuid().hex}")
    if draft.xdm is None or draft.xdm.attach_originals:
        for name, content, mime_type in attachments:
            if mime_type == "application/zip" and not _is_xdm_zip(content):
                mime_type = "application/octet-stream"  # the relay takes application/zip for an XDM package
            _attach(message, name, content, mime_type)
            attached.append(AttachedFile(name, mime_type, len(content)))
    xdm_facts = None
    if package is not None:
        assert draft.xdm is not None
        _attach(message, PACKAGE_FILE_NAME, package, "application/zip")
        attached.append(AttachedFile(PACKAGE_FILE_NAME, "application/zip", len(package)))
        xdm_facts = XdmFacts(PACKAGE_FILE_NAME, len(package), len(attachments), prescription_id,
                             draft.xdm.attach_originals, tuple(xdm_headers))  # fmt: skip

    data = message.as_bytes(policy=_SMTP)
    if max_size is not None and len(data) > max_size:
        raise MessageTooLarge(len(data), max_size)
    for part in find_xdm_parts(data):  # ours, or a ready-made package among the attachments: the relay checks them
        try:
            validate_package(part.data)
        except XdmError as error:
            shown = part.file_name or part.content_type
            raise ComposeError(
                f"attachment {shown} is not a valid XDM package ({error}): the relay would refuse it"
            ) from None
    return Composed(
        data=data,
        sender=sender,
        recipients=recipients,
        message_id=message_id,
        subject=subject,
        subject_source=source,
        attachments=tuple(attached),
        xdm=xdm_facts,
    )


def _package(
    xdm: XdmRequest,
    attachments: Sequence[tuple[str, bytes, str]],
    prescription_id: str | None,
    now: datetime,
    new_uuid: Callable[[], uuid.UUID],
) -> tuple[bytes, list[tuple[str, str]], str]:
    """The ``IHE_XDM.ZIP`` of the attachments, the MSSanté header fields, and the conventional subject."""
    if not attachments:
        raise ComposeError("--xdm packages the attachments: give at least one document with --attach")
    label = xdm.resolved_label(prescription_id)
    documents = [Document(name, content, mime_type) for name, content, mime_type in attachments]
    try:
        subject = xdm_subject(label, xdm.patient)
        package = build_package(documents, author=xdm.author, patient=xdm.patient, title=label, now=now,
                                prescription_id=prescription_id, new_uuid=new_uuid)  # fmt: skip
        return package, mss_headers(documents, xdm.patient, prescription_id), subject
    except XdmError as error:
        raise ComposeError(f"XDM: {error}") from None


def _address(value: str, what: str) -> str:
    try:
        return check_address(value)
    except InvalidEntry as error:
        raise ComposeError(f"{what}: {error}") from None


def _prescription_id(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_prescription_id(value.strip())
    except XdmError as error:
        raise ComposeError(str(error)) from None


def _subject(value: str) -> str:
    subject = " ".join(value.split())
    if not subject or not subject.isprintable():
        raise ComposeError("the subject must be a non-empty line of text")
    return subject


def _display_name(value: str | None) -> str:
    name = " ".join((value or "").split())
    return name if name.isprintable() else ""


def _body(text: str) -> str:
    if "\x00" in text:
        raise ComposeError("the body holds a NUL character: it must be text")
    return text if text.endswith(("\n", "\r")) or not text else text + "\n"


def _file_name(value: str) -> str:
    name = value.strip()
    if not name or name in (".", "..") or _FILE_NAME_FORBIDDEN.search(name) or not name.isprintable():
        raise ComposeError(f"bad attachment name {value!r}: a file name without directories or control characters")
    if len(name) > 255:
        raise ComposeError(f"attachment name {name[:40]!r}… is longer than 255 characters")
    return name


def _mime_type(attachment: Attachment) -> str:
    mime_type = attachment.resolved_type()
    if not _MIME_TYPE_RE.fullmatch(mime_type):
        raise ComposeError(f"bad MIME type {mime_type!r} for {attachment.file_name!r}: expected type/subtype")
    return mime_type


def _is_xdm_zip(content: bytes) -> bool:
    """Whether the relay's own rule (``find_xdm_parts`` on an ``application/octet-stream`` part) sees an XDM package
    in this zip: asked of a one-part message rather than re-implemented, so the two cannot disagree."""
    probe = EmailMessage(policy=_SMTP)
    probe.make_mixed()
    _attach(probe, "probe.bin", content, "application/octet-stream")
    return bool(find_xdm_parts(probe))


def _attach(message: EmailMessage, name: str, content: bytes, mime_type: str) -> None:
    """Append an attachment part to a multipart message (without the MIME-Version field that ``add_attachment``
    leaves in each part: it belongs to the top level only, RFC 2045 §4)."""
    maintype, _, subtype = mime_type.partition("/")
    part = EmailMessage(policy=_SMTP)
    part.set_content(content, maintype=maintype, subtype=subtype, disposition="attachment", filename=name, cte="base64")
    del part["MIME-Version"]
    message.attach(part)
