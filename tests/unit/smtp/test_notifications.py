"""DSNs (RFC 3464) and MDNs (RFC 8098): what is built, what is read back, and that reading never fails on bad input."""

from __future__ import annotations

import base64
import email
import email.policy
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage, Message

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssecure.smtp.notifications import (
    Disposition,
    FailedRecipient,
    Notice,
    NotificationRequest,
    ReportedRecipient,
    build_dsn,
    build_mdn,
    is_final,
    normalize_message_id,
    notification_request,
    parse_notice,
)

NOW = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
ARRIVAL = NOW - timedelta(days=5)
SENDER = "camille.lefevre@chu-nord.mssante.test"
DAEMON = "mailer-daemon@chu-nord.mssante.test"
RECIPIENT = "pharmacie@clinique-sud.mssante.test"
BODY_MARKER = "Amoxicilline-1g-DUPONT-Jean"
ORIGINAL = (
    f"From: Dr Camille LEFEVRE <{SENDER}>\r\n"
    f"To: {RECIPIENT}\r\n"
    "Subject: Ordonnance DUPONT Jean\r\n"
    "Date: Mon, 18 Nov 2026 10:00:00 +0000\r\n"
    "Message-ID: <rx1@chu-nord.mssante.test>\r\n"
    "\r\n"
    f"{BODY_MARKER}, trois fois par jour.\r\n"
).encode()
ORIGINAL_HEADERS = ORIGINAL.split(b"\r\n\r\n", 1)[0] + b"\r\n"
UNKNOWN = FailedRecipient(RECIPIENT, "5.1.1", "smtp; 550 5.1.1 recipient unknown", "mx.clinique-sud.mssante.test")
EXPIRED = FailedRecipient(
    "secretariat@clinique-sud.mssante.test", "4.4.7", "delivery time expired; last error: 451 4.3.0 try later"
)


def dsn(**overrides: object) -> bytes:
    arguments: dict[str, object] = {
        "reporting_mta": "mx.chu-nord.mssante.test",
        "from_address": DAEMON,
        "to_address": SENDER,
        "original_message_id": "<rx1@chu-nord.mssante.test>",
        "original_headers": ORIGINAL_HEADERS,
        "recipients": [UNKNOWN, EXPIRED],
        "arrival": ARRIVAL,
        "now": NOW,
    }
    arguments.update(overrides)
    return build_dsn(**arguments)  # type: ignore[arg-type]


def mdn(**overrides: object) -> bytes:
    arguments: dict[str, object] = {
        "final_recipient": RECIPIENT,
        "to_address": SENDER,
        "original_message_id": "<rx1@chu-nord.mssante.test>",
        "disposition": "processed",
        "reporting_ua": "mx.clinique-sud.mssante.test",
        "now": NOW,
    }
    arguments.update(overrides)
    return build_mdn(**arguments)  # type: ignore[arg-type]


def parsed(message: bytes) -> EmailMessage:
    """The message as Python's own parser reads it, which must find nothing wrong with it."""
    result = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(result, EmailMessage)
    for part in result.walk():
        assert not part.defects, (part.get_content_type(), part.defects)
    return result


def parts(message: EmailMessage) -> list[Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    found = [p for p in payload if isinstance(p, Message)]
    assert len(found) == len(payload)
    return found


def section(message: bytes, content_type: str) -> bytes:
    """The raw body of the part of ``content_type`` (our own messages: one boundary, no nesting)."""
    boundary = re.search(rb'boundary="([^"]+)"', message)
    assert boundary is not None
    for chunk in message.split(b"--" + boundary.group(1)):
        head, _, body = chunk.partition(b"\r\n\r\n")
        if f"Content-Type: {content_type}".encode() in head:
            return body.removesuffix(b"\r\n")
    raise AssertionError(f"no {content_type} part")


def assert_wire_safe(message: bytes) -> None:
    """Canonical 7bit: ASCII only, every line ends with CRLF, no line over 998 octets (RFC 5322 §2.1.1)."""
    assert message.isascii()
    assert message.endswith(b"\r\n")
    assert b"\r" not in message.replace(b"\r\n", b"")
    assert b"\n" not in message.replace(b"\r\n", b"")
    assert max(len(line) for line in message.split(b"\r\n")) <= 998


# DSN


def test_dsn_structure_as_python_reads_it() -> None:
    message = parsed(dsn(envelope_id="QQ314159"))
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parts(message)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert message["From"] == DAEMON
    assert message["To"] == SENDER
    assert message["Subject"] == "Delivery Status Notification (Failure)"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["In-Reply-To"] == message["References"] == "<rx1@chu-nord.mssante.test>"
    assert message["Date"].datetime == NOW
    assert re.fullmatch(r"<[0-9a-f]{32}@mx\.chu-nord\.mssante\.test>", message["Message-ID"])
    assert message["MIME-Version"] == "1.0"


def test_dsn_delivery_status_fields() -> None:
    report = section(dsn(envelope_id="QQ314159"), "message/delivery-status").decode()
    per_message, first, second = report.split("\r\n\r\n")
    assert per_message.split("\r\n") == [
        "Original-Envelope-Id: QQ314159",
        "Reporting-MTA: dns; mx.chu-nord.mssante.test",
        "Arrival-Date: Wed, 18 Nov 2026 10:30:00 +0000",
    ]
    assert first.split("\r\n") == [
        f"Final-Recipient: rfc822; {RECIPIENT}",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.clinique-sud.mssante.test",
        "Diagnostic-Code: smtp; 550 5.1.1 recipient unknown",
    ]
    unfolded = second.replace("\r\n ", " ").rstrip("\r\n").split("\r\n")
    assert unfolded == [
        "Final-Recipient: rfc822; secretariat@clinique-sud.mssante.test",
        "Action: failed",
        "Status: 4.4.7",
        "Diagnostic-Code: X-mssecure; delivery time expired; last error: 451 4.3.0 try later",
    ]


def test_dsn_text_names_recipients_and_reasons() -> None:
    text = parts(parsed(dsn()))[0]
    assert isinstance(text, EmailMessage)
    content = text.get_content()
    assert f"{RECIPIENT}: delivery failed (5.1.1)" in content
    assert "smtp; 550 5.1.1 recipient unknown" in content
    assert "secretariat@clinique-sud.mssante.test: delivery failed (4.4.7)" in content
    assert "could not be delivered" in content


def test_dsn_returns_the_header_never_the_body() -> None:
    for given_headers in (ORIGINAL_HEADERS, ORIGINAL):  # the whole message passed by mistake is cut too
        message = dsn(original_headers=given_headers)
        assert BODY_MARKER.encode() not in message
        assert b"trois fois" not in message
        returned = section(message, "text/rfc822-headers")
        assert returned == ORIGINAL_HEADERS
    assert b"Subject: Ordonnance DUPONT Jean\r\n" in dsn()


def test_dsn_without_original_headers_has_two_parts() -> None:
    message = parsed(dsn(original_headers=b"", original_message_id=None))
    assert [p.get_content_type() for p in parts(message)] == ["text/plain", "message/delivery-status"]
    assert message["In-Reply-To"] is None
    assert message["References"] is None


def test_dsn_8bit_original_headers_are_quoted_printable() -> None:
    headers = "Subject: Résultats d'analyse\r\nX-Long: " + "y" * 1200 + "\r\n"
    message = dsn(original_headers=headers.encode())
    assert_wire_safe(message)
    returned = parts(parsed(message))[2]
    assert returned["Content-Transfer-Encoding"] == "quoted-printable"
    assert returned.get_payload(decode=True) == headers.encode()


def test_quoted_printable_protects_trailing_white_space_and_long_lines() -> None:
    headers = b"Subject: caf\xc3\xa9 \r\nX-Tab: y\t\r\nX-Long: " + b"=" * 400 + b"\r\n"
    message = dsn(original_headers=headers)
    assert_wire_safe(message)
    encoded = section(message, "text/rfc822-headers")
    lines = encoded.split(b"\r\n")
    assert not any(line.endswith((b" ", b"\t")) for line in lines)  # RFC 2045 §6.7 rule (3)
    assert max(len(line) for line in lines) <= 76  # rule (5)
    assert b"Subject: caf=C3=A9=20\r\n" in encoded
    returned = parts(parsed(message))[2]
    assert returned.get_payload(decode=True) == headers


@pytest.mark.parametrize(
    ("actions", "subject"),
    [
        (("failed", "failed"), "Delivery Status Notification (Failure)"),
        (("failed", "delayed"), "Delivery Status Notification (Failure)"),
        (("delayed", "delayed"), "Delivery Status Notification (Delay)"),
        (("delivered", "relayed"), "Delivery Status Notification (Success)"),
    ],
)
def test_dsn_subject_follows_actions(actions: tuple[str, str], subject: str) -> None:
    recipients = [
        FailedRecipient(f"r{i}@clinique-sud.mssante.test", "4.4.1" if a == "delayed" else "5.0.0", "x", action=a)  # type: ignore[arg-type]
        for i, a in enumerate(actions)
    ]
    assert parsed(dsn(recipients=recipients))["Subject"] == subject


@pytest.mark.parametrize(
    ("diagnostic", "written"),
    [
        ("smtp; 550 5.1.1 recipient unknown", "smtp; 550 5.1.1 recipient unknown"),
        ("550 5.1.1 recipient unknown", "smtp; 550 5.1.1 recipient unknown"),
        ("X-Postfix; host not found", "X-Postfix; host not found"),
        ("no certificate for the recipient", "X-mssecure; no certificate for the recipient"),
        ("smtp;\r\n 550   multi\r\n line", "smtp; 550 multi line"),
    ],
)
def test_dsn_diagnostic_code_has_a_type(diagnostic: str, written: str) -> None:
    report = section(dsn(recipients=[FailedRecipient(RECIPIENT, "5.1.1", diagnostic)]), "message/delivery-status")
    assert f"Diagnostic-Code: {written}\r\n".encode() in report


def test_dsn_without_diagnostic_has_no_diagnostic_code() -> None:
    report = section(dsn(recipients=[FailedRecipient(RECIPIENT, "5.1.1", "  ")]), "message/delivery-status")
    assert b"Diagnostic-Code" not in report


def test_dsn_non_ascii_diagnostic_is_escaped_in_the_report_and_readable_in_the_text() -> None:
    message = dsn(recipients=[FailedRecipient(RECIPIENT, "5.2.2", "smtp; 552 5.2.2 boîte pleine \u202e")])
    assert_wire_safe(message)
    assert b"Diagnostic-Code: smtp; 552 5.2.2 bo\\x{EE}te pleine\r\n" in message
    text = parts(parsed(message))[0]
    assert isinstance(text, EmailMessage)
    assert "552 5.2.2 boîte pleine" in text.get_content()
    assert "\u202e" not in text.get_content()  # a bidirectional override from a peer is dropped


def test_dsn_utf8_recipient_uses_the_rfc6533_address_type() -> None:
    message = dsn(recipients=[FailedRecipient("josé+1@clinique-sud.mssante.test", "5.1.1", "550 unknown")])
    assert_wire_safe(message)
    assert b"Final-Recipient: utf-8; jos\\x{E9}\\x{2B}1@clinique-sud.mssante.test\r\n" in message
    notice = parse_notice(message)
    assert notice is not None
    assert notice.final_recipient == "josé+1@clinique-sud.mssante.test"


def test_dsn_long_diagnostic_is_folded_and_truncated() -> None:
    diagnostic = "smtp; 550 " + " ".join(["word"] * 400) + " " + "z" * 2000
    message = dsn(recipients=[FailedRecipient(RECIPIENT, "5.0.0", diagnostic)])
    assert_wire_safe(message)
    report = section(message, "message/delivery-status").decode()
    field = re.search(r"Diagnostic-Code:.*?(?=\r\n(?! ))", report, re.DOTALL)
    assert field is not None
    assert field.group(0).count("\r\n") > 5  # folded
    assert len(field.group(0).replace("\r\n", "")) < 1000  # truncated


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"recipients": []}, "at least one recipient"),
        ({"recipients": [FailedRecipient(RECIPIENT, "5.1", "x")]}, "RFC 3463"),
        ({"recipients": [FailedRecipient(RECIPIENT, "3.1.1", "x")]}, "RFC 3463"),
        ({"recipients": [FailedRecipient(RECIPIENT, "5.1.1", "x", action="bounced")]}, "action"),  # type: ignore[arg-type]
        ({"recipients": [FailedRecipient("not an address", "5.1.1", "x")]}, "not an address"),
        ({"recipients": [FailedRecipient(RECIPIENT, "5.1.1", "x", "mx example")]}, "remote_mta"),
        ({"to_address": f"{SENDER}\r\nBcc: spy@example.test"}, "to_address"),
        ({"from_address": "Mailer Daemon <mailer-daemon@x.test>"}, "from_address"),
        ({"to_address": "josé@chu-nord.mssante.test"}, "to_address"),
        ({"reporting_mta": "mx.example.test; evil"}, "reporting_mta"),
        ({"envelope_id": "has space"}, "envelope_id"),
        ({"envelope_id": "x" * 101}, "envelope_id"),
        ({"arrival": datetime(2026, 11, 18, 10, 0)}, "naive"),
        ({"now": datetime(2026, 11, 23, 10, 0)}, "naive"),
    ],
)
def test_dsn_refuses_what_it_cannot_represent(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dsn(**overrides)


def test_dsn_dates_keep_their_offset() -> None:
    paris = timezone(timedelta(hours=1))
    message = parsed(dsn(now=NOW.astimezone(paris), arrival=ARRIVAL.astimezone(paris)))
    assert message["Date"] == "Mon, 23 Nov 2026 11:30:00 +0100"
    assert b"Arrival-Date: Wed, 18 Nov 2026 11:30:00 +0100\r\n" in dsn(arrival=ARRIVAL.astimezone(paris))


def test_each_report_has_a_fresh_message_id_and_boundary() -> None:
    first, second = parsed(dsn()), parsed(dsn())
    assert first["Message-ID"] != second["Message-ID"]
    assert first.get_boundary() != second.get_boundary()


# MDN


@pytest.mark.parametrize("disposition", ["processed", "dispatched", "failed", "displayed", "deleted"])
def test_mdn_structure_and_fields(disposition: Disposition) -> None:
    raw = mdn(disposition=disposition, original_subject="Ordonnance DUPONT Jean")
    assert_wire_safe(raw)
    message = parsed(raw)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "disposition-notification"
    assert [p.get_content_type() for p in parts(message)] == ["text/plain", "message/disposition-notification"]
    assert message["From"] == RECIPIENT  # the Direct way: on the recipient's behalf
    assert message["To"] == SENDER
    assert message["Subject"] == f"{disposition.capitalize()}: Ordonnance DUPONT Jean"
    assert message["In-Reply-To"] == message["References"] == "<rx1@chu-nord.mssante.test>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert re.fullmatch(r"<[0-9a-f]{32}@clinique-sud\.mssante\.test>", message["Message-ID"])
    fields = section(raw, "message/disposition-notification").decode().rstrip("\r\n").split("\r\n")
    expected = [
        "Reporting-UA: mx.clinique-sud.mssante.test; mssecure",
        f"Final-Recipient: rfc822; {RECIPIENT}",
        "Original-Message-ID: <rx1@chu-nord.mssante.test>",
        f"Disposition: automatic-action/MDN-sent-automatically; {disposition}",
    ]
    if disposition == "dispatched":
        expected.append("X-DIRECT-FINAL-DESTINATION-DELIVERY:")
    if disposition == "failed":
        expected.append("Error: the message could not be delivered")
    assert fields == expected


def test_mdn_failed_carries_the_error() -> None:
    raw = mdn(disposition="failed", error="mailbox full: boîte pleine")
    assert_wire_safe(raw)
    assert b"Error: mailbox full: bo\\x{EE}te pleine\r\n" in raw
    text = parts(parsed(raw))[0]
    assert isinstance(text, EmailMessage)
    assert "could not be delivered" in text.get_content()
    assert "Reason: mailbox full: boîte pleine" in text.get_content()


def test_mdn_subject_only_when_given() -> None:
    assert parsed(mdn())["Subject"] == "Message processed"
    assert parsed(mdn(disposition="dispatched"))["Subject"] == "Message delivered"
    assert b"DUPONT" not in mdn()


def test_mdn_subject_non_ascii_and_encoded_words() -> None:
    raw = mdn(original_subject="Résultats d'analyse")
    assert_wire_safe(raw)
    assert parsed(raw)["Subject"] == "Processed: Résultats d'analyse"
    # As the relay passes it: the raw field value, with its RFC 2047 encoded words.
    raw = mdn(original_subject="=?utf-8?q?R=C3=A9sultats?= d'analyse")
    assert parsed(raw)["Subject"] == "Processed: Résultats d'analyse"


def test_mdn_subject_cannot_inject_a_header_field() -> None:
    # An encoded word whose text is CRLF and a new field: decoded once, the line break is only a space.
    raw = mdn(original_subject="=?utf-8?q?hello=0D=0ABcc:_spy@example.test?=")
    assert_wire_safe(raw)
    message = parsed(raw)
    assert message["Bcc"] is None
    assert message["Subject"] == "Processed: hello Bcc: spy@example.test"
    # Twice encoded: what is left is written encoded again, never decoded into the header.
    twice = "=?utf-8?q?=3D=3Futf-8=3Fq=3Fhello=3D0D=3D0ABcc=3A_spy=40example.test=3F=3D?="
    message = parsed(mdn(original_subject=twice))
    assert message["Bcc"] is None
    assert "\n" not in message["Subject"]


def test_mdn_long_subject_is_truncated_and_folded() -> None:
    raw = mdn(original_subject="Compte rendu " * 40)
    assert_wire_safe(raw)
    subject = parsed(raw)["Subject"]
    assert subject.startswith("Processed: Compte rendu Compte rendu")
    assert subject.endswith("...")
    assert len(subject) <= len("Processed: ") + 200
    assert subject.endswith("Compte rendu...")  # cut between words
    field = raw.split(b"\r\nDate:")[0].split(b"Subject:")[1]
    assert field.count(b"\r\n ") >= 2  # folded


def test_mdn_bare_message_id_gets_brackets_and_garbage_is_left_out() -> None:
    assert b"Original-Message-ID: <rx1@chu-nord.mssante.test>\r\n" in mdn(
        original_message_id="rx1@chu-nord.mssante.test"
    )
    raw = mdn(original_message_id="not a message id")
    assert b"Original-Message-ID" not in raw
    assert b"In-Reply-To" not in raw


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"disposition": "read"}, "disposition"),
        ({"reporting_ua": "mx.example.test; other"}, "reporting_ua"),
        ({"reporting_ua": "  "}, "reporting_ua"),
        ({"final_recipient": "pharmacie"}, "final_recipient"),
        ({"to_address": f"{SENDER}\nBcc: spy@example.test"}, "to_address"),
        ({"now": datetime(2026, 11, 23, 10, 0)}, "naive"),
    ],
)
def test_mdn_refuses_what_it_cannot_represent(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mdn(**overrides)


ENCODED_WORD = st.from_regex(r"=\?(utf-8|UTF-8|iso-8859-1|x-unknown|utf-8\*fr)\?[qQbB]\?[ -~]{0,30}\?=", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(ENCODED_WORD | st.text(max_size=20) | st.sampled_from(["\r\n", "\r\n ", "=?", "?="]), max_size=8))
def test_any_original_subject_gives_one_safe_subject_field(pieces: list[str]) -> None:
    raw = mdn(original_subject=" ".join(pieces))
    assert_wire_safe(raw)
    message = parsed(raw)
    assert len(message.get_all("Subject") or []) == 1
    assert message["Bcc"] is None
    subject = str(message["Subject"])
    assert subject.startswith("Processed: ") or subject == "Message processed"
    assert "\n" not in subject


# Round trips


def test_dsn_round_trip() -> None:
    notice = parse_notice(dsn())
    assert notice == Notice(
        kind="dsn",
        original_message_id="<rx1@chu-nord.mssante.test>",
        final_recipient=RECIPIENT,
        outcome="failed",
        status="5.1.1",
        recipients=(
            ReportedRecipient(RECIPIENT, "failed", "5.1.1", "smtp; 550 5.1.1 recipient unknown"),
            ReportedRecipient(
                "secretariat@clinique-sud.mssante.test",
                "failed",
                "4.4.7",
                "X-mssecure; delivery time expired; last error: 451 4.3.0 try later",
            ),
        ),
    )


def test_dsn_original_id_from_in_reply_to_without_returned_headers() -> None:
    notice = parse_notice(dsn(original_headers=b""))
    assert notice is not None
    assert notice.original_message_id == "<rx1@chu-nord.mssante.test>"


@pytest.mark.parametrize("disposition", ["processed", "dispatched", "failed", "displayed", "deleted"])
def test_mdn_round_trip(disposition: Disposition) -> None:
    notice = parse_notice(mdn(disposition=disposition, error="quota" if disposition == "failed" else None))
    assert notice == Notice(
        kind="mdn",
        original_message_id="<rx1@chu-nord.mssante.test>",
        final_recipient=RECIPIENT,
        outcome=disposition,
        status=None,
        recipients=(ReportedRecipient(RECIPIENT, disposition, None, "quota" if disposition == "failed" else None),),
        final_delivery=disposition == "dispatched",
    )


def test_per_recipient_splits_a_dsn() -> None:
    notice = parse_notice(dsn())
    assert notice is not None
    first, second = notice.per_recipient()
    assert (first.final_recipient, first.status, len(first.recipients)) == (RECIPIENT, "5.1.1", 1)
    assert (second.final_recipient, second.status) == ("secretariat@clinique-sud.mssante.test", "4.4.7")
    assert second.original_message_id == notice.original_message_id


LOCAL = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_+", min_size=1, max_size=20)
LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
DOMAIN = st.lists(LABEL, min_size=1, max_size=3).map(".".join)
ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", LOCAL, DOMAIN)
STATUS = st.builds(lambda c, s, d: f"{c}.{s}.{d}", st.sampled_from("245"), st.integers(0, 999), st.integers(0, 999))
WHEN = st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]),
)
MESSAGE_ID = st.builds(lambda left, right: f"<{left}@{right}>", LOCAL, DOMAIN)
RECIPIENTS = st.lists(
    st.builds(
        FailedRecipient,
        address=ADDRESS,
        status=STATUS,
        diagnostic=st.text(max_size=300),
        remote_mta=st.none() | DOMAIN,
        action=st.sampled_from(["failed", "delayed", "delivered", "relayed", "expanded"]),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(
    recipients=RECIPIENTS,
    original_id=st.none() | MESSAGE_ID,
    headers=st.binary(max_size=300),
    arrival=WHEN,
    now=WHEN,
    envelope_id=st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=100),
)
def test_any_dsn_is_wire_safe_and_reads_back(
    recipients: list[FailedRecipient],
    original_id: str | None,
    headers: bytes,
    arrival: datetime,
    now: datetime,
    envelope_id: str | None,
) -> None:
    message = dsn(
        recipients=recipients,
        original_message_id=original_id,
        original_headers=headers,
        arrival=arrival,
        now=now,
        envelope_id=envelope_id,
    )
    assert_wire_safe(message)
    parsed(message)
    notice = parse_notice(message)
    assert notice is not None
    assert notice.kind == "dsn"
    assert [(r.address, r.outcome, r.status) for r in notice.recipients] == [
        (r.address.lower(), r.action, r.status) for r in recipients
    ]
    if original_id is not None and b"message-id" not in headers.lower():
        assert notice.original_message_id == original_id


@settings(max_examples=150, deadline=None)
@given(
    recipient=ADDRESS,
    to=ADDRESS,
    original_id=MESSAGE_ID,
    disposition=st.sampled_from(["processed", "dispatched", "failed", "displayed", "deleted"]),
    subject=st.none() | st.text(max_size=400),
    error=st.none() | st.text(max_size=300),
    now=WHEN,
)
def test_any_mdn_is_wire_safe_and_reads_back(
    recipient: str,
    to: str,
    original_id: str,
    disposition: Disposition,
    subject: str | None,
    error: str | None,
    now: datetime,
) -> None:
    message = mdn(
        final_recipient=recipient,
        to_address=to,
        original_message_id=original_id,
        disposition=disposition,
        original_subject=subject,
        error=error,
        now=now,
    )
    assert_wire_safe(message)
    reread = parsed(message)
    assert reread["Bcc"] is None
    assert reread["Cc"] is None
    notice = parse_notice(message)
    assert notice is not None
    assert (notice.kind, notice.final_recipient, notice.outcome, notice.original_message_id) == (
        "mdn",
        recipient.lower(),
        disposition,
        original_id,
    )
    assert notice.final_delivery == (disposition == "dispatched")


# Reading reports from elsewhere

POSTFIX_DSN = b"""\
Return-Path: <>
From: MAILER-DAEMON@mx.example.test (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: alice@example.test
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="8A2B3C4D5E.1700000000/mx.example.test"
Message-Id: <20261123103000.8A2B3C4D5E@mx.example.test>

This is a MIME-encapsulated message.

--8A2B3C4D5E.1700000000/mx.example.test
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--8A2B3C4D5E.1700000000/mx.example.test
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.test
X-Postfix-Queue-ID: 8A2B3C4D5E
X-Postfix-Sender: rfc822; alice@example.test
Arrival-Date: Mon, 23 Nov 2026 10:29:58 +0100 (CET)

Final-Recipient: rfc822; Bob@Other.test
Original-Recipient: rfc822;bob@other.test
Action: failed
Status: 5.1.1 (bad destination mailbox address)
Remote-MTA: dns; mx.other.test
Diagnostic-Code: smtp; 550 5.1.1 <bob@other.test>: Recipient address rejected:
    User unknown in local recipient table

Final-Recipient: rfc822; carol@other.test
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mx.other.test[192.0.2.7]:25: Connection
    timed out

--8A2B3C4D5E.1700000000/mx.example.test
Content-Description: Undelivered Message
Content-Type: message/rfc822

From: alice@example.test
To: bob@other.test
Subject: hello
Message-ID: < abc.123@example.test >

Body of the original.

--8A2B3C4D5E.1700000000/mx.example.test--
"""

MDN_FIELDS = (
    b"Reporting-UA: hisp.test; Direct Project\r\n"
    b"Final-Recipient: rfc822; BOB@hisp.test\r\n"
    b"Original-Message-ID: <orig@example.test>\r\n"
    b"Disposition: automatic-action/MDN-sent-automatically;failure/error\r\n"
    b"Failure: quota exceeded\r\n"
)


def direct_mdn(fields: bytes = MDN_FIELDS, encoded: bytes | None = None) -> bytes:
    """An MDN as another Direct implementation may write it: base64 report part, RFC 3798's Failure field."""
    return (
        b"From: bob@hisp.test\r\nTo: alice@example.test\r\nSubject: Processed: hello\r\n"
        b"Message-ID: <mdn-1@hisp.test>\r\nIn-Reply-To: <other@example.test>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; boundary=simple;\r\n  report-type="disposition-notification"\r\n\r\n'
        b"--simple\r\nContent-Type: text/plain\r\n\r\nYour message was successfully processed.\r\n"
        b"--simple\r\nContent-Type: message/disposition-notification\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + (encoded if encoded is not None else base64.encodebytes(fields).replace(b"\n", b"\r\n"))
        + b"--simple--\r\n"
    )


DIRECT_MDN = direct_mdn()


def test_reads_a_postfix_dsn_with_bare_lf_and_the_whole_message_returned() -> None:
    notice = parse_notice(POSTFIX_DSN)
    assert notice is not None
    assert notice.kind == "dsn"
    assert notice.original_message_id == "<abc.123@example.test>"  # from the returned message
    assert (notice.final_recipient, notice.outcome, notice.status) == ("bob@other.test", "failed", "5.1.1")
    assert notice.recipients[0].diagnostic == (
        "smtp; 550 5.1.1 <bob@other.test>: Recipient address rejected: User unknown in local recipient table"
    )
    assert notice.recipients[1] == ReportedRecipient(
        "carol@other.test",
        "delayed",
        "4.4.1",
        "X-Postfix; connect to mx.other.test[192.0.2.7]:25: Connection timed out",
    )


def test_reads_a_base64_mdn_with_rfc3798_fields() -> None:
    notice = parse_notice(DIRECT_MDN)
    assert notice == Notice(
        kind="mdn",
        original_message_id="<orig@example.test>",  # Original-Message-ID wins over In-Reply-To
        final_recipient="bob@hisp.test",
        outcome="failed",  # "failure" as some Direct implementations write it
        status=None,
        recipients=(ReportedRecipient("bob@hisp.test", "failed", None, "quota exceeded"),),
    )


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\r\n\r\n",
        ORIGINAL,
        POSTFIX_DSN.replace(b"report-type=delivery-status", b"report-type=feedback-report"),
        POSTFIX_DSN.replace(b"multipart/report", b"multipart/mixed"),
        POSTFIX_DSN.replace(b"Content-Type: message/delivery-status", b"Content-Type: text/plain"),
        POSTFIX_DSN.replace(b"Final-Recipient", b"X-Final-Recipient"),
        POSTFIX_DSN.replace(b"Action: failed", b"Action: bounced").replace(b"Action: delayed", b"Action: ?"),
        POSTFIX_DSN.replace(b'\tboundary="8A2B3C4D5E.1700000000/mx.example.test"', b"\tboundary="),
        POSTFIX_DSN.replace(b"Content-Type: multipart", b"Content-Type: text/plain\nContent-Type: multipart"),
        direct_mdn(MDN_FIELDS.replace(b";failure", b";denied")),  # a disposition type of RFC 2298
        direct_mdn(encoded=b"UmVwb\r\n"),  # not base64
    ],
    ids=[
        "empty",
        "blank",
        "plain message",
        "other report type",
        "not a report",
        "no machine part",
        "no recipient",
        "unknown actions",
        "no boundary",
        "two content types",
        "unknown disposition",
        "bad base64",
    ],
)
def test_not_a_notice(message: bytes) -> None:
    assert parse_notice(message) is None


@pytest.mark.parametrize(
    ("final_recipient", "address"),
    [
        ("rfc822;Bob@Hisp.test", "bob@hisp.test"),
        ("rfc822; <bob@hisp.test> (Bob)", "bob@hisp.test"),
        ("bob@hisp.test", "bob@hisp.test"),
        ("utf-8; jos\\x{E9}@hisp.test", "jos\u00e9@hisp.test"),
        ("rfc822;   ", None),
    ],
)
def test_final_recipient_forms(final_recipient: str, address: str | None) -> None:
    fields = MDN_FIELDS.replace(b"rfc822; BOB@hisp.test", final_recipient.encode())
    notice = parse_notice(direct_mdn(fields))
    assert notice is not None
    assert notice.final_recipient == address


def test_mdn_without_disposition_is_not_a_notice() -> None:
    assert parse_notice(mdn().replace(b"Disposition: ", b"X-Disposition: ")) is None


def test_reads_only_the_first_mebibyte() -> None:
    """The report comes first: a huge returned message neither hides it nor costs more than its first MiB."""
    big = POSTFIX_DSN.replace(b"Body of the original.", b"x" * (8 << 20))
    started = time.perf_counter()
    notice = parse_notice(big)
    assert time.perf_counter() - started < 2
    assert notice is not None
    assert notice.final_recipient == "bob@other.test"


@pytest.mark.parametrize(
    "message",
    [
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b" + b";" * 60_000 + b"\r\n\r\n",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b; x=" + b'"\\' * 30_000 + b"\r\n\r\n",
        b"Content-Type: multipart/report; boundary=b; report-type=delivery-status; x=" + b"a=" * 30_000 + b"\r\n\r\n",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n" + b"--b\r\n" * 300_000,
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: message/delivery-status\r\n\r\n"
        + b"Final-Recipient: rfc822; a@b\r\nAction: failed\r\n\r\n"
        * 30_000,
        b"In-Reply-To: " + b"<" * 60_000 + b"\r\n\r\n",
        b"Content-Type: multipart/report; report-type=disposition-notification; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: message/disposition-notification\r\n\r\nDisposition: ;processed\r\n"
        b"Original-Message-ID: " + b"<a" * 30_000 + b"\r\n",
        b"X: y\r\n" + b" " * 1_000_000 + b"\r\n\r\n",
        b"\r" * 1_000_000,
        b"\n" * 1_000_000,
    ],
    ids=["semicolons", "quotes", "equals", "delimiters", "recipients", "angles", "message-id", "folding", "cr", "lf"],
)
def test_pathological_input_is_bounded(message: bytes) -> None:
    started = time.perf_counter()
    parse_notice(message)
    notification_request(message)
    assert time.perf_counter() - started < 2


# Never raising on untrusted input


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = parse_notice(data)
    assert result is None or isinstance(result, Notice)
    assert isinstance(notification_request(data), NotificationRequest)


TRICKY_LINES = [
    b"",
    b" ",
    b"--",
    b"\t;",
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="',
    b"Content-Type: message/delivery-status",
    b"Content-Type: message/disposition-notification",
    b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable",
    b"Final-Recipient: ;",
    b"Final-Recipient: utf-8; \\x{110000}\\x{D800}\\x{0}@x",
    b"Action: failed",
    b"Status: 9.9.9.9",
    b"Disposition: ;",
    b"Disposition: automatic-action/MDN-sent-automatically; failure/error",
    b"Original-Message-ID: <<<>>>",
    b"Disposition-Notification-To: a@b, c@d",
    b"Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=,",
    b"X-DIRECT-FINAL-DESTINATION-DELIVERY:",
    b"=?utf-8?b?====?=",
    b"\xff\xfe\x00",
]


@st.composite
def mutated_reports(draw: st.DrawFn) -> bytes:
    """A valid DSN or MDN (ours or another's) with lines dropped, repeated or replaced, or bytes changed."""
    samples = [dsn(), mdn(disposition="dispatched"), mdn(disposition="failed", error="é"), POSTFIX_DSN, DIRECT_MDN]
    data = draw(st.sampled_from(samples))
    rng = draw(st.randoms(use_true_random=False))
    for _ in range(draw(st.integers(1, 4))):
        lines = data.split(b"\n")
        position = rng.randrange(len(lines))
        kind = draw(st.sampled_from(["drop", "repeat", "replace", "insert", "flip", "truncate", "splice"]))
        if kind == "drop":
            del lines[position]
        elif kind == "repeat":
            lines[position:position] = [lines[position]] * draw(st.integers(1, 3))
        elif kind == "replace":
            lines[position] = draw(st.sampled_from(TRICKY_LINES))
        elif kind == "insert":
            lines.insert(position, draw(st.sampled_from(TRICKY_LINES) | st.binary(max_size=40)))
        data = b"\n".join(lines)
        if kind == "flip" and data:
            index = rng.randrange(len(data))
            data = data[:index] + bytes([data[index] ^ (1 << rng.randrange(8))]) + data[index + 1 :]
        elif kind == "truncate":
            data = data[: rng.randrange(len(data) + 1)]
        elif kind == "splice":
            other = draw(st.sampled_from(samples))
            data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other)) :]
    return data


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_reports())
def test_mutated_reports_never_raise(data: bytes) -> None:
    notice = parse_notice(data)
    if notice is not None:
        assert notice.kind in ("dsn", "mdn")
        assert notice.recipients
        assert notice.outcome == notice.recipients[0].outcome
        for recipient in notice.recipients:
            assert recipient.diagnostic is None or len(recipient.diagnostic) <= 500
    assert isinstance(notification_request(data), NotificationRequest)


# Requests for notification


def request_of(*fields: str, body: str = "Bonjour.\r\n") -> NotificationRequest:
    head = "".join(f"{f}\r\n" for f in ("From: a@example.test", *fields))
    return notification_request(f"{head}\r\n{body}".encode())


TO = "Disposition-Notification-To: "
OPTIONS = "Disposition-Notification-Options: "
DIRECT = "X-DIRECT-FINAL-DESTINATION-DELIVERY"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ((), NotificationRequest(None, False)),
        ((TO + "Alice@Example.TEST",), NotificationRequest("alice@example.test", False)),
        ((TO + "Dr Alice <alice@example.test>",), NotificationRequest("alice@example.test", False)),
        ((TO + "\r\n <alice@example.test>",), NotificationRequest("alice@example.test", False)),
        ((TO + "a@example.test, b@example.test",), NotificationRequest(None, False)),
        ((TO + "a@example.test", TO + "b@example.test"), NotificationRequest(None, False)),
        ((TO + "not an address",), NotificationRequest(None, False)),
        ((TO + "josé@example.test",), NotificationRequest(None, False)),
        ((TO + "a@example.test", OPTIONS + DIRECT + "=optional,true"), NotificationRequest("a@example.test", True)),
        ((OPTIONS + DIRECT.lower() + " = required , TRUE",), NotificationRequest(None, True)),
        (
            (OPTIONS + "signed-receipt=optional,pkcs7;\r\n " + DIRECT + "=optional,true",),
            NotificationRequest(None, True),
        ),
        ((OPTIONS + DIRECT + "=optional,false",), NotificationRequest(None, False)),
        ((OPTIONS + DIRECT + "=true",), NotificationRequest(None, False)),  # no importance (RFC 8098 §2.2)
        ((OPTIONS + DIRECT,), NotificationRequest(None, False)),
        (("X-" + OPTIONS + DIRECT + "=optional,true",), NotificationRequest(None, False)),
    ],
)
def test_notification_request(fields: tuple[str, ...], expected: NotificationRequest) -> None:
    assert request_of(*fields) == expected


def test_notification_request_reads_only_the_header() -> None:
    body = "Disposition-Notification-To: a@example.test\r\n"
    assert request_of(body=body) == NotificationRequest(None, False)
    assert notification_request(b"Disposition-Notification-To: a@example.test\n\nbody") == NotificationRequest(
        "a@example.test", False
    )


# Which notice is final


def notice(kind: str, outcome: str) -> Notice:
    status = {"failed": "5.1.1", "delayed": "4.4.1"}.get(outcome, "2.0.0") if kind == "dsn" else None
    recipient = ReportedRecipient(RECIPIENT, outcome, status, None)
    return Notice(kind, "<rx1@chu-nord.mssante.test>", RECIPIENT, outcome, status, (recipient,))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "outcome", "when_requested", "when_not_requested"),
    [
        ("mdn", "processed", False, True),
        ("mdn", "dispatched", True, True),
        ("mdn", "failed", True, True),
        ("mdn", "displayed", False, False),
        ("mdn", "deleted", False, False),
        ("dsn", "failed", True, True),
        ("dsn", "delayed", False, False),
        ("dsn", "delivered", False, False),
        ("dsn", "relayed", False, False),
    ],
)
def test_is_final(kind: str, outcome: str, when_requested: bool, when_not_requested: bool) -> None:
    assert is_final(notice(kind, outcome), final_delivery_requested=True) is when_requested
    assert is_final(notice(kind, outcome), final_delivery_requested=False) is when_not_requested


def test_is_final_on_built_notices() -> None:
    processed, dispatched = parse_notice(mdn()), parse_notice(mdn(disposition="dispatched"))
    assert processed is not None
    assert dispatched is not None
    assert not is_final(processed, final_delivery_requested=True)
    assert is_final(dispatched, final_delivery_requested=True)
    delayed = parse_notice(dsn(recipients=[FailedRecipient(RECIPIENT, "4.4.1", "451 later", action="delayed")]))
    assert delayed is not None
    assert not is_final(delayed, final_delivery_requested=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<a@b>", "<a@b>"),
        ("  <a@b> (comment)", "<a@b>"),
        ("a@b", "<a@b>"),
        ("a b@c", None),
        ("", None),
        ("<>", None),
        (None, None),
        ("< a.b@c >", "<a.b@c>"),
        ("<" + "x" * 2000 + ">", None),
    ],
)
def test_normalize_message_id(value: str | None, expected: str | None) -> None:
    assert normalize_message_id(value) == expected
