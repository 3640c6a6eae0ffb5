"""Recognising an HL7 CDA R2 document and reading its type code, without trusting it.

A CDA document is XML whose root is ``ClinicalDocument`` in the ``urn:hl7-org:v3`` namespace; its header's ``code``
element (CDA R2 §4.2.1.4; in France a LOINC code from the CI-SIS "Volet Structuration Minimale", e.g. ``57833-6``
for a prescription) names what kind of document it is. That code becomes the DocumentEntry typeCode and the value of
the ``X-MSS-CODECDA`` header.
"""

from __future__ import annotations

from dataclasses import dataclass

from mssecure.xdm._xml import UnsafeXml, parse_xml

__all__ = ["CDA_NAMESPACE", "XML_MIME_TYPES", "CdaCode", "cda_code"]

CDA_NAMESPACE = "urn:hl7-org:v3"
XML_MIME_TYPES = frozenset({"text/xml", "application/xml", "application/hl7-v3+xml", "application/hl7-cda+xml"})
LOINC = "2.16.840.1.113883.6.1"


@dataclass(frozen=True)
class CdaCode:
    """The ``code`` of a CDA header: the code and the OID of its code system (LOINC when not said)."""

    code: str
    code_system: str


def cda_code(content: bytes, mime_type: str) -> CdaCode | None:
    """The header code of a CDA document, or None when the content is not a CDA document (or not safe to read)."""
    if mime_type.lower() not in XML_MIME_TYPES:
        return None
    try:
        root = parse_xml(content)
    except UnsafeXml:
        return None
    if root.tag != f"{{{CDA_NAMESPACE}}}ClinicalDocument":
        return None
    code = root.find(f"{{{CDA_NAMESPACE}}}code")
    value = code.get("code", "").strip() if code is not None else ""
    if code is None or not value or not value.isprintable() or len(value) > 64 or "," in value:
        return None
    return CdaCode(value, code.get("codeSystem", LOINC).strip() or LOINC)
