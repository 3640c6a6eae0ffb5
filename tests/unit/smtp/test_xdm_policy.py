"""The relay's XDM and prescription rules, on messages built in memory (no relay, no database)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from mssecure.errors import Refused
from mssecure.smtp import replies
from mssecure.smtp.processing import prescription_id, xdm_packages
from mssecure.xdm import Author, Document, Patient, build_package, ins_key
from tests.support.relay import rpps

NIR = "2841299123456"
INS = NIR + ins_key(NIR)


def package(prescription: str | None = "RX-1") -> bytes:
    return build_package([Document("ordonnance.pdf", b"%PDF-1.4 test", "application/pdf")],
                         author=Author("MARTIN", "Claire", rpps(7)),
                         patient=Patient("DURAND", "Anne", date(1984, 12, 1), ins=INS), title="Ordonnance",
                         prescription_id=prescription, now=datetime(2026, 11, 23, tzinfo=UTC))  # fmt: skip


def message(*attachments: tuple[bytes, str, str], header: str | None = None) -> bytes:
    mail = EmailMessage(policy=SMTP)
    mail["From"], mail["To"], mail["Subject"] = "a@chu-nord.test", "b@pharma-sud.test", "XDM/1.0/DDM+Ordonnance"
    if header:
        mail["X-MSS-Prescription-Id"] = header
    mail.set_content("body\n")
    for data, content_type, name in attachments:
        maintype, subtype = content_type.split("/")
        mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return mail.as_bytes()


def test_a_message_without_attachments_is_not_parsed_and_has_no_package() -> None:
    assert xdm_packages(message()) == []
    assert prescription_id(message(), []) is None


@pytest.mark.parametrize("content_type", ["application/zip", "application/octet-stream"])
def test_a_valid_package_is_found_however_it_is_labelled(content_type: str) -> None:
    data = message((package(), content_type, "IHE_XDM.ZIP"))
    (checked,) = xdm_packages(data)
    assert checked.prescription_id == "RX-1"
    assert prescription_id(data, [checked]) == "RX-1"


def test_octet_stream_without_the_xdm_name_is_found_by_content() -> None:
    (checked,) = xdm_packages(message((package(), "application/octet-stream", "attachment.bin")))
    assert checked.documents[0].mime_type == "application/pdf"


def test_an_invalid_package_is_refused_with_an_ascii_reason() -> None:
    broken = package()[:-40]  # truncated: the central directory is gone
    with pytest.raises(Refused) as refused:
        xdm_packages(message((broken, "application/zip", "IHE_XDM.ZIP")))
    assert refused.value.reply.code == replies.XDM_INVALID.code
    assert refused.value.reply.enhanced == "5.6.0"
    assert str(refused.value.reply).startswith("550 5.6.0 invalid XDM package: ")
    assert str(refused.value.reply).isascii()
    assert refused.value.reason.startswith("invalid XDM package (file name): ")


def test_the_header_alone_names_the_prescription() -> None:
    assert prescription_id(message(header="RX-HEADER"), []) == "RX-HEADER"


def test_the_header_and_the_package_must_agree() -> None:
    data = message((package("RX-1"), "application/zip", "IHE_XDM.ZIP"), header="RX-2")
    with pytest.raises(Refused) as refused:
        prescription_id(data, xdm_packages(data))
    assert refused.value.reply == replies.PRESCRIPTION_CONFLICT
    same = message((package("RX-1"), "application/zip", "IHE_XDM.ZIP"), header="RX-1")
    assert prescription_id(same, xdm_packages(same)) == "RX-1"


def test_two_packages_with_different_prescriptions_are_refused() -> None:
    data = message((package("RX-1"), "application/zip", "IHE_XDM.ZIP"),
                   (package("RX-2"), "application/zip", "second.zip"))  # fmt: skip
    with pytest.raises(Refused) as refused:
        prescription_id(data, xdm_packages(data))
    assert refused.value.reply == replies.PRESCRIPTION_CONFLICT


def test_an_ordinary_zip_is_not_taken_for_a_package() -> None:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes.txt", "not a package")
    assert xdm_packages(message((out.getvalue(), "application/zip", "notes.zip"))) == []
    # Named IHE_XDM.ZIP, it claims to be one, and is refused.
    with pytest.raises(Refused):
        xdm_packages(message((out.getvalue(), "application/zip", "IHE_XDM.ZIP")))
