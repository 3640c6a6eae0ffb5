"""Delivery status notifications (RFC 3464) and message disposition notifications (RFC 8098): built and read.

Pure code, bytes in and bytes or values out: no socket, no database, no clock (times are passed in).

- **build_dsn**: the report sent to a local sender when delivery to some recipients failed (or expired, or is
  delayed): ``multipart/report; report-type=delivery-status`` (RFC 6522 §3) with a short English text, the
  ``message/delivery-status`` part (RFC 3464 §2) and the original header as ``text/rfc822-headers`` (RFC 6522 §4).
  Never the original body: it may carry patient data.
- **build_mdn**: a disposition notification (RFC 8098 §3) sent on behalf of a recipient, the Direct Project way
  ("Implementation Guide for Delivery Notification in Direct" v1.0): ``processed`` when the recipient's gateway
  accepted the message, ``dispatched`` once it is in the mailbox, ``failed`` when it never will be.
- **parse_notice** recognises an incoming DSN or MDN and says what it reports; **notification_request** reads what a
  message asks for (``Disposition-Notification-To``, ``Disposition-Notification-Options``); **is_final** is Direct's
  rule for the one notice a sender gets per recipient.

What is built is plain MIME in canonical form (CRLF, every line at most 998 octets, 7bit-safe: non-ASCII text is
quoted-printable in the text parts and RFC 2047 encoded in the Subject); the relay then signs and encrypts it. The
builders raise ``ValueError`` for arguments they cannot represent (an address that is not plain ASCII, an unknown
action, a malformed status code, a naive datetime). The readers take untrusted input: they never raise, do bounded
work (only the first ``1 MiB`` of a message is read, header blocks and the report part are capped at 64 KiB, no
backtracking regular expression) and return None — or an empty request — for anything malformed.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import re
import secrets
import textwrap
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from email.header import Header
from email.utils import format_datetime, getaddresses
from typing import Literal, get_args

from mssecure.crypto.smime import canonical

__all__ = [
    "FINAL_DELIVERY_OPTION",
    "Disposition",
    "DsnAction",
    "FailedRecipient",
    "Notice",
    "NotificationRequest",
    "ReportedRecipient",
    "build_dsn",
    "build_mdn",
    "is_final",
    "normalize_message_id",
    "notification_request",
    "parse_notice",
]

Disposition = Literal["processed", "dispatched", "failed", "displayed", "deleted"]
DsnAction = Literal["failed", "delayed", "delivered", "relayed", "expanded"]  # RFC 3464 §2.3.3

# Direct "Implementation Guide for Delivery Notification in Direct" v1.0: the option a sender sets to ask for
# timely and reliable delivery, and the extension field a dispatched MDN then carries.
FINAL_DELIVERY_OPTION = "X-DIRECT-FINAL-DESTINATION-DELIVERY"

_DISPOSITIONS: frozenset[str] = frozenset(get_args(Disposition))
_ACTIONS: frozenset[str] = frozenset(get_args(DsnAction))

_MAX_SCAN = 1 << 20  # a report comes before the returned message (RFC 6522 §3): the first MiB is enough
_MAX_HEAD = 64 << 10  # a header block, or the machine-readable report part
_MAX_PARTS = 32
_MAX_RECIPIENTS = 1000
_MAX_TEXT = 500  # diagnostics kept from a report read
_MAX_DIAGNOSTIC = 900  # diagnostics written: one unbreakable word still fits a 998-octet line
_MAX_SUBJECT = 200
_MAX_MESSAGE_ID = 500
_FOLD_AT = 78  # RFC 5322 §2.1.1: SHOULD be no more than 78 characters

_DEFAULT = email.policy.default

_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253}[A-Za-z0-9])?|\[[A-Za-z0-9:.]{1,60}\]")
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")  # RFC 3463 §2: class.subject.detail
_STATUS_PREFIX = re.compile(r"\s*([245]\.[0-9]{1,3}\.[0-9]{1,3})(?![0-9.])")
_MESSAGE_ID = re.compile(r"<\s*([^<>\s]{1,500})\s*>")  # RFC 5322 §4.5.4: obsolete CFWS inside
_BARE_MESSAGE_ID = re.compile(r"[!-;=?-~]{1,500}")  # printable ASCII but < and >
_DIAGNOSTIC_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,40};")  # RFC 3464 §2.3.6: diagnostic-type ";"
_SMTP_REPLY = re.compile(r"[2-5][0-9][0-9](?:[ -]|$)")
_WORD = re.compile(r"\s*([A-Za-z][A-Za-z0-9-]{0,40})")
_FIELD_NAME = re.compile(rb"[!-9;-~]{1,100}")  # RFC 5322 §3.6.8: printable ASCII but colon
_ENVELOPE_ID = re.compile(r"[!-~]{1,100}")  # RFC 3461 §4.4: ENVID, xtext, at most 100 characters
_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_UA_NAME = re.compile(r"[ -:<-~]{1,200}")  # RFC 8098 §3.2.1: ua-name is text without ";"


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient of a DSN (RFC 3464 §2.3): the relay passes only the SMTP reply, never patient data."""

    address: str  # final recipient (RFC 3464 §2.3.2)
    status: str  # RFC 3463 enhanced code, e.g. "5.1.1", or "4.4.7" when the message expired
    diagnostic: str  # e.g. "smtp; 550 5.1.1 recipient unknown" (RFC 3464 §2.3.6); "smtp; " is added to a bare reply
    remote_mta: str | None = None  # the host that gave the reply (RFC 3464 §2.3.5)
    action: DsnAction = "failed"  # RFC 3464 §2.3.3


@dataclass(frozen=True)
class NotificationRequest:
    """What a message asks for: an MDN to whom, and whether final delivery is to be confirmed (Direct)."""

    disposition_to: str | None  # the one Disposition-Notification-To address (lowercased), None if absent/invalid
    final_delivery: bool  # Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true


@dataclass(frozen=True)
class ReportedRecipient:
    """One recipient reported on: a DSN per-recipient group, or the one recipient of an MDN."""

    address: str | None  # lowercased final recipient (its "rfc822;" type removed); None if unreadable
    outcome: str  # DSN Action ("failed", "delayed", ...) or MDN disposition type ("processed", ...)
    status: str | None  # DSN Status code (RFC 3463); None for an MDN, or when the DSN's is malformed
    diagnostic: str | None  # DSN Diagnostic-Code or MDN Error: sanitised, truncated, for the log only


@dataclass(frozen=True)
class Notice:
    """What an incoming DSN or MDN reports. The top-level fields are those of the first recipient reported."""

    kind: Literal["mdn", "dsn"]
    original_message_id: str | None  # "<id>", as normalize_message_id makes it
    final_recipient: str | None
    outcome: str  # MDN: disposition type; DSN: Action
    status: str | None  # DSN Status; None for an MDN
    recipients: tuple[ReportedRecipient, ...]  # every recipient reported (one for an MDN), at least one
    final_delivery: bool = False  # an MDN carrying the X-DIRECT-FINAL-DESTINATION-DELIVERY extension field

    def per_recipient(self) -> tuple[Notice, ...]:
        """One notice per recipient reported (a DSN may report several), each with the top-level fields set."""
        return tuple(
            replace(self, final_recipient=r.address, outcome=r.outcome, status=r.status, recipients=(r,))
            for r in self.recipients
        )


# Building


def build_dsn(
    *,
    reporting_mta: str,
    from_address: str,
    to_address: str,
    original_message_id: str | None,
    original_headers: bytes,
    recipients: Sequence[FailedRecipient],
    arrival: datetime,
    now: datetime,
    envelope_id: str | None = None,
) -> bytes:
    """A delivery status notification (RFC 3464) from ``from_address`` to the original sender ``to_address``.

    ``original_headers`` is the header block of the original message; anything after its first blank line is cut
    off, so a body passed by mistake is never returned. ``envelope_id`` is the ENVID the sender gave (RFC 3461 §4.4),
    as received. An ``original_message_id`` that is not a message identifier is left out. The DSN must be sent with
    a null reverse-path (RFC 3464 §2; RFC 5321 §4.5.5).
    """
    mta = _host(reporting_mta, "reporting_mta")
    sender = _address(from_address, "from_address")
    to = _address(to_address, "to_address")
    if not recipients:
        raise ValueError("a DSN reports at least one recipient")
    arrived = _date(arrival, "arrival")
    date = _date(now, "now")
    original_id = normalize_message_id(original_message_id) if original_message_id is not None else None

    # RFC 3464 §2.2: per-message fields, in the order of the grammar.
    per_message = b""
    if envelope_id is not None:
        if not _ENVELOPE_ID.fullmatch(envelope_id):
            raise ValueError("envelope_id: not an ENVID (1 to 100 printable ASCII characters)")
        per_message += _field("Original-Envelope-Id", envelope_id)  # RFC 3464 §2.2.1
    per_message += _field("Reporting-MTA", f"dns; {mta}")  # RFC 3464 §2.2.2
    per_message += _field("Arrival-Date", arrived)  # RFC 3464 §2.2.5
    groups = [per_message]
    lines: list[str] = []
    for recipient in recipients:
        address, final_recipient = _final_recipient(recipient.address)
        if recipient.action not in _ACTIONS:
            raise ValueError(f"recipient action {recipient.action!r} is not one of {sorted(_ACTIONS)}")
        if not _STATUS.fullmatch(recipient.status):
            raise ValueError(f"recipient status {recipient.status!r} is not an RFC 3463 code")
        # RFC 3464 §2.3: per-recipient fields.
        group = _field("Final-Recipient", final_recipient)  # RFC 3464 §2.3.2
        group += _field("Action", recipient.action)  # RFC 3464 §2.3.3
        group += _field("Status", recipient.status)  # RFC 3464 §2.3.4
        if recipient.remote_mta is not None:
            group += _field("Remote-MTA", f"dns; {_host(recipient.remote_mta, 'remote_mta')}")  # RFC 3464 §2.3.5
        diagnostic = _machine_text(recipient.diagnostic)
        if diagnostic:
            if not _DIAGNOSTIC_TYPE.match(diagnostic):
                diagnostic = ("smtp; " if _SMTP_REPLY.match(diagnostic) else "X-mssecure; ") + diagnostic
            group += _field("Diagnostic-Code", diagnostic)  # RFC 3464 §2.3.6
        groups.append(group)
        lines.extend(_dsn_lines(address, recipient))

    actions = {r.action for r in recipients}
    if "failed" in actions:
        label, intro = "Failure", "Your message could not be delivered to the following recipients."
    elif "delayed" in actions:
        label = "Delay"
        intro = (
            "Your message has not been delivered yet to the following recipients. Delivery is still being"
            " attempted: do not send it again."
        )
    else:
        label, intro = "Success", "This is a report on the delivery of your message."
    head = _headers_only(original_headers)
    human = f"This is the mail system at {mta}.\n\n{_wrap(intro)}\n\n" + "\n".join(lines) + "\n"
    if head:
        human += "\nThe header of your message is attached; its content is not returned.\n"

    parts = [
        _text_part(human, "Notification"),
        b"Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n" + b"\r\n".join(groups),
    ]
    if head:
        parts.append(_rfc822_headers_part(head))
    header = _field("From", sender) + _field("To", to)
    header += _field("Subject", f"Delivery Status Notification ({label})")
    header += _field("Date", date) + _field("Message-ID", _new_message_id(mta))
    if original_id is not None:
        header += _field("In-Reply-To", original_id) + _field("References", original_id)
    header += _field("Auto-Submitted", "auto-replied")  # RFC 3834 §5
    return _report(header, "delivery-status", parts)


_MDN_SUBJECTS: dict[str, tuple[str, str]] = {
    "processed": ("Processed", "Message processed"),
    "dispatched": ("Dispatched", "Message delivered"),
    "failed": ("Failed", "Message not delivered"),
    "displayed": ("Displayed", "Message displayed"),
    "deleted": ("Deleted", "Message deleted"),
}

_MDN_TEXTS: dict[str, str] = {
    "processed": "Your message to {0} was received and processed by the recipient's secure messaging gateway.",
    "dispatched": "Your message to {0} was delivered to the recipient's mailbox.",
    "failed": "Your message to {0} could not be delivered.",
    "displayed": (
        "Your message to {0} was displayed to the recipient. This is no guarantee that it has been read or understood."
    ),
    "deleted": "Your message to {0} was deleted without being displayed.",
}


def build_mdn(
    *,
    final_recipient: str,
    to_address: str,
    original_message_id: str,
    disposition: Disposition,
    reporting_ua: str,
    now: datetime,
    original_subject: str | None = None,
    error: str | None = None,
) -> bytes:
    """A disposition notification (RFC 8098) from ``final_recipient``, on its behalf, to ``to_address``.

    The Direct way: the recipient's gateway answers for the recipient and signs with the recipient's certificate,
    so From is the recipient. ``original_subject`` is the Subject field of the original (RFC 2047 encoded words are
    decoded), truncated; it is included only when given. ``error`` goes into the Error field (RFC 8098 §3.2.7); a
    failed MDN without one says that the message could not be delivered. An ``original_message_id`` that is not a
    message identifier is left out (the MDN then cannot be matched, by the sender's own doing).
    """
    recipient = _address(final_recipient, "final_recipient")
    to = _address(to_address, "to_address")
    if disposition not in _DISPOSITIONS:
        raise ValueError(f"disposition {disposition!r} is not one of {sorted(_DISPOSITIONS)}")
    if not _UA_NAME.fullmatch(reporting_ua) or not reporting_ua.strip():
        raise ValueError("reporting_ua: not a user agent name (printable ASCII without ';')")
    date = _date(now, "now")
    original_id = normalize_message_id(original_message_id)
    if disposition == "failed" and error is None:
        error = "the message could not be delivered"

    # RFC 8098 §3.2: the disposition-notification content.
    fields = _field("Reporting-UA", f"{reporting_ua.strip()}; mssecure")  # RFC 8098 §3.2.1
    fields += _field("Final-Recipient", f"rfc822; {recipient}")  # RFC 8098 §3.2.4
    if original_id is not None:
        fields += _field("Original-Message-ID", original_id)  # RFC 8098 §3.2.5
    # RFC 8098 §3.2.6: disposition-mode "/" sending-mode ";" disposition-type.
    fields += _field("Disposition", f"automatic-action/MDN-sent-automatically; {disposition}")
    if disposition == "dispatched":
        fields += FINAL_DELIVERY_OPTION.encode("ascii") + b":\r\n"  # Direct guide: extension field, empty
    human = _wrap(_MDN_TEXTS[disposition].format(recipient)) + "\n"
    if error is not None:
        written = _machine_text(error)
        if written:
            fields += _field("Error", written)  # RFC 8098 §3.2.7
            human += "\n" + _wrap("Reason: " + _human_text(error, _MAX_DIAGNOSTIC)) + "\n"

    label, fallback = _MDN_SUBJECTS[disposition]
    subject = _subject(original_subject) if original_subject is not None else ""
    header = _field("From", recipient) + _field("To", to)
    header += _subject_field(f"{label}: {subject}" if subject else fallback)
    header += _field("Date", date) + _field("Message-ID", _new_message_id(recipient.rpartition("@")[2]))
    if original_id is not None:
        header += _field("In-Reply-To", original_id) + _field("References", original_id)
    header += _field("Auto-Submitted", "auto-replied")  # RFC 3834 §5
    parts = [
        _text_part(human, "Notification"),
        b"Content-Type: message/disposition-notification\r\n\r\n" + fields,
    ]
    return _report(header, "disposition-notification", parts)


def normalize_message_id(value: str | None) -> str | None:
    """``"<id>"`` from a Message-ID value (the first ``<...>`` in it, or a bare id); None if there is none.

    RFC 5322 §3.6.4: msg-id is "<" id ">" without spaces. Compare stored identifiers through this function.
    """
    if value is None or len(value) > 2 * _MAX_MESSAGE_ID:
        return None
    found = _MESSAGE_ID.search(value)
    if found is not None:
        return f"<{found.group(1)}>"
    bare = value.strip()
    return f"<{bare}>" if _BARE_MESSAGE_ID.fullmatch(bare) else None


def _dsn_lines(address: str, recipient: FailedRecipient) -> list[str]:
    what = {
        "failed": "delivery failed",
        "delayed": "not delivered yet, still trying",
        "delivered": "delivered",
        "relayed": "relayed to a system that sends no delivery report",
        "expanded": "delivered, and forwarded to further recipients",
    }[recipient.action]
    lines = [f"  {address}: {what} ({recipient.status})"]
    reason = _human_text(recipient.diagnostic, _MAX_DIAGNOSTIC)
    if reason:
        lines.append(_wrap(reason, indent="    "))
    return lines


def _address(value: str, what: str) -> str:
    address = value.strip()
    if not _ADDRESS.fullmatch(address) or len(address) > 254:
        raise ValueError(f"{what}: {value!r} is not a plain ASCII address")
    return address


def _final_recipient(value: str) -> tuple[str, str]:
    """(address, Final-Recipient value): ``rfc822;`` for a plain ASCII address (RFC 3464 §2.3.2), else the
    ``utf-8;`` address type of RFC 6533 §3 in its ASCII form, utf-8-addr-xtext (``\\x{HEX}`` for non-ASCII
    characters and for "+", "=" and "\\")."""
    address = value.strip()
    if _ADDRESS.fullmatch(address) and len(address) <= 254:
        return address, f"rfc822; {address}"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(address) > 254 or _printable(address) != address or " " in address:
        raise ValueError(f"recipient address: {value!r} is not an address")
    xtext = "".join(c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address)
    if len(xtext) > _MAX_DIAGNOSTIC:
        raise ValueError(f"recipient address: {value!r} is too long")
    return address, f"utf-8; {xtext}"


def _host(value: str, what: str) -> str:
    host = value.strip()
    if not _HOST.fullmatch(host):
        raise ValueError(f"{what}: {value!r} is not a host name")
    return host


def _date(value: datetime, what: str) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what}: naive datetime")
    return format_datetime(value)  # RFC 5322 §3.3


def _new_message_id(domain: str) -> str:
    return f"<{secrets.token_hex(16)}@{domain}>"


def _printable(value: str) -> str:
    """Whitespace runs made one space; control and format characters (bidirectional overrides among them),
    surrogate, private-use and unassigned code points dropped."""
    kept = (c for c in " ".join(value.split()) if unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Cn", "Co"))
    return "".join(kept).strip()


def _machine_text(value: str) -> str:
    """ASCII text for a machine-readable field: non-ASCII characters written as ``\\x{HEX}`` (the notation of
    RFC 6533 §3 for Unicode in ASCII fields), at most ``_MAX_DIAGNOSTIC`` characters."""
    out: list[str] = []
    length = 0
    for char in _printable(value):
        piece = char if char < "\x7f" else f"\\x{{{ord(char):X}}}"
        if length + len(piece) > _MAX_DIAGNOSTIC:
            break
        out.append(piece)
        length += len(piece)
    return "".join(out).strip()


def _human_text(value: str, limit: int) -> str:
    """Printable text of at most ``limit`` characters, cut at a space near the end when there is one."""
    text = _printable(value)
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    space = cut.rfind(" ", limit - 40)
    return (cut[:space] if space > 0 else cut).rstrip() + "..."


def _subject(value: str) -> str:
    """The original Subject, encoded words decoded (RFC 2047 §6), made printable, truncated."""
    decoded = str(_DEFAULT.header_factory("subject", _printable(value[: 4 * _MAX_SUBJECT])))
    return _human_text(decoded, _MAX_SUBJECT)


def _subject_field(text: str) -> bytes:
    """The Subject field, RFC 2047 encoded words when the text is not plain ASCII. email.header.Header never decodes
    what it is given: an encoded word in the text cannot turn into a line break (as the policy's header parser can)."""
    charset = "us-ascii" if text.isascii() and "=?" not in text else "utf-8"
    encoded = Header(text, charset, maxlinelen=_FOLD_AT, header_name="Subject").encode(linesep="\r\n")
    return f"Subject: {encoded}\r\n".encode("ascii")


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(
        text, width=76, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False, break_long_words=True
    )


def _field(name: str, value: str) -> bytes:
    """``name: value`` CRLF, folded at spaces near 78 characters (RFC 5322 §2.2.3); ``value`` is ASCII text."""
    lines: list[str] = []
    line = name + ":"
    for word in value.split():
        if len(line) + 1 + len(word) > _FOLD_AT and line != name + ":":
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _needs_encoding(data: bytes) -> bool:
    """Whether CRLF ``data`` is not 7bit (RFC 2045 §2.7): 8-bit or control octets, or lines over 998 octets."""
    if re.search(rb"[^\t\r\n -~]", data):
        return True
    return any(len(line) > 998 for line in data.split(b"\r\n"))


def _quoted_printable(data: bytes) -> bytes:
    """RFC 2045 §6.7 quoted-printable of CRLF text: line breaks kept, encoded lines of at most 76 characters."""
    out: list[str] = []
    for line in data.split(b"\r\n"):
        current = ""
        last = len(line) - 1
        for index, octet in enumerate(line):
            if (33 <= octet <= 126 and octet != 61) or (octet in (9, 32) and index != last):
                piece = chr(octet)
            else:
                piece = f"={octet:02X}"  # rules (1) and (3): 8-bit, "=", and white space ending a line
            if len(current) + len(piece) > 75:
                out.append(current + "=")  # rule (5): soft line break
                current = ""
            current += piece
        out.append(current)
    return "\r\n".join(out).encode("ascii")


def _text_part(text: str, description: str) -> bytes:
    body = text.replace("\n", "\r\n").encode("utf-8")
    if _needs_encoding(body):
        return (
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
            + _field("Content-Description", description)
            + b"\r\n"
            + _quoted_printable(body)
        )
    return (
        b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n"
        + _field("Content-Description", description)
        + b"\r\n"
        + body
    )


def _headers_only(original: bytes) -> bytes:
    """The header block of ``original`` (CRLF, ending with CRLF), nothing after its first blank line, capped."""
    data = canonical(original)
    if data.startswith(b"\r\n"):
        return b""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    if len(head) > _MAX_HEAD:
        head = head[: head.rfind(b"\r\n", 0, _MAX_HEAD) + 2]
    if head and not head.endswith(b"\r\n"):
        head += b"\r\n"
    return head


def _rfc822_headers_part(head: bytes) -> bytes:
    # RFC 6522 §4: text/rfc822-headers; 8-bit octets or over-long lines are quoted-printable (RFC 2045 §6.7).
    if _needs_encoding(head):
        return (
            b"Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: quoted-printable\r\n"
            + b"Content-Description: Undelivered message header\r\n\r\n"
            + _quoted_printable(head)
        )
    return b"Content-Type: text/rfc822-headers\r\nContent-Description: Undelivered message header\r\n\r\n" + head


def _report(header: bytes, report_type: str, parts: list[bytes]) -> bytes:
    """The multipart/report (RFC 6522 §3) message: ``header`` fields, then the parts in order."""
    parts = [p if p.endswith(b"\r\n") else p + b"\r\n" for p in parts]
    boundary = f"=_mssecure_{secrets.token_hex(12)}".encode("ascii")
    while any(boundary in part for part in parts):  # RFC 2046 §5.1.1: must not occur in the parts
        boundary = f"=_mssecure_{secrets.token_hex(12)}".encode("ascii")  # pragma: no cover
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + boundary + b"--\r\n"
    return (
        header
        + b"MIME-Version: 1.0\r\n"
        + f"Content-Type: multipart/report; report-type={report_type};\r\n".encode("ascii")
        + b' boundary="' + boundary + b'"\r\n'
        + b"\r\n"
        + body
    )  # fmt: skip


# Reading


def notification_request(message: bytes) -> NotificationRequest:
    """What ``message`` asks for (only its header is read). Several Disposition-Notification-To fields, or one
    with several mailboxes or an address that is not plain ASCII, count as no request (RFC 8098 §2.1)."""
    split = _split(canonical(message[: _MAX_HEAD + 4]))
    if split is None:
        return NotificationRequest(None, False)
    fields = _fields(split[0])
    return NotificationRequest(_disposition_to(_values(fields, "disposition-notification-to")), _final_delivery(fields))


def _disposition_to(values: list[str]) -> str | None:
    if len(values) != 1 or len(values[0]) > 998:
        return None
    addresses = [a for _, a in getaddresses(values) if a]
    if len(addresses) != 1:
        return None
    address = addresses[0].strip()
    return address.lower() if _ADDRESS.fullmatch(address) and len(address) <= 254 else None


def _final_delivery(fields: list[tuple[str, str]]) -> bool:
    """RFC 8098 §2.2: parameter *(";" parameter), parameter = attribute "=" importance "," value *("," value)."""
    for value in _values(fields, "disposition-notification-options"):
        for parameter in value.split(";"):
            attribute, equals, rest = parameter.partition("=")
            if not equals or attribute.strip().upper() != FINAL_DELIVERY_OPTION:
                continue
            importance, *values = (v.strip().lower() for v in rest.split(","))
            if importance in ("optional", "required") and "true" in values:
                return True
    return False


def parse_notice(message: bytes) -> Notice | None:
    """The DSN or MDN ``message`` is, or None when it is not a well-formed ``multipart/report`` of report-type
    ``delivery-status`` (RFC 3464) or ``disposition-notification`` (RFC 8098). Never raises."""
    split = _split(canonical(message[:_MAX_SCAN]))
    if split is None:
        return None
    head, body = split
    fields = _fields(head)
    content_types = _values(fields, "content-type")
    if len(content_types) != 1:
        return None
    content_type, params = _content_type(content_types[0])
    report_type = params.get("report-type", "").lower()
    boundary = params.get("boundary", "")
    # RFC 6522 §3: multipart/report, whose report-type names the machine-readable part.
    if content_type != "multipart/report" or report_type not in ("delivery-status", "disposition-notification"):
        return None
    if not re.fullmatch(r"[ -~]{0,199}[!-~]", boundary):
        return None
    wanted = f"message/{report_type}"
    report: bytes | None = None
    returned: bytes | None = None
    for part in _parts(body, boundary.encode("ascii")):
        part_split = _split(part)
        if part_split is None:
            continue
        part_fields = _fields(part_split[0])
        types = _values(part_fields, "content-type")
        part_type = _content_type(types[0])[0] if types else "text/plain"
        if part_type == wanted and report is None:
            report = _decoded(part_split[1], part_fields)
        elif part_type in _RETURNED_TYPES and returned is None:
            returned = _decoded(part_split[1], part_fields)
    if report is None or len(report) > _MAX_HEAD:
        return None
    original_id = _returned_message_id(returned) or _first_message_id(fields, "in-reply-to")
    if report_type == "delivery-status":
        return _dsn_notice(report, original_id)
    return _mdn_notice(report, original_id)


# RFC 6522 §4 text/rfc822-headers, or the whole message (RFC 3464 §2; RFC 6533 §6.3 message/global-headers).
_RETURNED_TYPES = frozenset(
    {"text/rfc822-headers", "message/rfc822", "message/rfc822-headers", "message/global-headers"}
)


def _dsn_notice(report: bytes, original_id: str | None) -> Notice | None:
    recipients: list[ReportedRecipient] = []
    for group in _groups(report):
        final = _first(group, "final-recipient")
        action = _word(_first(group, "action"))
        if final is None or action not in _ACTIONS:
            continue  # the per-message group, or a malformed per-recipient one
        status_value = _first(group, "status") or ""
        status = _STATUS_PREFIX.match(status_value[:100])
        diagnostic = _first(group, "diagnostic-code")
        recipients.append(
            ReportedRecipient(
                address=_reported_address(final),
                outcome=action,
                status=status.group(1) if status else None,
                diagnostic=_log_text(diagnostic),
            )
        )
        if len(recipients) >= _MAX_RECIPIENTS:
            break
    if not recipients:
        return None
    first = recipients[0]
    return Notice("dsn", original_id, first.address, first.outcome, first.status, tuple(recipients))


def _mdn_notice(report: bytes, original_id: str | None) -> Notice | None:
    fields = [f for group in _groups(report) for f in group]
    disposition = _first(fields, "disposition")
    if disposition is None:
        return None
    # RFC 8098 §3.2.6: mode ";" type ["/" modifiers]; "failure" is what some Direct implementations write.
    _, semicolon, kind = disposition.partition(";")
    outcome = _word(kind) if semicolon else None
    outcome = "failed" if outcome == "failure" else outcome
    if outcome is None or outcome not in _DISPOSITIONS:
        return None
    final = _first(fields, "final-recipient")
    address = _reported_address(final) if final is not None else None
    own_id = _first(fields, "original-message-id")
    if own_id is not None:
        original_id = normalize_message_id(own_id) or original_id
    error = _first(fields, "error") or _first(fields, "failure")  # RFC 8098 §3.2.7; RFC 3798's Failure field
    recipient = ReportedRecipient(address, outcome, None, _log_text(error))
    extension = any(name == FINAL_DELIVERY_OPTION.lower() for name, _ in fields)
    return Notice("mdn", original_id, address, outcome, None, (recipient,), final_delivery=extension)


def _split(data: bytes) -> tuple[bytes, bytes] | None:
    """(header block, body) of CRLF data; None when no header block ends within ``_MAX_HEAD``."""
    if data.startswith(b"\r\n"):
        return b"", data[2:]
    end = data.find(b"\r\n\r\n", 0, _MAX_HEAD + 4)
    if end < 0:
        return (data, b"") if len(data) <= _MAX_HEAD else None
    return data[:end], data[end + 4 :]


def _fields(block: bytes) -> list[tuple[str, str]]:
    """(lowercased name, unfolded value) of each field of a header-like block; lines that are no field are
    skipped. RFC 5322 §2.2.3: unfolding removes the CRLF before white space."""
    raw: list[list[bytes]] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if raw:
                raw[-1].append(line)
        elif line:
            raw.append([line])
    fields: list[tuple[str, str]] = []
    for lines in raw:
        name, colon, value = lines[0].partition(b":")
        name = name.rstrip(b" \t")  # RFC 5322 §4.5 obsolete syntax allows white space before the colon
        if not colon or not _FIELD_NAME.fullmatch(name):
            continue
        text = b"".join([value, *lines[1:]]).decode("utf-8", "replace")
        fields.append((name.decode("ascii").lower(), text.strip()))
    return fields


def _values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [value for field, value in fields if field == name]


def _first(fields: list[tuple[str, str]], name: str) -> str | None:
    return next((value for field, value in fields if field == name), None)


def _groups(text: bytes) -> list[list[tuple[str, str]]]:
    """The field groups of a report part, separated by blank lines (RFC 3464 §2.1)."""
    groups: list[list[bytes]] = [[]]
    for line in text.split(b"\r\n"):
        if line.strip(b" \t"):
            groups[-1].append(line)
        elif groups[-1]:
            groups.append([])
    return [_fields(b"\r\n".join(lines)) for lines in groups if lines]


def _content_type(value: str) -> tuple[str, dict[str, str]]:
    """(lowercased type/subtype, parameters with lowercased names) of a Content-Type value (RFC 2045 §5.1): one
    pass over at most 4,096 characters, quoted strings with their backslash escapes, the first of a name wins."""
    kind, _, rest = value[:4096].partition(";")
    media_type = kind.split("(", 1)[0].strip().lower()
    params: dict[str, str] = {}
    index, end = 0, len(rest)
    while index < end:
        while index < end and rest[index] in " \t;":
            index += 1
        start = index
        while index < end and rest[index] not in "=;":
            index += 1
        name = rest[start:index].strip().lower()
        if index >= end or rest[index] == ";":
            continue
        index += 1
        while index < end and rest[index] in " \t":
            index += 1
        if index < end and rest[index] == '"':
            index += 1
            chars: list[str] = []
            while index < end and rest[index] != '"':
                if rest[index] == "\\" and index + 1 < end:
                    index += 1
                chars.append(rest[index])
                index += 1
            parameter = "".join(chars)
            while index < end and rest[index] != ";":
                index += 1
        else:
            start = index
            while index < end and rest[index] != ";":
                index += 1
            parameter = rest[start:index].strip()
        if name and name not in params:
            params[name] = parameter
    return media_type, params


def _parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The body parts of a multipart body (RFC 2046 §5.1.1): a delimiter line is "--" boundary, a close delimiter
    adds "--", either may be followed by white space; the CRLF before a delimiter belongs to it. At most
    ``_MAX_PARTS``; a part cut short by the scan limit, or a missing close delimiter, ends at the end."""
    delimiter = b"--" + boundary
    parts: list[bytes] = []
    current: list[bytes] | None = None  # None in the preamble
    for line in body.split(b"\r\n"):
        if line.startswith(delimiter):
            rest = line[len(delimiter) :]
            closing = rest.startswith(b"--") and not rest[2:].strip(b" \t")
            if closing or not rest.strip(b" \t"):
                if current is not None:
                    parts.append(b"\r\n".join(current))
                if closing or len(parts) >= _MAX_PARTS:
                    return parts
                current = []
                continue
        if current is not None:
            current.append(line)
    if current is not None:
        parts.append(b"\r\n".join(current))
    return parts


def _decoded(body: bytes, fields: list[tuple[str, str]]) -> bytes | None:
    """The part body with its Content-Transfer-Encoding undone (RFC 2045 §6); None if it cannot be."""
    encoding = (_first(fields, "content-transfer-encoding") or "").strip().lower()
    if encoding == "base64":
        try:
            return canonical(base64.b64decode(b"".join(body.split())))
        except binascii.Error:
            return None
    if encoding == "quoted-printable":
        return canonical(binascii.a2b_qp(body))
    return body


def _returned_message_id(returned: bytes | None) -> str | None:
    if returned is None:
        return None
    split = _split(returned)
    if split is None:
        return None
    return _first_message_id(_fields(split[0]), "message-id")


def _first_message_id(fields: list[tuple[str, str]], name: str) -> str | None:
    value = _first(fields, name)
    return normalize_message_id(value) if value is not None else None


def _reported_address(value: str) -> str | None:
    """The address of a Final-Recipient value, ``address-type ";" address`` (RFC 3464 §2.3.2, RFC 8098
    §3.2.4), lowercased, without angle brackets or what follows it (a comment); None when there is none."""
    address_type, semicolon, rest = value[:1000].partition(";")
    tokens = (rest if semicolon else value[:1000]).split()
    if not tokens:
        return None
    address = tokens[0]
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if address_type.strip().lower() == "utf-8":  # RFC 6533 §3: utf-8-addr-xtext
        address = _ESCAPE.sub(_unescape_any, address)
    if not address or len(address) > 320 or any(c.isspace() or unicodedata.category(c) == "Cc" for c in address):
        return None
    return address.lower()


def _word(value: str | None) -> str | None:
    """The leading token of a field value (an action or a disposition type), lowercased."""
    if value is None:
        return None
    found = _WORD.match(value[:100])
    return found.group(1).lower() if found else None


def _log_text(value: str | None) -> str | None:
    """A diagnostic for the log: ``\\x{HEX}`` escapes (RFC 6533 §3) undone, made printable, truncated."""
    if value is None:
        return None
    text = _ESCAPE.sub(_unescape, value[: 4 * _MAX_TEXT])
    return _human_text(text, _MAX_TEXT) or None


def _unescape(found: re.Match[str]) -> str:
    code = int(found.group(1), 16)
    return chr(code) if 0x80 <= code < 0x110000 and not 0xD800 <= code < 0xE000 else found.group(0)


def _unescape_any(found: re.Match[str]) -> str:
    code = int(found.group(1), 16)
    return chr(code) if 0x20 < code < 0x110000 and not 0xD800 <= code < 0xE000 and code != 0x7F else found.group(0)


def is_final(notice: Notice, *, final_delivery_requested: bool) -> bool:
    """Whether ``notice`` is the final one for its recipient (Direct guide, "timely and reliable" delivery).

    A failure (MDN ``failed``, DSN ``failed``) and a ``dispatched`` MDN are final. A ``processed`` MDN is final only
    when final delivery was not requested: otherwise the sender waits for ``dispatched``. Anything else (a delayed
    DSN, a displayed or deleted MDN) is not. For a DSN, the top-level outcome is judged: split a DSN reporting
    several recipients with ``Notice.per_recipient``.
    """
    if notice.outcome == "failed":
        return True
    if notice.kind != "mdn":
        return False
    return notice.outcome == "dispatched" or (notice.outcome == "processed" and not final_delivery_requested)
