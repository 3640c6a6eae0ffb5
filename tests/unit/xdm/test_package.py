"""Building IHE_XDM.ZIP: layout, metadata a receiving XDM importer recognises, round trip through validation."""

from __future__ import annotations

import hashlib
import io
import xml.etree.ElementTree as ET
import zipfile
from datetime import date, datetime

import pytest

from mssecure.errors import MssecureError
from mssecure.xdm import Author, Document, Patient, XdmError, build_package, check_ins, ins_key, validate_package
from tests.unit.xdm.samples import (
    AUTHOR,
    CDA,
    CDA_PATH,
    INS,
    METADATA_PATH,
    PATIENT,
    PDF,
    PDF_PATH,
    PRESCRIPTION_ID,
    RIM,
    RPPS,
    counting_uuids,
    entries,
    package,
    slot_values,
)

LCM = "{urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0}"
DOCUMENT_ENTRY = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"


def metadata_root(data: bytes) -> ET.Element:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return ET.fromstring(archive.read(METADATA_PATH))  # noqa: S314 - our own output


def test_layout_follows_the_xdm_zip_profile() -> None:
    names = [info.filename for info, _ in entries(package())]
    assert names == ["README.TXT", "INDEX.HTM", METADATA_PATH, PDF_PATH, CDA_PATH]


def test_round_trip_keeps_documents_author_patient_and_prescription() -> None:
    checked = validate_package(package())
    assert [document.path for document in checked.documents] == [PDF_PATH, CDA_PATH]
    pdf, cda = checked.documents
    assert (pdf.content, pdf.mime_type, pdf.size, pdf.title) == (PDF, "application/pdf", len(PDF), "ordonnance.pdf")
    assert (cda.content, cda.mime_type, cda.title, cda.type_code) == (CDA, "text/xml", "Ordonnance (CDA)", "57833-6")
    assert pdf.sha1 == hashlib.sha1(PDF, usedforsecurity=False).hexdigest()
    assert pdf.sha256 == hashlib.sha256(PDF).hexdigest()
    assert pdf.sha256_declared
    assert checked.patient_id == f"{INS}^^^&1.2.250.1.213.1.4.8&ISO"
    assert checked.author_id_nat == "8" + RPPS
    assert checked.author_rpps == RPPS
    assert checked.prescription_id == PRESCRIPTION_ID
    assert checked.title == "Ordonnance"
    assert checked.unlisted == ()


def test_metadata_is_a_submit_objects_request_with_the_xds_fields() -> None:
    root = metadata_root(package())
    assert root.tag == f"{LCM}SubmitObjectsRequest"
    documents = root.findall(f"{RIM}RegistryObjectList/{RIM}ExtrinsicObject")
    assert [d.get("objectType") for d in documents] == [DOCUMENT_ENTRY, DOCUMENT_ENTRY]
    assert [d.get("mimeType") for d in documents] == ["application/pdf", "text/xml"]
    slots = {slot.get("name"): [v.text for v in slot.iter(f"{RIM}Value")] for slot in documents[0].iter(f"{RIM}Slot")}
    assert slots["hash"] == [hashlib.sha1(PDF, usedforsecurity=False).hexdigest()]
    assert slots["urn:mssecure:sha256"] == [hashlib.sha256(PDF).hexdigest()]
    assert slots["size"] == [str(len(PDF))]
    assert slots["URI"] == ["DOC0001.PDF"]
    assert slots["creationTime"] == ["20261123143000"]
    assert slots["sourcePatientId"] == [f"{INS}^^^&1.2.250.1.213.1.4.8&ISO"]
    assert "PID-7|19841201" in slots["sourcePatientInfo"]
    assert slots["urn:mssecure:prescription-id"] == [PRESCRIPTION_ID]
    assert slots["authorPerson"] == [f"8{RPPS}^Martin^Claire^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"]
    identifiers = {i.get("identificationScheme"): i.get("value") for i in documents[0].iter(f"{RIM}ExternalIdentifier")}
    assert identifiers["urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"] == f"{INS}^^^&1.2.250.1.213.1.4.8&ISO"
    assert str(identifiers["urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"]).startswith("2.25.")
    type_codes = [
        c.get("nodeRepresentation")
        for c in documents[1].iter(f"{RIM}Classification")
        if c.get("classificationScheme") == "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
    ]
    assert type_codes == ["57833-6"]
    package_element = root.find(f"{RIM}RegistryObjectList/{RIM}RegistryPackage")
    assert package_element is not None
    assert package_element.get("id") == "SubmissionSet01"
    nodes = [c.get("classificationNode") for c in root.iter(f"{RIM}Classification") if c.get("classificationNode")]
    assert nodes == ["urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"]
    associations = root.findall(f"{RIM}RegistryObjectList/{RIM}Association")
    assert [a.get("targetObject") for a in associations] == ["Document01", "Document02"]


def test_same_inputs_give_the_same_bytes() -> None:
    assert package(new_uuid=counting_uuids()) == package(new_uuid=counting_uuids())


def test_without_prescription_no_prescription_slot() -> None:
    data = package(prescription_id=None)
    assert slot_values(metadata_root(data), "urn:mssecure:prescription-id") == []
    assert validate_package(data).prescription_id is None


def test_patient_without_ins_is_identified_locally() -> None:
    patient = Patient("Durand", "Anne", date(1984, 12, 1), local_id="IPP-42", local_oid="1.2.250.1.999.1")
    checked = validate_package(package(patient=patient))
    assert checked.patient_id == "IPP-42^^^&1.2.250.1.999.1&ISO"


def test_index_and_readme_name_the_documents_not_the_patient() -> None:
    files = {info.filename: content for info, content in entries(package())}
    assert b"DOC0001.PDF" in files["INDEX.HTM"]
    assert b"mssecure" in files["README.TXT"]
    assert b"Durand" not in files["INDEX.HTM"] + files["README.TXT"]


def test_document_names_follow_mime_types() -> None:
    documents = [
        Document("a.pdf", b"1", "application/pdf"),
        Document("b.jpeg", b"2", "image/jpeg"),
        Document("c.dcm", b"3", "application/dicom"),
        Document("d", b"4", "application/x-unknown"),
    ]
    names = [info.filename for info, _ in entries(package(documents=documents))][3:]
    assert names == [f"IHE_XDM/SUBSET01/{n}" for n in ("DOC0001.PDF", "DOC0002.JPG", "DOC0003.DCM", "DOC0004.BIN")]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: package(documents=[]), "at least one document"),
        (lambda: package(title="  "), "title"),
        (lambda: package(prescription_id="RX 1\r\nBcc: x"), "prescription identifier"),
        (lambda: package(now=datetime(2026, 1, 1)), "time zone"),
        (lambda: Author("Martin", "Claire", "10003456787"), "Luhn"),
        (lambda: Author("Mar^tin", "Claire", RPPS), "author family name"),
        (lambda: Patient("Durand", "Anne", date(1984, 12, 1), ins=INS[:-2] + "00"), "key does not match"),
        (lambda: Patient("Durand", "Anne", date(1984, 12, 1), ins="12345"), "15 characters"),
        (lambda: Patient("Durand", "Anne", date(1984, 12, 1)), "needs an INS"),
        (lambda: Patient("Durand", "Anne", date(1984, 12, 1), sex="X", ins=INS), "sex"),
        (lambda: Document("a.pdf", b"", "pdf"), "MIME type"),
    ],
)
def test_building_refuses_bad_inputs(make: object, reason: str) -> None:
    with pytest.raises(XdmError, match=reason) as caught:
        make()  # type: ignore[operator]
    assert isinstance(caught.value, MssecureError)
    assert "\n" not in str(caught.value)


def test_ins_with_spaces_and_corsica() -> None:

    assert check_ins(" ".join([INS[:1], INS[1:3], INS[3:5], INS[5:7], INS[7:10], INS[10:13], INS[13:]])) == INS
    corsica = "184012A123456"
    assert check_ins(corsica + ins_key(corsica)) == corsica + ins_key(corsica)
    assert ins_key("1840119123456") == ins_key(corsica)


def test_build_package_rejects_many_documents_cheaply() -> None:
    documents = [Document(f"{n}.txt", b"x", "text/plain") for n in range(10_000)]
    with pytest.raises(XdmError, match="at most 9999"):
        build_package(documents, author=AUTHOR, patient=PATIENT, title="t", now=datetime.now().astimezone())
