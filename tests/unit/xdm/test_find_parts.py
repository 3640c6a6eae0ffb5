"""Finding XDM attachments in a message, however the sending client labelled them."""

from __future__ import annotations

from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default

import pytest

from mssecure.xdm import XdmPart, find_xdm_parts, validate_package
from tests.unit.xdm.samples import PDF, make_zip, package


def message(*attachments: tuple[bytes, str, str | None]) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "dr.martin@chu-nord.mssante.test"
    mail["To"] = "pharmacie@pharma.mssante.test"
    mail["Subject"] = "XDM/1.0/DDM+Ordonnance DURAND Anne 01/12/1984"
    mail.set_content("Veuillez trouver l'ordonnance ci-jointe.")
    for data, content_type, name in attachments:
        maintype, subtype = content_type.split("/")
        mail.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return mail


@pytest.mark.parametrize(
    ("content_type", "name", "found_by"),
    [
        ("application/zip", "IHE_XDM.ZIP", "file name"),
        ("application/zip", "ordonnance.zip", "content type"),
        ("application/x-zip-compressed", None, "content type"),
        ("application/octet-stream", "ihe_xdm.zip", "file name"),
        ("application/octet-stream", "pieces.bin", "content"),
        ("application/octet-stream", None, "content"),
    ],
)
def test_xdm_found_under_each_labelling(content_type: str, name: str | None, found_by: str) -> None:
    data = package()
    parts = find_xdm_parts(message((PDF, "application/pdf", "a.pdf"), (data, content_type, name)))
    assert parts == [XdmPart(name, content_type, found_by, data)]
    assert len(validate_package(parts[0].data).documents) == 2


def test_raw_bytes_are_parsed() -> None:
    raw = message((package(), "application/octet-stream", None)).as_bytes()
    parts = find_xdm_parts(raw)
    assert [part.found_by for part in parts] == ["content"]
    assert parts[0].data == package()
    assert find_xdm_parts(BytesParser(policy=default).parsebytes(raw)) == parts


def test_other_attachments_are_not_xdm() -> None:
    plain_zip = make_zip([("photos/a.jpg", b"\xff\xd8")])
    mail = message(
        (PDF, "application/pdf", "ordonnance.pdf"),
        (plain_zip, "application/octet-stream", "photos.bin"),  # a zip, but no IHE_XDM/ inside
        (b"PK\x03\x04 broken", "application/octet-stream", None),
        (PDF, "application/octet-stream", "scan.bin"),
    )
    assert find_xdm_parts(mail) == []


def test_misnamed_non_zip_is_returned_for_validation_to_refuse() -> None:
    parts = find_xdm_parts(message((PDF, "application/pdf", "IHE_XDM.ZIP")))
    assert [part.found_by for part in parts] == ["file name"]


def test_several_packages_in_order() -> None:
    first, second = package(), package(prescription_id="RX-2")
    mail = message((first, "application/zip", "IHE_XDM.ZIP"), (second, "application/octet-stream", None))
    assert [part.data for part in find_xdm_parts(mail)] == [first, second]


def test_forwarded_message_is_searched() -> None:
    inner = message((package(), "application/zip", "IHE_XDM.ZIP"))
    outer = message()
    outer.add_attachment(inner)
    assert [part.found_by for part in find_xdm_parts(outer)] == ["file name"]
