"""Prescriptions in XDM packages through two real relays: a valid package arrives checked, an invalid one is refused
with its reason archived, and a prescription delivered to a second pharmacy is flagged (or refused)."""

from __future__ import annotations

import json
import smtplib
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.policy import SMTP
from io import BytesIO
from pathlib import Path

import pytest

from mssecure.xdm import Author, Document, Patient, build_package, find_xdm_parts, ins_key, validate_package
from tests.integration.test_relay import A_DOMAIN, B_DOMAIN, submit
from tests.integration.test_relay_archive import events, wait_for_event
from tests.support.relay import RelayOperator, rpps

NIR = "1500159350012"
INS = NIR + ins_key(NIR)
PDF = b"%PDF-1.4\n% ordonnance\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"


def package(prescription_id: str, *, content: bytes = PDF) -> bytes:
    return build_package(
        [Document("ordonnance.pdf", content, "application/pdf")],
        author=Author("LEFÈVRE", "Camille", rpps(1)),
        patient=Patient("DUPONT", "Jean", date(1950, 1, 2), ins=INS),
        title="Ordonnance",
        prescription_id=prescription_id,
        now=datetime(2026, 11, 23, 9, 0, tzinfo=UTC),
    )


def message(sender: str, recipient: str, zip_bytes: bytes, *, message_id: str, prescription_id: str = "") -> bytes:
    mail = EmailMessage(policy=SMTP)
    mail["From"] = sender
    mail["To"] = recipient
    mail["Subject"] = "XDM/1.0/DDM+Ordonnance DUPONT Jean 02/01/1950"
    mail["Message-ID"] = message_id
    if prescription_id:
        mail["X-MSS-Prescription-Id"] = prescription_id
    mail.set_content("Ordonnance en pièce jointe.\n")
    mail.add_attachment(PDF, maintype="application", subtype="pdf", filename="ordonnance.pdf")
    mail.add_attachment(zip_bytes, maintype="application", subtype="octet-stream", filename="IHE_XDM.ZIP")
    return mail.as_bytes()


def tampered(zip_bytes: bytes) -> bytes:
    """The same package with its PDF changed after the metadata was written (the hash no longer matches)."""
    out = BytesIO()
    with zipfile.ZipFile(BytesIO(zip_bytes)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith(".PDF"):
                data = data.replace(b"ordonnance", b"ORDONNANCE")
            target.writestr(info, data)
    return out.getvalue()


class Operators:
    def __init__(self, root: Path, **b_delivery: object) -> None:
        self.a = RelayOperator(root / "a", A_DOMAIN)
        self.b = RelayOperator(root / "b", B_DOMAIN, **b_delivery)
        self.doctor = self.a.person("camille.lefevre", 1)
        self.pharmacy = self.b.organization("pharmacie", 3)
        self.other_pharmacy = self.b.organization("pharmacie.gare", 5, "Pharmacie de la Gare")
        self.a.trust(self.b)
        self.b.trust(self.a)
        self.a.start()
        self.b.start()

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()


@pytest.fixture(scope="module")
def operators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operators]:
    pair = Operators(tmp_path_factory.mktemp("xdm"))
    yield pair
    pair.stop()


def test_a_valid_package_arrives_intact_and_is_indexed(operators: Operators) -> None:
    data = message(operators.doctor, operators.pharmacy, package("RX-VALID-1"), message_id="<xdm-1@chu-nord.test>",
                   prescription_id="RX-VALID-1")  # fmt: skip
    assert submit(operators.a, operators.doctor, operators.doctor, [operators.pharmacy], data) == {}
    delivered = operators.b.wait_for(operators.pharmacy, 1)[-1]
    (part,) = find_xdm_parts(delivered)
    assert part.found_by == "file name"
    checked = validate_package(part.data)
    assert checked.prescription_id == "RX-VALID-1"
    assert checked.author_rpps == rpps(1)
    head = delivered.split(b"\r\n\r\n", 1)[0]
    assert b"X-MSSecure-Prescription-Duplicate" not in head
    assert b"\r\nX-MSS-Prescription-Id: RX-VALID-1\r\n" in head  # the signed value, shown outside the signature
    (received,) = wait_for_event(operators.b, "prescription.received", "--message-id", "<xdm-1@chu-nord.test>")
    assert received["reason"] == "prescription RX-VALID-1"
    assert received["recipients"] == [operators.pharmacy]


def test_an_invalid_package_is_refused_at_submission_with_the_reason(operators: Operators) -> None:
    data = message(operators.doctor, operators.pharmacy, tampered(package("RX-BAD-1")),
                   message_id="<xdm-bad@chu-nord.test>")  # fmt: skip
    with pytest.raises(smtplib.SMTPDataError) as refused:
        submit(operators.a, operators.doctor, operators.doctor, [operators.pharmacy], data)
    assert refused.value.smtp_code == 550
    text = refused.value.smtp_error.decode()
    assert text.startswith("5.6.0 invalid XDM package: ")
    assert "SHA-1" in text or "hash" in text
    (event,) = wait_for_event(operators.a, "submission.refused", "--address", operators.pharmacy)[-1:]
    assert event["reason"].startswith("invalid XDM package (file name): ")


def test_an_ordinary_zip_attachment_is_delivered(operators: Operators) -> None:
    out = BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes.txt", "not a package")
    mail = EmailMessage(policy=SMTP)
    mail["From"], mail["To"], mail["Subject"] = operators.doctor, operators.pharmacy, "archive"
    mail.set_content("see attached\n")
    mail.add_attachment(out.getvalue(), maintype="application", subtype="zip", filename="notes.zip")
    before = len(operators.b.messages(operators.pharmacy))
    assert submit(operators.a, operators.doctor, operators.doctor, [operators.pharmacy], mail.as_bytes()) == {}
    operators.b.wait_for(operators.pharmacy, before + 1)


def test_the_same_prescription_to_a_second_pharmacy_is_flagged(operators: Operators) -> None:
    first = message(operators.doctor, operators.pharmacy, package("RX-TWICE-1"), message_id="<xdm-2a@chu-nord.test>")
    assert submit(operators.a, operators.doctor, operators.doctor, [operators.pharmacy], first) == {}
    wait_for_event(operators.b, "prescription.received", "--message-id", "<xdm-2a@chu-nord.test>")
    second = message(operators.doctor, operators.other_pharmacy, package("RX-TWICE-1"),
                     message_id="<xdm-2b@chu-nord.test>")  # fmt: skip
    assert submit(operators.a, operators.doctor, operators.doctor, [operators.other_pharmacy], second) == {}
    delivered = operators.b.wait_for(operators.other_pharmacy, 1)[-1]
    head = delivered.split(b"\r\n\r\n", 1)[0].decode()
    assert "X-MSSecure-Prescription-Duplicate: RX-TWICE-1; first delivered " in head
    assert operators.pharmacy not in head  # the other pharmacy is not named to this one
    (flagged,) = events(operators.b, "--type", "prescription.duplicate", "--message-id", "<xdm-2b@chu-nord.test>")
    assert flagged["outcome"] == "flagged"
    assert flagged["recipients"] == [operators.other_pharmacy]
    # The archive indexes the prescription identifier: both deliveries, in order.
    found = events(operators.b, "--prescription", "RX-TWICE-1")
    assert [(e["type"], e["message_id"]) for e in found] == [
        ("prescription.received", "<xdm-2a@chu-nord.test>"),
        ("prescription.duplicate", "<xdm-2b@chu-nord.test>"),
    ]


def test_a_forged_duplicate_header_is_removed(operators: Operators) -> None:
    data = message(operators.doctor, operators.pharmacy, package("RX-FORGED-1"), message_id="<xdm-3@chu-nord.test>")
    data = b"X-MSSecure-Prescription-Duplicate: RX-FORGED-1; forged\r\n" + data
    before = len(operators.b.messages(operators.pharmacy))
    assert submit(operators.a, operators.doctor, operators.doctor, [operators.pharmacy], data) == {}
    delivered = operators.b.wait_for(operators.pharmacy, before + 1)
    assert not any(b"; forged" in m.split(b"\r\n\r\n", 1)[0] for m in delivered)


def test_refuse_mode_refuses_the_second_delivery_and_the_sender_gets_a_dsn(tmp_path: Path) -> None:
    pair = Operators(tmp_path, duplicate_prescription="refuse")
    try:
        first = message(pair.doctor, pair.pharmacy, package("RX-REFUSE-1"), message_id="<xdm-4a@chu-nord.test>")
        assert submit(pair.a, pair.doctor, pair.doctor, [pair.pharmacy], first) == {}
        pair.b.wait_for(pair.pharmacy, 1)
        second = message(pair.doctor, pair.other_pharmacy, package("RX-REFUSE-1"),
                         message_id="<xdm-4b@chu-nord.test>")  # fmt: skip
        assert submit(pair.a, pair.doctor, pair.doctor, [pair.other_pharmacy], second) == {}
        dsn = pair.a.wait_for(pair.doctor, 1)[-1]  # B refused at DATA; A bounces it to the doctor
        assert b"Action: failed" in dsn
        assert b"already delivered to another mailbox" in b" ".join(dsn.split())  # the diagnostic may be folded
        assert pair.b.messages(pair.other_pharmacy) == []
        refused = wait_for_event(pair.b, "inbound.refused", "--address", pair.other_pharmacy)
        assert refused[-1]["reason"].startswith("prescription RX-REFUSE-1 already delivered")
    finally:
        pair.stop()
    assert json.loads(pair.b.ok("archive", "verify", "--json").output)["ok"] is True
