"""Sample inputs of the XDM tests: a prescriber, a patient, a PDF and a CDA document, and zip surgery helpers."""

from __future__ import annotations

import io
import struct
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from uuid import UUID

from mssecure.directory.identifiers import luhn_check_digit
from mssecure.xdm import Author, Document, Patient, build_package, ins_key

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
RPPS = "1000345678" + luhn_check_digit("1000345678")
NIR = "2841299123456"
INS = NIR + ins_key(NIR)
AUTHOR = Author("Martin", "Claire", RPPS)
PATIENT = Patient("Durand", "Anne", date(1984, 12, 1), sex="F", ins=INS)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
CDA = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<ClinicalDocument xmlns="urn:hl7-org:v3">\n'
    b'  <realmCode code="FR"/>\n'
    b'  <code code="57833-6" codeSystem="2.16.840.1.113883.6.1" displayName="Prescription"/>\n'
    b"  <title>Ordonnance</title>\n"
    b"</ClinicalDocument>\n"
)
PRESCRIPTION_ID = "RX-2026-000123"
DOCUMENTS = (
    Document("ordonnance.pdf", PDF, "application/pdf"),
    Document("ordonnance.xml", CDA, "text/xml", title="Ordonnance (CDA)"),
)
PDF_PATH = "IHE_XDM/SUBSET01/DOC0001.PDF"
CDA_PATH = "IHE_XDM/SUBSET01/DOC0002.XML"
METADATA_PATH = "IHE_XDM/SUBSET01/METADATA.XML"
RIM = "{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}"


def counting_uuids() -> Callable[[], UUID]:
    """A deterministic ``new_uuid``: 1, 2, 3 …"""
    counter = iter(range(1, 1_000_000))
    return lambda: UUID(int=next(counter))


def package(**changes: object) -> bytes:
    """A valid package of the two sample documents (keyword arguments override build_package's)."""
    arguments: dict[str, object] = {
        "author": AUTHOR,
        "patient": PATIENT,
        "title": "Ordonnance",
        "now": NOW,
        "prescription_id": PRESCRIPTION_ID,
        "new_uuid": counting_uuids(),
    }
    arguments.update(changes)
    documents = arguments.pop("documents", DOCUMENTS)
    return build_package(documents, **arguments)  # type: ignore[arg-type]


def entries(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info, archive.read(info)) for info in archive.infolist()]


def make_zip(items: Iterable[tuple[str | zipfile.ZipInfo, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``items`` in order (duplicate names allowed: that is what some tests want)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
            for name, content in items:
                archive.writestr(name, content)
    return buffer.getvalue()


def rezip(
    data: bytes,
    *,
    replace: dict[str, bytes] | None = None,
    drop: Iterable[str] = (),
    add: Iterable[tuple[str | zipfile.ZipInfo, bytes]] = (),
) -> bytes:
    """``data`` with some entries replaced, dropped or added."""
    replace = replace or {}
    dropped = set(drop)
    kept = [
        (info.filename, replace.get(info.filename, content))
        for info, content in entries(data)
        if info.filename not in dropped
    ]
    return make_zip([*kept, *add])


def edit_metadata(data: bytes, edit: Callable[[ET.Element], None]) -> bytes:
    """``data`` with its METADATA.XML changed by ``edit`` (on a tree parsed with the trusted stdlib parser)."""
    metadata = dict((info.filename, content) for info, content in entries(data))[METADATA_PATH]
    root = ET.fromstring(metadata)  # noqa: S314 - our own test data
    edit(root)
    return rezip(data, replace={METADATA_PATH: ET.tostring(root, encoding="UTF-8", xml_declaration=True)})


def slot_values(root: ET.Element, name: str) -> list[ET.Element]:
    """The Value elements of every slot ``name`` in the metadata."""
    return [value for slot in root.iter(f"{RIM}Slot") if slot.get("name") == name for value in slot.iter(f"{RIM}Value")]


def patch_entry(
    data: bytes,
    name: str,
    *,
    file_size: int | None = None,
    crc: int | None = None,
    header_offset: int | None = None,
    flag_bits: int | None = None,
) -> bytes:
    """``data`` with fields of entry ``name`` overwritten in its local header and central directory record.

    Lets a test make a zip whose headers lie (sizes, CRC, overlapping offsets), which zipfile would never write.
    """
    raw = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(name)
        local = info.header_offset
        central = archive.start_dir
        for _ in range(len(archive.infolist())):
            (name_length,) = struct.unpack_from("<H", raw, central + 28)
            extra_length, comment_length = struct.unpack_from("<HH", raw, central + 30)
            if raw[central + 46 : central + 46 + name_length] == info.orig_filename.encode():
                break
            central += 46 + name_length + extra_length + comment_length
    if file_size is not None:
        struct.pack_into("<I", raw, local + 22, file_size)
        struct.pack_into("<I", raw, central + 24, file_size)
    if crc is not None:
        struct.pack_into("<I", raw, local + 14, crc)
        struct.pack_into("<I", raw, central + 16, crc)
    if flag_bits is not None:
        struct.pack_into("<H", raw, local + 6, flag_bits)
        struct.pack_into("<H", raw, central + 8, flag_bits)
    if header_offset is not None:
        struct.pack_into("<I", raw, central + 42, header_offset)
    return bytes(raw)
