"""XDS.b metadata of an XDM submission set: the ebRIM ``SubmitObjectsRequest`` in ``METADATA.XML``, both ways.

IHE ITI TF-3 §4.2 (metadata attributes and their ebRIM encoding) and ITI TF-2b §3.32 (XDM: one METADATA.XML per
``IHE_XDM/SUBSETnn`` directory). We write what a receiving XDM importer needs to file each document: per document an
``ExtrinsicObject`` of the stable DocumentEntry type with the slots hash (SHA-1 hex, as XDS requires), size,
creationTime, languageCode, sourcePatientId, sourcePatientInfo and URI (the file name in the subset directory), the
author classification (authorPerson in XCN form: IdNat_PS, names, ANS authority, ``IDNPS``), confidentialityCode,
formatCode (MIME type sufficient), typeCode for CDA documents (the CDA's own code), the patientId and uniqueId external
identifiers; a ``RegistryPackage`` classified as the SubmissionSet; one HasMember association per document.

Two slots are ours, ignored by software that does not know them:

- ``urn:mssecure:sha256``: the SHA-256 of the document in hex, because SHA-1 alone no longer resists collisions;
- ``urn:mssecure:prescription-id``: the prescription identifier, on each DocumentEntry of a prescription.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from mssecure.xdm._errors import XdmError
from mssecure.xdm.records import RPPS_AUTHORITY_OID, Author, Patient

__all__ = [
    "LCM",
    "PRESCRIPTION_ID_SLOT",
    "RIM",
    "SHA256_SLOT",
    "DocumentEntry",
    "EntryFacts",
    "SubmissionSet",
    "build_metadata",
    "read_metadata",
]

LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
ET.register_namespace("lcm", LCM)  # the prefixes every XDS example uses, so the file reads as people expect
ET.register_namespace("rim", RIM)

SHA256_SLOT = "urn:mssecure:sha256"
PRESCRIPTION_ID_SLOT = "urn:mssecure:prescription-id"

# IHE ITI TF-3 §4.2.5: the UUIDs that name object types, classification and identification schemes.
DOCUMENT_ENTRY_TYPE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"  # stable DocumentEntry
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
DOC_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DOC_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DOC_FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DOC_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DOC_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DOC_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SET_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SET_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SET_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SET_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
CONFIDENTIALITY_SYSTEM = "2.16.840.1.113883.5.25"  # HL7 v3 Confidentiality: N (normal)
FORMAT_SYSTEM = "1.3.6.1.4.1.19376.1.2.3"  # IHE format codes
MIME_TYPE_SUFFICIENT = "urn:ihe:iti:xds:2017:mimeTypeSufficient"


@dataclass(frozen=True)
class EntryFacts:
    """What the package builder knows of one document when writing its DocumentEntry."""

    uri: str  # the file name in the subset directory, e.g. DOC0001.PDF
    title: str
    mime_type: str
    size: int
    sha1: str
    sha256: str
    type_code: tuple[str, str] | None = None  # (code, code system OID) of a CDA document


@dataclass(frozen=True)
class DocumentEntry:
    """A DocumentEntry as read from an arriving METADATA.XML (values as written; checks are the validator's)."""

    entry_id: str
    uri: str | None
    mime_type: str | None
    size: str | None
    sha1: str | None
    sha256: str | None
    title: str | None
    author_person: str | None
    patient_id: str | None
    unique_id: str | None
    type_code: str | None
    prescription_id: str | None


@dataclass(frozen=True)
class SubmissionSet:
    """The submission set of one METADATA.XML and the DocumentEntries it lists."""

    title: str | None
    author_person: str | None
    patient_id: str | None
    unique_id: str | None
    documents: tuple[DocumentEntry, ...]


def author_xcn(author: Author) -> str:
    """authorPerson in XCN form as the CI-SIS writes it: ``IdNat^NOM^Prénom^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS``."""
    return f"{author.id_nat}^{author.family_name}^{author.given_name}^^^^^^&{RPPS_AUTHORITY_OID}&ISO^D^^^IDNPS"


def uuid_oid(value: uuid.UUID) -> str:
    """An OID for a unique id without a registered root: ``2.25.`` + the UUID as an integer (ITU-T X.667)."""
    return f"2.25.{value.int}"


def build_metadata(
    entries: Sequence[EntryFacts],
    *,
    author: Author,
    patient: Patient,
    title: str,
    prescription_id: str | None,
    now: datetime,
    new_uuid: Callable[[], uuid.UUID],
    source_id: str,
) -> bytes:
    """The METADATA.XML of one submission set listing ``entries``, as UTF-8 bytes with an XML declaration."""
    stamp = now.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    root = ET.Element(f"{{{LCM}}}SubmitObjectsRequest")
    objects = ET.SubElement(root, _rim("RegistryObjectList"))
    patient_info = [f"PID-3|{patient.patient_id}^INS" if patient.ins else f"PID-3|{patient.patient_id}^PI"]
    patient_info.append(f"PID-5|{patient.family_name}^{patient.given_name}^^^^^L")
    patient_info.append(f"PID-7|{patient.birth_date:%Y%m%d}")
    if patient.sex:
        patient_info.append(f"PID-8|{patient.sex}")
    for number, facts in enumerate(entries, 1):
        entry_id = f"Document{number:02d}"
        document = ET.SubElement(
            objects,
            _rim("ExtrinsicObject"),
            {"id": entry_id, "mimeType": facts.mime_type, "objectType": DOCUMENT_ENTRY_TYPE},
        )
        _slot(document, "creationTime", stamp)
        _slot(document, "hash", facts.sha1)
        _slot(document, "languageCode", "fr-FR")
        _slot(document, "size", str(facts.size))
        _slot(document, "sourcePatientId", patient.patient_id)
        _slot(document, "sourcePatientInfo", *patient_info)
        _slot(document, "URI", facts.uri)
        _slot(document, SHA256_SLOT, facts.sha256)
        if prescription_id is not None:
            _slot(document, PRESCRIPTION_ID_SLOT, prescription_id)
        _name(document, facts.title)
        _classification(document, DOC_AUTHOR, entry_id, "", new_uuid, authorPerson=author_xcn(author))
        _classification(document, DOC_CONFIDENTIALITY, entry_id, "N", new_uuid, CONFIDENTIALITY_SYSTEM, "Normal")
        _classification(document, DOC_FORMAT, entry_id, MIME_TYPE_SUFFICIENT, new_uuid, FORMAT_SYSTEM, "MIME type")
        if facts.type_code is not None:
            code, system = facts.type_code
            _classification(document, DOC_TYPE, entry_id, code, new_uuid, system, code)
        _identifier(document, DOC_PATIENT_ID, entry_id, patient.patient_id, "XDSDocumentEntry.patientId", new_uuid)
        _identifier(document, DOC_UNIQUE_ID, entry_id, uuid_oid(new_uuid()), "XDSDocumentEntry.uniqueId", new_uuid)
    package = ET.SubElement(objects, _rim("RegistryPackage"), {"id": "SubmissionSet01"})
    _slot(package, "submissionTime", stamp)
    _name(package, title)
    _classification(package, SET_AUTHOR, "SubmissionSet01", "", new_uuid, authorPerson=author_xcn(author))
    _identifier(package, SET_UNIQUE_ID, "SubmissionSet01", uuid_oid(new_uuid()), "XDSSubmissionSet.uniqueId", new_uuid)
    _identifier(package, SET_SOURCE_ID, "SubmissionSet01", source_id, "XDSSubmissionSet.sourceId", new_uuid)
    _identifier(package, SET_PATIENT_ID, "SubmissionSet01", patient.patient_id, "XDSSubmissionSet.patientId", new_uuid)
    ET.SubElement(
        objects,
        _rim("Classification"),
        {
            "classificationNode": SUBMISSION_SET_NODE,
            "classifiedObject": "SubmissionSet01",
            "id": f"urn:uuid:{new_uuid()}",
        },
    )
    for number in range(1, len(entries) + 1):
        association = ET.SubElement(
            objects,
            _rim("Association"),
            {
                "associationType": HAS_MEMBER,
                "id": f"urn:uuid:{new_uuid()}",
                "sourceObject": "SubmissionSet01",
                "targetObject": f"Document{number:02d}",
            },
        )
        _slot(association, "SubmissionSetStatus", "Original")
    ET.indent(root)
    serialized: bytes = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    return serialized + b"\n"


def read_metadata(root: ET.Element) -> SubmissionSet:
    """The submission set described by a parsed METADATA.XML, or XdmError if it is not a SubmitObjectsRequest."""
    if root.tag != f"{{{LCM}}}SubmitObjectsRequest":
        raise XdmError(f"METADATA.XML is not an ebRIM SubmitObjectsRequest (root element {_local(root.tag)!r})")
    objects = root.find(_rim("RegistryObjectList"))
    if objects is None:
        raise XdmError("METADATA.XML has no RegistryObjectList")
    documents = []
    for element in objects.findall(_rim("ExtrinsicObject")):
        if element.get("objectType") != DOCUMENT_ENTRY_TYPE:
            continue
        documents.append(
            DocumentEntry(
                entry_id=element.get("id", ""),
                uri=_slot_value(element, "URI"),
                mime_type=element.get("mimeType"),
                size=_slot_value(element, "size"),
                sha1=_slot_value(element, "hash"),
                sha256=_slot_value(element, SHA256_SLOT),
                title=_name_value(element),
                author_person=_author_person(element, DOC_AUTHOR),
                patient_id=_identifier_value(element, DOC_PATIENT_ID),
                unique_id=_identifier_value(element, DOC_UNIQUE_ID),
                type_code=_classification_code(element, DOC_TYPE),
                prescription_id=_slot_value(element, PRESCRIPTION_ID_SLOT),
            )
        )
    package = next(
        (
            candidate
            for candidate in objects.findall(_rim("RegistryPackage"))
            if _is_submission_set(objects, candidate.get("id"))
        ),
        None,
    )
    if package is None:
        return SubmissionSet(None, None, None, None, tuple(documents))
    return SubmissionSet(
        title=_name_value(package),
        author_person=_author_person(package, SET_AUTHOR),
        patient_id=_identifier_value(package, SET_PATIENT_ID),
        unique_id=_identifier_value(package, SET_UNIQUE_ID),
        documents=tuple(documents),
    )


def _is_submission_set(objects: ET.Element, package_id: str | None) -> bool:
    """Whether a RegistryPackage is classified as the SubmissionSet (by a Classification inside it or beside it)."""
    for classification in objects.iter(_rim("Classification")):
        if (
            classification.get("classificationNode") == SUBMISSION_SET_NODE
            and classification.get("classifiedObject") == package_id
        ):
            return True
    return False


def _rim(local: str) -> str:
    return f"{{{RIM}}}{local}"


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _slot(parent: ET.Element, name: str, *values: str) -> None:
    slot = ET.SubElement(parent, _rim("Slot"), {"name": name})
    value_list = ET.SubElement(slot, _rim("ValueList"))
    for value in values:
        ET.SubElement(value_list, _rim("Value")).text = value


def _name(parent: ET.Element, text: str) -> None:
    name = ET.SubElement(parent, _rim("Name"))
    ET.SubElement(name, _rim("LocalizedString"), {"value": text})


def _classification(
    parent: ET.Element,
    scheme: str,
    classified: str,
    node: str,
    new_uuid: Callable[[], uuid.UUID],
    coding_scheme: str | None = None,
    display: str | None = None,
    **slots: str,
) -> None:
    attributes = {
        "classificationScheme": scheme,
        "classifiedObject": classified,
        "id": f"urn:uuid:{new_uuid()}",
        "nodeRepresentation": node,
    }
    classification = ET.SubElement(parent, _rim("Classification"), attributes)
    for name, value in slots.items():
        _slot(classification, name, value)
    if coding_scheme is not None:
        _slot(classification, "codingScheme", coding_scheme)
    if display is not None:
        _name(classification, display)


def _identifier(
    parent: ET.Element, scheme: str, owner: str, value: str, label: str, new_uuid: Callable[[], uuid.UUID]
) -> None:
    attributes = {
        "id": f"urn:uuid:{new_uuid()}",
        "identificationScheme": scheme,
        "registryObject": owner,
        "value": value,
    }
    _name(ET.SubElement(parent, _rim("ExternalIdentifier"), attributes), label)


def _slot_value(element: ET.Element, name: str) -> str | None:
    """The first value of the slot ``name`` directly under ``element``."""
    for slot in element.findall(_rim("Slot")):
        if slot.get("name") == name:
            value = slot.find(f"{_rim('ValueList')}/{_rim('Value')}")
            return (value.text or "").strip() if value is not None else None
    return None


def _name_value(element: ET.Element) -> str | None:
    localized = element.find(f"{_rim('Name')}/{_rim('LocalizedString')}")
    return localized.get("value") if localized is not None else None


def _author_person(element: ET.Element, scheme: str) -> str | None:
    for classification in element.findall(_rim("Classification")):
        if classification.get("classificationScheme") == scheme:
            return _slot_value(classification, "authorPerson")
    return None


def _classification_code(element: ET.Element, scheme: str) -> str | None:
    for classification in element.findall(_rim("Classification")):
        if classification.get("classificationScheme") == scheme:
            return classification.get("nodeRepresentation")
    return None


def _identifier_value(element: ET.Element, scheme: str) -> str | None:
    for identifier in element.findall(_rim("ExternalIdentifier")):
        if identifier.get("identificationScheme") == scheme:
            return identifier.get("value")
    return None
