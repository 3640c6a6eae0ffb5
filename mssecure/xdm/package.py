"""Building an IHE XDM package (``IHE_XDM.ZIP``) from documents, their author and their patient: bytes in, bytes out.

Layout (IHE ITI TF-1 §16 and TF-2b §3.32.4.1.3, the ZIP variant used for e-mail):

    README.TXT                    who made the package (IHE: the creating application and its vendor)
    INDEX.HTM                     a table of contents for a person opening the zip by hand
    IHE_XDM/SUBSET01/METADATA.XML the XDS.b metadata (see mssecure.xdm.metadata)
    IHE_XDM/SUBSET01/DOC0001.PDF  the documents, 8.3 names in upper case as on ISO 9660 media
    IHE_XDM/SUBSET01/DOC0002.XML  ...
"""

from __future__ import annotations

import hashlib
import html
import io
import uuid
import zipfile
from collections.abc import Callable, Sequence
from datetime import datetime

from mssecure import __version__
from mssecure.xdm._errors import XdmError
from mssecure.xdm.cda import cda_code
from mssecure.xdm.metadata import EntryFacts, build_metadata, uuid_oid
from mssecure.xdm.records import Author, Document, Patient, check_prescription_id

__all__ = ["PACKAGE_FILE_NAME", "SUBSET_DIRECTORY", "build_package", "document_file_name"]

PACKAGE_FILE_NAME = "IHE_XDM.ZIP"
SUBSET_DIRECTORY = "IHE_XDM/SUBSET01/"
MAX_DOCUMENTS = 9999  # DOC0001 … DOC9999

_EXTENSIONS = {
    "application/pdf": "PDF",
    "text/xml": "XML",
    "application/xml": "XML",
    "application/hl7-v3+xml": "XML",
    "application/hl7-cda+xml": "XML",
    "text/plain": "TXT",
    "text/html": "HTM",
    "text/rtf": "RTF",
    "application/rtf": "RTF",
    "image/jpeg": "JPG",
    "image/png": "PNG",
    "image/tiff": "TIF",
}


def document_file_name(number: int, document: Document) -> str:
    """``DOC0001.PDF``: the number, then an extension from the MIME type (else the original's, else ``BIN``)."""
    extension = _EXTENSIONS.get(document.mime_type)
    if extension is None:
        original = document.file_name.rpartition(".")[2].upper() if "." in document.file_name else ""
        extension = original if 1 <= len(original) <= 3 and original.isascii() and original.isalnum() else "BIN"
    return f"DOC{number:04d}.{extension}"


def build_package(
    documents: Sequence[Document],
    *,
    author: Author,
    patient: Patient,
    title: str,
    now: datetime,
    prescription_id: str | None = None,
    source_id: str | None = None,
    new_uuid: Callable[[], uuid.UUID] = uuid.uuid4,
) -> bytes:
    """The ``IHE_XDM.ZIP`` bytes packaging ``documents``; ``XdmError`` if an input is not acceptable.

    ``now`` dates the documents and the submission (and the zip entries, so the same inputs give the same bytes when
    ``new_uuid`` is deterministic); ``source_id`` is the OID of the sending system (a ``2.25`` OID is made up when
    none is given); ``prescription_id`` goes into each DocumentEntry (slot ``urn:mssecure:prescription-id``).
    """
    if not documents:
        raise XdmError("an XDM package needs at least one document")
    if len(documents) > MAX_DOCUMENTS:
        raise XdmError(f"an XDM package holds at most {MAX_DOCUMENTS} documents")
    if not title.strip() or not title.isprintable():
        raise XdmError("the submission set title must be a non-empty line of text")
    if prescription_id is not None:
        check_prescription_id(prescription_id)
    if now.tzinfo is None:
        raise XdmError("the package time must carry a time zone")
    entries = []
    for number, document in enumerate(documents, 1):
        cda = cda_code(document.content, document.mime_type)
        entries.append(
            EntryFacts(
                uri=document_file_name(number, document),
                title=document.title or document.file_name,
                mime_type=document.mime_type,
                size=len(document.content),
                # XDS requires SHA-1 (ITI TF-3 §4.2.3.2.14); it is not relied on for integrity: see SHA256_SLOT.
                sha1=hashlib.sha1(document.content, usedforsecurity=False).hexdigest(),
                sha256=hashlib.sha256(document.content).hexdigest(),
                type_code=(cda.code, cda.code_system) if cda else None,
            )
        )
    metadata = build_metadata(
        entries,
        author=author,
        patient=patient,
        title=" ".join(title.split()),
        prescription_id=prescription_id,
        now=now,
        new_uuid=new_uuid,
        source_id=source_id or uuid_oid(new_uuid()),
    )
    buffer = io.BytesIO()
    stamp = now.timetuple()[:6]
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:

        def add(name: str, content: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            archive.writestr(info, content)

        add("README.TXT", _readme(now))
        add("INDEX.HTM", _index(entries, title))
        add(SUBSET_DIRECTORY + "METADATA.XML", metadata)
        for document, entry in zip(documents, entries, strict=True):
            add(SUBSET_DIRECTORY + entry.uri, document.content)
    return buffer.getvalue()


def _readme(now: datetime) -> bytes:
    text = (
        "IHE XDM package (IHE ITI Cross-Enterprise Document Media Interchange, ZIP over e-mail)\r\n"
        "\r\n"
        f"Created by: mssecure {__version__}, secure health messaging operator (open source)\r\n"
        f"Created on: {now.isoformat(timespec='seconds')}\r\n"
        "\r\n"
        "The documents and their metadata (author, patient, hashes) are in IHE_XDM/SUBSET01/;\r\n"
        "METADATA.XML lists each document with its SHA-1 and SHA-256 hashes and its size.\r\n"
        "INDEX.HTM lists the documents for a reader.\r\n"
    )
    return text.encode("ascii", "replace")


def _index(entries: Sequence[EntryFacts], title: str) -> bytes:
    rows = "\n".join(
        f'<li><a href="{SUBSET_DIRECTORY}{html.escape(entry.uri)}">{html.escape(entry.title)}</a>'
        f" ({html.escape(entry.mime_type)}, {entry.size} bytes)</li>"
        for entry in entries
    )
    page = (
        '<!DOCTYPE html>\n<html lang="fr">\n<head><meta charset="utf-8"><title>IHE XDM</title></head>\n<body>\n'
        f"<h1>{html.escape(title)}</h1>\n<ul>\n{rows}\n</ul>\n"
        f'<p><a href="README.TXT">README.TXT</a> · <a href="{SUBSET_DIRECTORY}METADATA.XML">METADATA.XML</a></p>\n'
        "</body>\n</html>\n"
    )
    return page.encode("utf-8")
