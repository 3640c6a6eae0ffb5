"""MSSanté conventions for a message that carries an XDM package: its subject and its ``X-MSS-*`` header fields.

Pure functions: they return the subject and (name, value) pairs; composing the MIME message is the caller's.

Sources and our reading of them:

- Subject ``XDM/1.0/DDM`` is the IHE XDM e-mail convention (ITI TF-2b §3.32.4.1.4: a message carrying an XDM zip
  says so in its subject); the DMP-compatible practice appends ``+<label>`` then the patient's identity traits, so
  a person reading a mailbox sees whose document it is: ``XDM/1.0/DDM+<label> <NOM> <prénom> <JJ/MM/AAAA>``, the
  family name upper-cased as identity traits are written in France (référentiel national d'identitovigilance),
  the birth date day/month/year. We found no normative text for the part after ``+``; this is our reading.
- ``X-MSS-CODECDA`` (Référentiel socle MSSanté #2, exigence ECO.2.4.1): present only when the XDM package holds CDA
  documents; its value is the ``code`` of each CDA header (a LOINC code, e.g. ``57833-6``, CI-SIS "Volet
  Structuration Minimale"). With several CDA documents the field is "multi-valué": we write one field whose values
  are the distinct codes in document order, separated by ``", "`` (our reading; one field keeps header order and
  signatures simple).
- ``X-MSS-INS`` (ECO.2.4.2): ``O`` when the patient's INS is carried (which the sender may do only for a qualified
  identity), ``N`` otherwise. The référentiel asks for it when CDA documents travel in XDM; we set it on every
  message with an XDM package, which is a superset and costs receivers nothing.
- ``X-MSS-Prescription-Id`` is ours: the prescription identifier also carried in the XDM metadata, so the relay and
  pharmacy software can index a prescription without opening the zip.
"""

from __future__ import annotations

from collections.abc import Sequence

from mssecure.xdm._errors import XdmError
from mssecure.xdm.cda import cda_code
from mssecure.xdm.records import Document, Patient, check_prescription_id

__all__ = [
    "CODECDA_HEADER",
    "INS_HEADER",
    "PRESCRIPTION_ID_HEADER",
    "SUBJECT_PREFIX",
    "mss_headers",
    "xdm_subject",
]

SUBJECT_PREFIX = "XDM/1.0/DDM"
CODECDA_HEADER = "X-MSS-CODECDA"
INS_HEADER = "X-MSS-INS"
PRESCRIPTION_ID_HEADER = "X-MSS-Prescription-Id"


def xdm_subject(label: str, patient: Patient) -> str:
    """``XDM/1.0/DDM+<label> <NOM> <prénom> <JJ/MM/AAAA>`` for a message carrying an XDM package about ``patient``."""
    text = " ".join(label.split())
    if not text or not text.isprintable():
        raise XdmError("the subject label must be a non-empty line of text")
    return f"{SUBJECT_PREFIX}+{text} {patient.family_name.upper()} {patient.given_name} {patient.birth_date:%d/%m/%Y}"


def mss_headers(
    documents: Sequence[Document], patient: Patient, prescription_id: str | None = None
) -> list[tuple[str, str]]:
    """The MSSanté header fields of a message whose XDM package holds ``documents`` about ``patient``."""
    codes: list[str] = []
    for document in documents:
        cda = cda_code(document.content, document.mime_type)
        if cda is not None and cda.code not in codes:
            codes.append(cda.code)
    headers: list[tuple[str, str]] = []
    if codes:
        headers.append((CODECDA_HEADER, ", ".join(codes)))
    headers.append((INS_HEADER, "O" if patient.ins else "N"))
    if prescription_id is not None:
        headers.append((PRESCRIPTION_ID_HEADER, check_prescription_id(prescription_id)))
    return headers
