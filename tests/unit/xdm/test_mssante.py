"""The MSSanté conventions: subject line, X-MSS-CODECDA, X-MSS-INS, the prescription header; CDA recognition."""

from __future__ import annotations

from datetime import date

import pytest

from mssecure.xdm import (
    CODECDA_HEADER,
    INS_HEADER,
    PRESCRIPTION_ID_HEADER,
    CdaCode,
    Document,
    Patient,
    XdmError,
    cda_code,
    mss_headers,
    xdm_subject,
)
from tests.unit.xdm.samples import CDA, DOCUMENTS, PATIENT, PDF, PRESCRIPTION_ID

LOCAL_PATIENT = Patient("de la Tour", "Jean-Éric", date(2001, 3, 9), local_id="IPP-7", local_oid="1.2.3.4")


def cda(code: str) -> Document:
    return Document(f"{code}.xml", CDA.replace(b"57833-6", code.encode()), "text/xml")


def test_subject_convention() -> None:
    assert xdm_subject("Ordonnance", PATIENT) == "XDM/1.0/DDM+Ordonnance DURAND Anne 01/12/1984"
    assert xdm_subject(" Compte  rendu ", LOCAL_PATIENT) == "XDM/1.0/DDM+Compte rendu DE LA TOUR Jean-Éric 09/03/2001"


@pytest.mark.parametrize("label", ["", "   ", "\r\n", "Ordonnance\x00"])
def test_subject_refuses_empty_or_control_labels(label: str) -> None:
    with pytest.raises(XdmError, match="subject label"):
        xdm_subject(label, PATIENT)


def test_subject_folds_line_breaks_into_spaces() -> None:
    subject = xdm_subject("Ordonnance\r\nBcc: x@y.test", PATIENT)
    assert subject == "XDM/1.0/DDM+Ordonnance Bcc: x@y.test DURAND Anne 01/12/1984"


def test_headers_with_cda_and_ins() -> None:
    assert mss_headers(DOCUMENTS, PATIENT, PRESCRIPTION_ID) == [
        (CODECDA_HEADER, "57833-6"),
        (INS_HEADER, "O"),
        (PRESCRIPTION_ID_HEADER, PRESCRIPTION_ID),
    ]


def test_no_codecda_without_cda_and_n_without_ins() -> None:
    assert mss_headers([Document("a.pdf", PDF, "application/pdf")], LOCAL_PATIENT) == [(INS_HEADER, "N")]


def test_codecda_is_multivalued_over_distinct_codes() -> None:
    documents = [cda("11488-4"), Document("a.pdf", PDF, "application/pdf"), cda("57833-6"), cda("11488-4")]
    assert mss_headers(documents, PATIENT)[0] == (CODECDA_HEADER, "11488-4, 57833-6")


def test_header_names_are_the_mssante_ones() -> None:
    assert (CODECDA_HEADER, INS_HEADER, PRESCRIPTION_ID_HEADER) == (
        "X-MSS-CODECDA",
        "X-MSS-INS",
        "X-MSS-Prescription-Id",
    )


def test_prescription_header_value_is_checked() -> None:
    with pytest.raises(XdmError, match="prescription identifier"):
        mss_headers(DOCUMENTS, PATIENT, "RX\r\nBcc: evil@x.test")


@pytest.mark.parametrize(
    ("content", "mime_type", "expected"),
    [
        (CDA, "text/xml", CdaCode("57833-6", "2.16.840.1.113883.6.1")),
        (CDA, "application/xml", CdaCode("57833-6", "2.16.840.1.113883.6.1")),
        (CDA, "application/pdf", None),  # only XML documents are read
        (
            b'<ClinicalDocument xmlns="urn:hl7-org:v3"><code code="X1"/></ClinicalDocument>',
            "text/xml",
            CdaCode("X1", "2.16.840.1.113883.6.1"),
        ),
        (b"<ClinicalDocument><code code='X1'/></ClinicalDocument>", "text/xml", None),  # no HL7 v3 namespace
        (b'<ClinicalDocument xmlns="urn:hl7-org:v3"/>', "text/xml", None),  # no code
        (b'<ClinicalDocument xmlns="urn:hl7-org:v3"><code code="a,b"/></ClinicalDocument>', "text/xml", None),
        (b"<not xml", "text/xml", None),
        (
            b'<!DOCTYPE x [<!ENTITY e "57833-6">]><ClinicalDocument xmlns="urn:hl7-org:v3"><code code="&e;"/>'
            b"</ClinicalDocument>",
            "text/xml",
            None,
        ),
    ],
)
def test_cda_code(content: bytes, mime_type: str, expected: CdaCode | None) -> None:
    assert cda_code(content, mime_type) == expected
