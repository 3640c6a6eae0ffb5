"""Composing what ``mssecure send`` submits: structure, header fields, XDM packaging, MDN requests, size refusal.

Checked with the parts of mssecure that read the message on the other side: the relay's line-ending and From
checks, its notification-request reader, the XDM finder and validator.
"""

from __future__ import annotations

import email.policy
import re
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssecure.compose import (
    Attachment,
    ComposeError,
    Draft,
    MessageTooLarge,
    XdmRequest,
    compose,
    guess_mime_type,
    split_patient_name,
)
from mssecure.smtp.mime import header_from
from mssecure.smtp.notifications import notification_request
from mssecure.smtp.policy import check_bare_line_endings, check_header_from
from mssecure.xdm import Patient, find_xdm_parts, validate_package
from tests.unit.xdm.samples import (
    AUTHOR,
    CDA,
    INS,
    NOW,
    PATIENT,
    PDF,
    PRESCRIPTION_ID,
    counting_uuids,
    make_zip,
    package,
)

SENDER = "camille.lefevre@chu-nord.mssante.test"
PHARMACY = "pharmacie@pharma-sud.mssante.test"
NURSE = "alex.martin@chu-nord.mssante.test"


def draft(**changes: object) -> Draft:
    values: dict[str, object] = {"sender": SENDER, "to": [PHARMACY], "subject": "Compte rendu", "body": "Bonjour.\n"}
    values.update(changes)
    return Draft(**values)  # type: ignore[arg-type]


def xdm_draft(**changes: object) -> Draft:
    values: dict[str, object] = {
        "subject": None,
        "attachments": [Attachment("ordonnance.pdf", PDF), Attachment("ordonnance.xml", CDA)],
        "xdm": XdmRequest(AUTHOR, PATIENT),
        "prescription_id": PRESCRIPTION_ID,
    }
    values.update(changes)
    return draft(**values)


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def attachments(message: EmailMessage) -> list[tuple[str | None, str, bytes]]:
    found = []
    for part in message.iter_attachments():
        assert isinstance(part, EmailMessage)
        content = part.get_payload(decode=True)
        assert isinstance(content, bytes)
        found.append((part.get_filename(), part.get_content_type(), content))
    return found


def test_a_text_message_has_the_header_fields_a_relay_and_a_reader_expect() -> None:
    composed = compose(
        draft(sender_name="Camille LEFÈVRE", cc=[NURSE], body="Voilà le compte rendu.\n"),
        now=NOW,
        new_uuid=counting_uuids(),
    )
    check_bare_line_endings(composed.data)  # the relay refuses any bare CR or LF
    check_header_from(header_from(composed.data), SENDER)  # the From is the envelope sender
    message = parse(composed.data)
    assert message["From"].addresses[0].display_name == "Camille LEFÈVRE"
    assert message["From"].addresses[0].addr_spec == SENDER
    assert [a.addr_spec for a in message["To"].addresses] == [PHARMACY]
    assert [a.addr_spec for a in message["Cc"].addresses] == [NURSE]
    assert message["Subject"] == "Compte rendu"
    assert message["Date"].datetime == NOW
    assert message["Message-ID"] == composed.message_id == f"<{UUID(int=1).hex}@chu-nord.mssante.test>"
    assert message.get_all("MIME-Version") == ["1.0"]
    assert message.get_content_type() == "text/plain"
    assert message["Content-Transfer-Encoding"] == "8bit"
    assert message.get_content() == "Voilà le compte rendu.\r\n"
    assert composed.recipients == (PHARMACY, NURSE)
    assert composed.eight_bit  # submitted with BODY=8BITMIME
    assert b"LEF=C3=88VRE" in composed.data.split(b"\r\n\r\n")[0]  # RFC 2047: the header stays ASCII
    assert composed.data.split(b"\r\n\r\n")[0].isascii()


def test_the_same_inputs_give_the_same_bytes() -> None:
    first = compose(xdm_draft(), now=NOW, new_uuid=counting_uuids())
    second = compose(xdm_draft(), now=NOW, new_uuid=counting_uuids())
    assert first.data == second.data


def test_attachments_are_base64_with_sniffed_types_and_exact_bytes() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    files = [Attachment("ordonnance.pdf", PDF), Attachment("cr.xml", CDA), Attachment("radio.pdf", png),
             Attachment("notes.bin", b"\x00\x01")]  # fmt: skip
    composed = compose(draft(attachments=files), now=NOW)
    message = parse(composed.data)
    assert message.get_content_type() == "multipart/mixed"
    body, *_ = message.iter_parts()
    assert isinstance(body, EmailMessage)
    assert body.get_content() == "Bonjour.\r\n"
    assert attachments(message) == [
        ("ordonnance.pdf", "application/pdf", PDF),
        ("cr.xml", "text/xml", CDA),
        ("radio.pdf", "image/png", png),  # the content wins over a misleading name
        ("notes.bin", "application/octet-stream", b"\x00\x01"),
    ]
    for part in message.iter_attachments():
        assert part["Content-Transfer-Encoding"] == "base64"
        assert "MIME-Version" not in part  # only at the top (RFC 2045 §4)
    first = composed.attachments[0]
    assert (first.file_name, first.mime_type, first.size) == ("ordonnance.pdf", "application/pdf", len(PDF))
    check_bare_line_endings(composed.data)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("ordonnance.pdf", PDF, "application/pdf"),
        ("sans-extension", PDF, "application/pdf"),
        ("document.cda", b"\xef\xbb\xbf<?xml version='1.0'?><ClinicalDocument/>", "text/xml"),
        ("cr.xml", b"<ClinicalDocument/>", "text/xml"),
        ("photo.jpg", b"\xff\xd8\xff\xe0 JFIF", "image/jpeg"),
        ("notes.txt", b"texte", "text/plain"),
        ("compte-rendu.pdf.gz", b"\x1f\x8b\x08", "application/octet-stream"),
        ("inconnu", b"???", "application/octet-stream"),
    ],
)
def test_guess_mime_type(name: str, content: bytes, expected: str) -> None:
    assert guess_mime_type(name, content) == expected


def test_xdm_package_is_attached_and_validates_with_the_prescription_id() -> None:
    composed = compose(xdm_draft(), now=NOW, new_uuid=counting_uuids())
    message = parse(composed.data)
    found = attachments(message)
    assert [(name, mime_type) for name, mime_type, _ in found] == [
        ("ordonnance.pdf", "application/pdf"),  # readable without unzipping
        ("ordonnance.xml", "text/xml"),
        ("IHE_XDM.ZIP", "application/zip"),
    ]
    (part,) = find_xdm_parts(composed.data)  # as the relay finds it
    assert part.file_name == "IHE_XDM.ZIP"
    package = validate_package(part.data)
    assert package.prescription_id == PRESCRIPTION_ID
    assert package.patient_id == f"{INS}^^^&1.2.250.1.213.1.4.8&ISO"
    assert package.author_rpps == AUTHOR.rpps
    assert [(d.content, d.mime_type) for d in package.documents] == [(PDF, "application/pdf"), (CDA, "text/xml")]
    assert message["Subject"] == "XDM/1.0/DDM+Ordonnance DURAND Anne 01/12/1984"
    assert composed.subject_source == "xdm"
    assert message["X-MSS-CODECDA"] == "57833-6"
    assert message["X-MSS-INS"] == "O"
    assert message["X-MSS-Prescription-Id"] == PRESCRIPTION_ID
    assert composed.xdm is not None
    assert (composed.xdm.documents, composed.xdm.prescription_id, composed.xdm.originals_attached) == (
        2,
        PRESCRIPTION_ID,
        True,
    )
    check_bare_line_endings(composed.data)


def test_xdm_only_attaches_the_package_alone() -> None:
    composed = compose(xdm_draft(xdm=XdmRequest(AUTHOR, PATIENT, attach_originals=False)), now=NOW)
    assert [name for name, _, _ in attachments(parse(composed.data))] == ["IHE_XDM.ZIP"]


def test_xdm_subject_label_and_an_explicit_subject() -> None:
    labelled = compose(xdm_draft(xdm=XdmRequest(AUTHOR, PATIENT, label="Compte rendu"), prescription_id=None), now=NOW)
    assert labelled.subject == "XDM/1.0/DDM+Compte rendu DURAND Anne 01/12/1984"
    assert "X-MSS-Prescription-Id" not in parse(labelled.data)
    unlabelled = compose(xdm_draft(prescription_id=None), now=NOW)
    assert unlabelled.subject.startswith("XDM/1.0/DDM+Document DURAND")
    given = compose(xdm_draft(subject="Ordonnance de Mme Durand"), now=NOW)
    assert (given.subject, given.subject_source) == ("Ordonnance de Mme Durand", "given")
    assert parse(given.data)["X-MSS-INS"] == "O"  # the X-MSS fields do not depend on the subject


def test_a_patient_without_ins_says_so() -> None:
    patient = Patient("Durand", "Anne", date(1984, 12, 1), local_id="IPP-0042", local_oid="1.2.250.1.999.1")
    composed = compose(xdm_draft(xdm=XdmRequest(AUTHOR, patient)), now=NOW)
    assert parse(composed.data)["X-MSS-INS"] == "N"


def test_mdn_request_is_read_by_the_relay_as_asked() -> None:
    plain = compose(draft(), now=NOW)
    assert notification_request(plain.data).disposition_to is None
    asked = compose(draft(request_mdn=True), now=NOW)
    request = notification_request(asked.data)
    assert (request.disposition_to, request.final_delivery) == (SENDER, False)
    final = compose(draft(request_mdn=True, final_delivery=True), now=NOW)
    request = notification_request(final.data)
    assert (request.disposition_to, request.final_delivery) == (SENDER, True)
    assert "X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true" in parse(final.data)["Disposition-Notification-Options"]
    with pytest.raises(ComposeError, match="--request-mdn"):
        compose(draft(final_delivery=True), now=NOW)


def test_a_message_over_the_relay_limit_is_refused_before_sending() -> None:
    big = Attachment("scanner.pdf", PDF + b"\x00" * 40_000)
    size = compose(draft(attachments=[big]), now=NOW).size
    assert size > 40_000 * 4 // 3  # base64
    assert compose(draft(attachments=[big]), now=NOW, max_size=size).size == size
    with pytest.raises(MessageTooLarge) as refused:
        compose(draft(attachments=[big]), now=NOW, max_size=size - 1)
    assert (refused.value.size, refused.value.limit) == (size, size - 1)
    assert "smtp.max_message_size" in str(refused.value)


def test_a_plain_zip_is_not_labelled_as_an_xdm_package() -> None:
    archive = make_zip([("photos/radio.png", b"\x89PNG")])
    composed = compose(draft(attachments=[Attachment("radios.zip", archive)]), now=NOW)
    assert attachments(parse(composed.data)) == [("radios.zip", "application/octet-stream", archive)]
    assert find_xdm_parts(composed.data) == []  # the relay will not take it for a package


def test_a_ready_made_valid_package_travels_as_application_zip() -> None:
    ready = package()
    composed = compose(draft(attachments=[Attachment("IHE_XDM.ZIP", ready)]), now=NOW)
    assert attachments(parse(composed.data)) == [("IHE_XDM.ZIP", "application/zip", ready)]
    assert composed.xdm is None  # not ours: no X-MSS-* fields are made up for it


def test_recipients_are_submitted_once_each() -> None:
    composed = compose(draft(to=[PHARMACY, PHARMACY.upper()], cc=[NURSE, PHARMACY]), now=NOW)
    assert composed.recipients == (PHARMACY, NURSE)
    message = parse(composed.data)
    assert [a.addr_spec for a in message["To"].addresses] == [PHARMACY]
    assert [a.addr_spec for a in message["Cc"].addresses] == [NURSE]


def test_a_ready_made_package_that_the_relay_would_refuse_is_refused_here() -> None:
    broken = make_zip([("IHE_XDM/SUBSET01/DOC0001.PDF", PDF)])  # no METADATA.XML
    with pytest.raises(ComposeError, match=r"IHE_XDM.ZIP is not a valid XDM package \(.*METADATA.XML"):
        compose(draft(attachments=[Attachment("IHE_XDM.ZIP", broken)]), now=NOW)


def test_prescription_id_without_xdm_goes_in_its_header() -> None:
    composed = compose(draft(prescription_id="RX-42"), now=NOW)
    assert parse(composed.data)["X-MSS-Prescription-Id"] == "RX-42"
    with pytest.raises(ComposeError, match="bad prescription identifier"):
        compose(draft(prescription_id="RX 42\r\nBcc: x@y.test"), now=NOW)


def test_header_injection_through_the_subject_is_impossible() -> None:
    composed = compose(draft(subject="Ordonnance\r\nBcc: espion@ailleurs.test"), now=NOW)
    message = parse(composed.data)
    assert message["Subject"] == "Ordonnance Bcc: espion@ailleurs.test"
    assert "Bcc" not in message
    check_bare_line_endings(composed.data)


def test_bare_line_endings_in_the_body_become_crlf() -> None:
    composed = compose(draft(body="ligne 1\nligne 2\rligne 3\r\n"), now=NOW)
    check_bare_line_endings(composed.data)
    assert composed.data.endswith(b"ligne 1\r\nligne 2\r\nligne 3\r\n")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"to": []}, "at least one recipient"),
        ({"to": ["not an address"]}, "recipient: bad address"),
        ({"sender": "dr@exämple.test"}, "sender: bad address"),
        ({"subject": None}, "needs a subject"),
        ({"subject": "  "}, "non-empty line"),
        ({"body": None}, "nothing to send"),
        ({"body": "a\x00b"}, "NUL"),
        ({"attachments": [Attachment("../etc/passwd", b"x")]}, "bad attachment name"),
        ({"attachments": [Attachment("ok.pdf", PDF, "not a type")]}, "bad MIME type"),
        ({"xdm": XdmRequest(AUTHOR, PATIENT)}, "at least one document"),
        ({"xdm": XdmRequest(AUTHOR, PATIENT, label="\t"), "attachments": [Attachment("a.pdf", PDF)]}, "XDM: "),
    ],
)
def test_refusals_say_what_to_change(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ComposeError, match=message):
        compose(draft(**changes), now=NOW)


def test_a_naive_date_is_refused() -> None:
    with pytest.raises(ComposeError, match="time zone"):
        compose(draft(), now=datetime(2026, 11, 23, 14, 30))
    assert compose(draft(), now=datetime(2026, 11, 23, 14, 30, tzinfo=UTC)).size > 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DURAND Anne", ("DURAND", "Anne")),
        ("DE LA TOUR Jean-Pierre", ("DE LA TOUR", "Jean-Pierre")),
        ("  N'GUYEN   Thi Mai ", ("N'GUYEN", "Thi Mai")),
        ("Durand Anne Marie", ("Durand", "Anne Marie")),
        ("LEFÈVRE Éloïse", ("LEFÈVRE", "Éloïse")),
        ("DURAND MARTIN", ("DURAND", "MARTIN")),  # all capitals: the first word, as with none
    ],
)
def test_split_patient_name(name: str, expected: tuple[str, str]) -> None:
    assert split_patient_name(name) == expected


@pytest.mark.parametrize("name", ["DURAND", "", "   "])
def test_split_patient_name_refuses_what_it_cannot_split(name: str) -> None:
    with pytest.raises(ComposeError, match="--patient-last"):
        split_patient_name(name)


@given(subject=st.text(max_size=300), body=st.text(max_size=2000), name=st.text(max_size=80))
def test_any_text_gives_a_canonical_message_or_a_compose_error(subject: str, body: str, name: str) -> None:
    """Whatever the caller passes as subject, body and display name: CRLF only (the relay's check passes), the one
    From is the sender, no field is injected, and the subject reads back as given (whitespace collapsed)."""
    try:
        composed = compose(draft(subject=subject, body=body, sender_name=name), now=NOW)
    except ComposeError:
        return
    check_bare_line_endings(composed.data)
    check_header_from(header_from(composed.data), SENDER)
    message = parse(composed.data)
    assert sorted(message.keys()) == sorted(
        ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"]
    )
    assert message["Subject"] == " ".join(subject.split())
    assert message.get_content().replace("\r\n", "\n") == _normalised(body)


def _normalised(body: str) -> str:
    """The body as its lines (a CR, an LF or a CRLF ends one, and nothing else does), each ended by a newline."""
    lines = re.split("\r\n|\r|\n", body)
    if lines[-1] == "" and len(lines) > 1:
        lines.pop()
    return "".join(line + "\n" for line in lines)
