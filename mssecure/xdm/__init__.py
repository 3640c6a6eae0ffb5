"""IHE XDM packages and the MSSanté message conventions (issue 6): building, checking, finding; bytes in, bytes out.

    package = build_package([Document("ordonnance.pdf", pdf, "application/pdf")], author=Author("Martin", "Claire",
                            "10003456789"), patient=Patient("Durand", "Anne", date(1984, 12, 1), ins=ins),
                            title="Ordonnance", prescription_id="RX-2026-000123", now=now)   # → IHE_XDM.ZIP bytes
    subject = xdm_subject("Ordonnance", patient); headers = mss_headers(documents, patient, "RX-2026-000123")
    for part in find_xdm_parts(message):
        checked = validate_package(part.data)   # → XdmPackage, or XdmError(reason) to refuse the message

No file system, no network, no clock of its own: the relay, ``mssecure send`` and ``mssecure verify`` do the I/O.
See docs/pharmacies.md for what a package holds and what is checked on arrival.
"""

from mssecure.xdm._errors import XdmError
from mssecure.xdm.cda import CdaCode, cda_code
from mssecure.xdm.metadata import PRESCRIPTION_ID_SLOT, SHA256_SLOT
from mssecure.xdm.mssante import (
    CODECDA_HEADER,
    INS_HEADER,
    PRESCRIPTION_ID_HEADER,
    SUBJECT_PREFIX,
    mss_headers,
    xdm_subject,
)
from mssecure.xdm.package import PACKAGE_FILE_NAME, build_package, document_file_name
from mssecure.xdm.records import (
    INS_NIR_OID,
    Author,
    Document,
    Patient,
    check_ins,
    check_prescription_id,
    ins_key,
)
from mssecure.xdm.validate import (
    DEFAULT_LIMITS,
    XdmDocument,
    XdmLimits,
    XdmPackage,
    XdmPart,
    find_xdm_parts,
    validate_package,
)

__all__ = [
    "CODECDA_HEADER",
    "DEFAULT_LIMITS",
    "INS_HEADER",
    "INS_NIR_OID",
    "PACKAGE_FILE_NAME",
    "PRESCRIPTION_ID_HEADER",
    "PRESCRIPTION_ID_SLOT",
    "SHA256_SLOT",
    "SUBJECT_PREFIX",
    "Author",
    "CdaCode",
    "Document",
    "Patient",
    "XdmDocument",
    "XdmError",
    "XdmLimits",
    "XdmPackage",
    "XdmPart",
    "build_package",
    "cda_code",
    "check_ins",
    "check_prescription_id",
    "document_file_name",
    "find_xdm_parts",
    "ins_key",
    "mss_headers",
    "validate_package",
    "xdm_subject",
]
