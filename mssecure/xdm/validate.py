"""Checking an arriving XDM package, and finding XDM packages in a message: bytes in, a verdict out, nothing on disk.

``validate_package`` either returns what the package holds, every document's size and hashes checked against
METADATA.XML, or raises ``XdmError`` with a one-line reason the relay can archive and put in its DSN. It distrusts
everything the zip says about itself: the declared sizes are checked against the limits first, then enforced again
while decompressing (a header can lie), names are checked before anything is read, and XML is parsed with DTDs and
entities refused. Nested zips are documents like any other: never expanded.
"""

from __future__ import annotations

import binascii
import email.policy
import hashlib
import io
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser

from mssecure.xdm._errors import XdmError
from mssecure.xdm._xml import UnsafeXml, parse_xml
from mssecure.xdm.metadata import DocumentEntry, SubmissionSet, read_metadata
from mssecure.xdm.records import RPPS_AUTHORITY_OID, check_prescription_id

__all__ = [
    "DEFAULT_LIMITS",
    "XdmDocument",
    "XdmLimits",
    "XdmPackage",
    "XdmPart",
    "find_xdm_parts",
    "validate_package",
]

_ZIP_MAGIC = b"PK\x03\x04"
_CHUNK = 64 * 1024
_EXPECTED_EXTRAS = frozenset({"README.TXT", "INDEX.HTM"})  # IHE ITI TF-2b §3.32.4.1.2: at the root, not listed
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_MIME_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")  # RFC 6838
# What zipfile can raise on corrupt input besides BadZipFile: truncated or inconsistent structures, bad deflate
# streams, unsupported methods. All of them mean "not a readable zip" to us.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    struct.error,
    OverflowError,
    IndexError,
    KeyError,
)


@dataclass(frozen=True)
class XdmLimits:
    """Bounds on what an arriving package may cost to check (the zip-bomb defences); the defaults suit e-mail."""

    max_package_size: int = 50 * 1024 * 1024  # the zip itself
    max_total_size: int = 200 * 1024 * 1024  # all entries, uncompressed
    max_entry_size: int = 100 * 1024 * 1024  # one entry, uncompressed
    max_entries: int = 1000
    max_ratio: int = 100  # uncompressed / compressed, for entries above ratio_floor
    ratio_floor: int = 1024 * 1024  # smaller entries may compress as well as they like (a blank form, zeros)
    max_metadata_size: int = 8 * 1024 * 1024  # METADATA.XML
    allow_unlisted: bool = False  # files the metadata does not list (other than README.TXT, INDEX.HTM) are refused


DEFAULT_LIMITS = XdmLimits()


@dataclass(frozen=True)
class XdmDocument:
    """A document of a valid package: where it is, what METADATA.XML says of it, and its content (hashes checked)."""

    path: str  # the zip entry, e.g. IHE_XDM/SUBSET01/DOC0001.PDF
    uri: str  # as METADATA.XML names it, relative to its subset directory
    title: str | None
    mime_type: str
    size: int
    sha1: str  # lower-case hex, checked
    sha256: str  # lower-case hex, computed here; checked when the package carried one
    sha256_declared: bool
    author_person: str | None  # authorPerson in XCN form, as written
    author_id_nat: str | None  # the IdNat_PS (8 + RPPS) when authorPerson carries the ANS authority
    patient_id: str | None  # CX form, e.g. 123456789012345^^^&1.2.250.1.213.1.4.8&ISO
    type_code: str | None  # the typeCode (for a CDA document, its LOINC code)
    prescription_id: str | None
    content: bytes


@dataclass(frozen=True)
class XdmPackage:
    """A valid XDM package: its documents in metadata order and what they agree on."""

    documents: tuple[XdmDocument, ...]
    title: str | None  # of the (first) submission set
    patient_id: str | None
    author_id_nat: str | None  # of the first document that names one
    prescription_id: str | None
    unlisted: tuple[str, ...]  # files present but not listed (only when XdmLimits.allow_unlisted)

    @property
    def author_rpps(self) -> str | None:
        """The RPPS of the author (the IdNat_PS without its ``8``), when the author is identified by RPPS."""
        if self.author_id_nat and self.author_id_nat.startswith("8"):
            return self.author_id_nat[1:]
        return None


def validate_package(data: bytes, limits: XdmLimits = DEFAULT_LIMITS) -> XdmPackage:
    """The checked content of an XDM zip, or ``XdmError`` with the first reason it is refused."""
    if len(data) > limits.max_package_size:
        raise XdmError(f"XDM package larger than {limits.max_package_size} bytes")
    if not data.startswith(_ZIP_MAGIC):
        raise XdmError("not a zip file")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            files = _check_entries(infos, limits, len(data))
            contents = _read_entries(archive, files, limits)
    except XdmError:
        raise
    except _ZIP_ERRORS as error:
        raise XdmError(f"corrupt zip file ({_zip_error(error)})") from None
    return _check_package(contents, limits)


def _zip_error(error: BaseException) -> str:
    """A short, safe description of a zipfile failure (its text may quote entry names: keep it one line)."""
    text = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _check_entries(infos: list[zipfile.ZipInfo], limits: XdmLimits, package_size: int) -> list[zipfile.ZipInfo]:
    """The file entries, after the checks that need no decompression: names, flags, declared sizes, overlaps."""
    if len(infos) > limits.max_entries:
        raise XdmError(f"too many zip entries ({len(infos)}, at most {limits.max_entries})")
    seen: set[str] = set()
    offsets: set[int] = set()
    files: list[zipfile.ZipInfo] = []
    total = 0
    for info in infos:
        name = info.filename
        if "\x00" in info.orig_filename:  # zipfile cuts filename at a NUL; the raw name keeps it
            raise XdmError(f"zip entry name {_shown(info.orig_filename)} contains a NUL character")
        _check_name(name)
        folded = name.casefold()
        if folded in seen:
            raise XdmError(f"duplicate zip entry {_shown(name)}")
        seen.add(folded)
        if info.header_offset in offsets:
            raise XdmError(f"zip entry {_shown(name)} overlaps another entry")
        offsets.add(info.header_offset)
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise XdmError(f"zip entry {_shown(name)} is a symbolic link or special file")
        if info.flag_bits & 0x1:
            raise XdmError(f"zip entry {_shown(name)} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise XdmError(f"zip entry {_shown(name)} uses an unsupported compression method ({info.compress_type})")
        if info.is_dir():
            if info.file_size:
                raise XdmError(f"zip directory entry {_shown(name)} has content")
            continue
        if info.file_size > limits.max_entry_size:
            raise XdmError(f"zip entry {_shown(name)} too large ({info.file_size} bytes uncompressed)")
        if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise XdmError(f"zip entry {_shown(name)} compressed suspiciously well (zip bomb?)")
        if info.compress_size > package_size:
            raise XdmError(f"zip entry {_shown(name)} claims more data than the package holds")
        total += info.file_size
        if total > limits.max_total_size:
            raise XdmError(f"zip content larger than {limits.max_total_size} bytes uncompressed")
        files.append(info)
    return files


def _check_name(name: str) -> None:
    """Refuse names that could escape a directory or mean different files on different systems."""
    if "\x00" in name:
        raise XdmError(f"zip entry name {_shown(name)} contains a NUL character")
    if "\\" in name:
        raise XdmError(f"zip entry name {_shown(name)} contains a backslash")
    if name.startswith("/") or _DRIVE_RE.match(name):
        raise XdmError(f"zip entry name {_shown(name)} is an absolute path")
    parts = name.removesuffix("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise XdmError(f"zip entry name {_shown(name)} is not a plain relative path (path traversal?)")
    if not name.isprintable():
        raise XdmError(f"zip entry name {_shown(name)} contains control characters")


def _shown(name: str) -> str:
    """An entry name as it can appear in a one-line reason: quoted, escaped, shortened."""
    shown = repr(name[:100] + ("…" if len(name) > 100 else ""))
    return shown.encode("ascii", "backslashreplace").decode("ascii")


def _read_entries(archive: zipfile.ZipFile, files: list[zipfile.ZipInfo], limits: XdmLimits) -> dict[str, bytes]:
    """Every file entry decompressed in memory, each capped at its declared size (zipfile checks the CRC at the end)."""
    contents: dict[str, bytes] = {}
    total = 0
    for info in files:
        cap = min(info.file_size, limits.max_entry_size)
        chunks: list[bytes] = []
        size = 0
        with archive.open(info) as stream:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                total += len(chunk)
                if size > cap or total > limits.max_total_size:
                    raise XdmError(f"zip entry {_shown(info.filename)} is larger than its header says")
                chunks.append(chunk)
        if size != info.file_size:
            raise XdmError(f"zip entry {_shown(info.filename)} is shorter than its header says")
        contents[info.filename] = b"".join(chunks)
    return contents


def _check_package(contents: dict[str, bytes], limits: XdmLimits) -> XdmPackage:
    """The package's documents, after matching METADATA.XML against the files."""
    names = list(contents)
    if not any(name.upper().startswith("IHE_XDM/") for name in names):
        raise XdmError("not an XDM package: no IHE_XDM/ directory")
    subsets = sorted(
        name[: -len("METADATA.XML")]
        for name in names
        if name.upper().startswith("IHE_XDM/") and name.count("/") == 2 and name.upper().endswith("/METADATA.XML")
    )
    if not subsets:
        raise XdmError("not an XDM package: no IHE_XDM/<subset>/METADATA.XML")
    documents: list[XdmDocument] = []
    listed = {subset + "METADATA.XML" for subset in subsets}
    title = None
    for subset in subsets:
        submission = _read_submission_set(contents[subset + "METADATA.XML"], limits, subset)
        if not submission.documents:
            raise XdmError(f"{subset}METADATA.XML lists no document")
        title = title if title is not None else submission.title
        subset_documents: list[XdmDocument] = []
        for entry in submission.documents:
            if entry.uri is not None and subset + entry.uri in listed:
                raise XdmError(f"{subset}METADATA.XML lists {_shown(subset + entry.uri)} twice")
            document = _check_document(entry, subset, contents)
            listed.add(document.path)
            subset_documents.append(document)
        _check_agreement(submission, subset_documents)
        documents.extend(subset_documents)
    unlisted = tuple(name for name in names if name not in listed and name not in _EXPECTED_EXTRAS)
    if unlisted and not limits.allow_unlisted:
        raise XdmError(f"file {_shown(unlisted[0])} is in the package but not listed in METADATA.XML")
    patient_ids = {document.patient_id for document in documents}
    if len(patient_ids) > 1:
        raise XdmError("the documents of the package are about different patients (patientId differs)")
    prescription_ids = {document.prescription_id for document in documents if document.prescription_id}
    if len(prescription_ids) > 1:
        raise XdmError("the documents of the package carry different prescription identifiers")
    return XdmPackage(
        documents=tuple(documents),
        title=title,
        patient_id=documents[0].patient_id,
        author_id_nat=next((d.author_id_nat for d in documents if d.author_id_nat), None),
        prescription_id=next(iter(prescription_ids), None),
        unlisted=unlisted,
    )


def _read_submission_set(data: bytes, limits: XdmLimits, subset: str) -> SubmissionSet:
    if len(data) > limits.max_metadata_size:
        raise XdmError(f"{subset}METADATA.XML larger than {limits.max_metadata_size} bytes")
    try:
        root = parse_xml(data)
    except UnsafeXml as error:
        raise XdmError(f"{subset}METADATA.XML refused: {error}") from None
    return read_metadata(root)


def _check_document(entry: DocumentEntry, subset: str, contents: dict[str, bytes]) -> XdmDocument:
    label = _shown(entry.uri or entry.entry_id)
    if not entry.uri:
        raise XdmError(f"document entry {_shown(entry.entry_id)} of {subset}METADATA.XML has no URI")
    if "\\" in entry.uri or "\x00" in entry.uri or entry.uri.startswith("/") or _DRIVE_RE.match(entry.uri):
        raise XdmError(f"document URI {label} is not a relative path")
    if any(part in ("", ".", "..") for part in entry.uri.split("/")):
        raise XdmError(f"document URI {label} is not a plain relative path (path traversal?)")
    path = subset + entry.uri
    if path not in contents:
        raise XdmError(f"document {_shown(path)} is listed in METADATA.XML but missing from the package")
    content = contents[path]
    if not entry.mime_type:
        raise XdmError(f"document {label} has no mimeType in METADATA.XML")
    if not _MIME_TYPE_RE.fullmatch(entry.mime_type):
        raise XdmError(f"document {label}: mimeType {_shown(entry.mime_type)} is not a MIME type")
    if entry.size is None or entry.sha1 is None:
        raise XdmError(f"document {label} has no {'size' if entry.size is None else 'hash'} in METADATA.XML")
    if not entry.size.isascii() or not entry.size.isdigit() or len(entry.size) > 20:
        raise XdmError(f"document {label}: size in METADATA.XML is not a number")
    if int(entry.size) != len(content):
        declared = int(entry.size)
        raise XdmError(f"document {label}: size mismatch (METADATA.XML says {declared}, the file has {len(content)})")
    sha1 = hashlib.sha1(content, usedforsecurity=False).hexdigest()
    if not _same_hex(entry.sha1, sha1):
        raise XdmError(f"document {label}: SHA-1 hash mismatch")
    sha256 = hashlib.sha256(content).hexdigest()
    if entry.sha256 is not None and not _same_hex(entry.sha256, sha256):
        raise XdmError(f"document {label}: SHA-256 hash mismatch")
    prescription_id = entry.prescription_id
    if prescription_id is not None:
        try:
            check_prescription_id(prescription_id)
        except XdmError as error:
            raise XdmError(f"document {label}: {error}") from None
    return XdmDocument(
        path=path,
        uri=entry.uri,
        title=entry.title,
        mime_type=entry.mime_type,
        size=len(content),
        sha1=sha1,
        sha256=sha256,
        sha256_declared=entry.sha256 is not None,
        author_person=entry.author_person,
        author_id_nat=_id_nat(entry.author_person),
        patient_id=entry.patient_id,
        type_code=entry.type_code,
        prescription_id=prescription_id,
        content=content,
    )


def _check_agreement(submission: SubmissionSet, documents: list[XdmDocument]) -> None:
    """XDS: the submission set and its documents are about one patient (ITI TF-3 §4.1.4)."""
    if submission.patient_id is None:
        return
    for document in documents:
        if document.patient_id is not None and document.patient_id != submission.patient_id:
            raise XdmError(f"document {_shown(document.uri)} is about another patient than its submission set")


def _same_hex(declared: str, computed: str) -> bool:
    return bool(_HEX_RE.fullmatch(declared)) and declared.lower() == computed


def _id_nat(author_person: str | None) -> str | None:
    """The IdNat_PS of an XCN authorPerson whose assigning authority is the ANS's (component 9: ``&OID&ISO``)."""
    if not author_person:
        return None
    components = author_person.split("^")
    if len(components) < 9 or components[8].split("&")[1:2] != [RPPS_AUTHORITY_OID]:
        return None
    identifier = components[0]
    return identifier if identifier.isascii() and identifier.isdigit() else None


@dataclass(frozen=True)
class XdmPart:
    """A MIME part that carries (or claims to carry) an XDM package; ``found_by`` says how it was recognised."""

    file_name: str | None
    content_type: str
    found_by: str  # "file name", "content type" or "content"
    data: bytes


def find_xdm_parts(message: Message | bytes) -> list[XdmPart]:
    """The XDM attachments of a message (parsed, or raw bytes parsed with the default policy), in MIME order.

    A part is one when it is named ``IHE_XDM.ZIP`` (any case), or typed ``application/zip`` (or the older
    ``application/x-zip-compressed``), or typed ``application/octet-stream`` with zip content that has an
    ``IHE_XDM/`` entry (mail clients label attachments that way). Its content is returned undecoded otherwise:
    whether it is a valid package is ``validate_package``'s question.
    """
    if isinstance(message, bytes):
        message = BytesParser(policy=email.policy.default).parsebytes(message)
    parts: list[XdmPart] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        try:
            content_type = part.get_content_type()
            file_name = part.get_filename()
            payload = part.get_payload(decode=True)
        except (ValueError, LookupError, TypeError, binascii.Error):
            continue  # a part we cannot even decode is not an XDM package we could check
        data = payload if isinstance(payload, bytes) else b""
        if file_name is not None and file_name.strip().upper() == "IHE_XDM.ZIP":
            found_by = "file name"
        elif content_type in ("application/zip", "application/x-zip-compressed"):
            found_by = "content type"
        elif content_type == "application/octet-stream" and _looks_like_xdm(data):
            found_by = "content"
        else:
            continue
        parts.append(XdmPart(file_name, content_type, found_by, data))
    return parts


def _looks_like_xdm(data: bytes) -> bool:
    """Zip magic, and an ``IHE_XDM/`` entry in the central directory (read only, nothing decompressed)."""
    if not data.startswith(_ZIP_MAGIC):
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(name.upper().startswith("IHE_XDM/") for name in archive.namelist())
    except _ZIP_ERRORS:
        return b"IHE_XDM/" in data  # a damaged zip that names the directory: let validation refuse it clearly
