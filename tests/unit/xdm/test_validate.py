"""Every reason an arriving XDM package is refused, each with a crafted zip; and what is accepted."""

from __future__ import annotations

import stat
import xml.etree.ElementTree as ET
import zipfile
import zlib

import pytest

from mssecure.errors import MssecureError
from mssecure.xdm import Document, XdmError, XdmLimits, validate_package
from tests.unit.xdm.samples import (
    CDA_PATH,
    METADATA_PATH,
    PDF,
    PDF_PATH,
    RIM,
    edit_metadata,
    entries,
    make_zip,
    package,
    patch_entry,
    rezip,
    slot_values,
)


def refused(data: bytes, reason: str, limits: XdmLimits | None = None) -> XdmError:
    with pytest.raises(XdmError, match=reason) as caught:
        validate_package(data, limits) if limits else validate_package(data)
    assert isinstance(caught.value, MssecureError)
    assert "\n" not in caught.value.reason
    return caught.value


def metadata_with(text: bytes) -> bytes:
    return rezip(package(), replace={METADATA_PATH: text})


# --- the zip itself ---------------------------------------------------------------------------------------------


def test_not_a_zip() -> None:
    refused(b"%PDF-1.4 this is not a zip", "not a zip file")
    refused(b"", "not a zip file")


def test_truncated_zip() -> None:
    data = package()
    refused(data[: len(data) // 2], "corrupt zip file")
    refused(data[:-10], "corrupt zip file")


def test_corrupt_crc() -> None:
    data = make_zip([("IHE_XDM/SUBSET01/DOC0001.PDF", PDF)], compression=zipfile.ZIP_STORED)
    position = data.index(PDF) + 5
    damaged = data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]
    refused(damaged, r"corrupt zip file \(Bad CRC-32")


def test_package_larger_than_limit() -> None:
    refused(package(), "larger than 100 bytes", XdmLimits(max_package_size=100))


def test_encrypted_entry() -> None:
    data = patch_entry(package(), PDF_PATH, flag_bits=0x1)
    refused(data, "'IHE_XDM/SUBSET01/DOC0001.PDF' is encrypted")


def test_unsupported_compression_method() -> None:
    buffer = make_zip([("IHE_XDM/SUBSET01/DOC0001.PDF", PDF)], compression=zipfile.ZIP_BZIP2)
    refused(buffer, "unsupported compression method")


# --- names ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.sh", "path traversal"),
        ("IHE_XDM/SUBSET01/../../evil.sh", "path traversal"),
        ("IHE_XDM//SUBSET01/x", "path traversal"),
        ("/etc/passwd", "absolute path"),
        ("C:/Windows/evil.exe", "absolute path"),
        ("c:evil.exe", "absolute path"),
        ("IHE_XDM\\SUBSET01\\DOC0001.PDF", "backslash"),
        ("..\\evil.sh", "backslash"),
        ("IHE_XDM/SUBSET01/a\x1bb", "control characters"),
    ],
)
def test_dangerous_names(name: str, reason: str) -> None:
    refused(rezip(package(), add=[(name, b"x")]), reason)


def test_nul_in_a_name() -> None:
    data = rezip(package(), add=[("IHE_XDM/SUBSET01/aXb.PDF", b"x")])
    data = data.replace(b"IHE_XDM/SUBSET01/aXb.PDF", b"IHE_XDM/SUBSET01/a\x00b.PDF")
    refused(data, "contains a NUL character")


def test_symlink_entry() -> None:
    link = zipfile.ZipInfo("IHE_XDM/SUBSET01/LINK")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    refused(rezip(package(), add=[(link, b"/etc/passwd")]), "symbolic link")


def test_duplicate_names() -> None:
    refused(rezip(package(), add=[(PDF_PATH, PDF)]), "duplicate zip entry 'IHE_XDM/SUBSET01/DOC0001.PDF'")
    refused(rezip(package(), add=[(PDF_PATH.lower(), PDF)]), "duplicate zip entry")


# --- zip bombs --------------------------------------------------------------------------------------------------


def test_compression_ratio_bomb() -> None:
    bomb = rezip(package(), add=[("IHE_XDM/SUBSET01/ZEROS.BIN", bytes(2 * 1024 * 1024))])
    assert len(bomb) < 64 * 1024
    refused(bomb, "compressed suspiciously well")


def test_entry_and_total_size_limits() -> None:
    refused(package(), "too large", XdmLimits(max_entry_size=len(PDF) - 1))
    refused(package(), "larger than 300 bytes uncompressed", XdmLimits(max_total_size=300))


def test_too_many_entries() -> None:
    refused(package(), r"too many zip entries \(5, at most 4\)", XdmLimits(max_entries=4))


def test_lying_header_bomb_is_not_decompressed_past_its_declared_size() -> None:
    # 8 MiB of zeros whose headers claim 1,000 bytes: the declared-size checks pass, so only the streaming cap and
    # the CRC stand between us and the real size.
    data = rezip(package(), add=[("IHE_XDM/SUBSET01/BOMB.BIN", bytes(8 * 1024 * 1024))])
    lying = patch_entry(data, "IHE_XDM/SUBSET01/BOMB.BIN", file_size=1000, crc=zlib.crc32(bytes(1000)))
    limits = XdmLimits(max_total_size=64 * 1024)  # the real content would blow this at once
    # Read as the 1,000 bytes it claims (the CRC matches those): refused as a file the metadata does not list.
    refused(lying, "'IHE_XDM/SUBSET01/BOMB.BIN' is in the package but not listed", limits)


def test_lying_header_without_matching_crc() -> None:
    data = rezip(package(), add=[("IHE_XDM/SUBSET01/BOMB.BIN", bytes(8 * 1024 * 1024))])
    lying = patch_entry(data, "IHE_XDM/SUBSET01/BOMB.BIN", file_size=1000)
    refused(lying, "corrupt zip file")


def test_header_claiming_more_than_it_holds() -> None:
    lying = patch_entry(package(), PDF_PATH, file_size=len(PDF) + 10)
    refused(lying, "corrupt zip file|shorter than its header says")


def test_overlapping_entries() -> None:
    data = package()
    first = entries(data)[0][0].header_offset
    refused(patch_entry(data, PDF_PATH, header_offset=first), "overlaps another entry")


def test_nested_zip_is_a_document_not_expanded() -> None:
    inner = package()
    data = package(documents=[Document("inner.zip", inner, "application/zip")])
    checked = validate_package(data)
    assert [document.content for document in checked.documents] == [inner]
    assert checked.documents[0].path == "IHE_XDM/SUBSET01/DOC0001.ZIP"


# --- layout and metadata ----------------------------------------------------------------------------------------


def test_no_ihe_xdm_directory() -> None:
    refused(make_zip([("README.TXT", b"hello"), ("ordonnance.pdf", PDF)]), "no IHE_XDM/ directory")


def test_no_metadata() -> None:
    refused(rezip(package(), drop=[METADATA_PATH]), "no IHE_XDM/<subset>/METADATA.XML")


def test_metadata_not_xml() -> None:
    refused(metadata_with(b"<lcm:SubmitObjectsRequest"), "METADATA.XML refused: not well-formed XML")
    refused(metadata_with(b"\xff\xfe\x00garbage"), "not well-formed XML")


def test_metadata_not_submit_objects_request() -> None:
    refused(
        metadata_with(b'<rim:RegistryPackage xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"/>'),
        "not an ebRIM SubmitObjectsRequest",
    )
    refused(metadata_with(b"<SubmitObjectsRequest/>"), "not an ebRIM SubmitObjectsRequest")
    refused(
        metadata_with(b'<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"/>'),
        "no RegistryObjectList",
    )


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0">&lol4;</lcm:SubmitObjectsRequest>
"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0">&xxe;</lcm:SubmitObjectsRequest>
"""
EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE r SYSTEM "http://attacker.test/evil.dtd">
<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"/>
"""


@pytest.mark.parametrize("metadata", [BILLION_LAUGHS, XXE, EXTERNAL_DTD], ids=["billion-laughs", "xxe", "dtd"])
def test_doctype_and_entities_refused(metadata: bytes) -> None:
    refused(metadata_with(metadata), "DOCTYPE is not allowed")


def test_undeclared_entity_refused() -> None:
    refused(
        metadata_with(b'<lcm:SubmitObjectsRequest xmlns:lcm="urn:x">&xxe;</lcm:SubmitObjectsRequest>'),
        "undefined entity",
    )


def test_deep_nesting_refused() -> None:
    refused(metadata_with(b"<a>" * 500 + b"</a>" * 500), "nested deeper than")


def test_metadata_size_limit() -> None:
    refused(package(), "METADATA.XML larger than 100 bytes", XdmLimits(max_metadata_size=100))


def test_listed_document_missing() -> None:
    refused(rezip(package(), drop=[CDA_PATH]), "'IHE_XDM/SUBSET01/DOC0002.XML' is listed in METADATA.XML but missing")


def test_unlisted_file() -> None:
    data = rezip(package(), add=[("IHE_XDM/SUBSET01/EXTRA.EXE", b"MZ")])
    refused(data, "file 'IHE_XDM/SUBSET01/EXTRA.EXE' is in the package but not listed")
    refused(rezip(package(), add=[("autorun.inf", b"x")]), "'autorun.inf' is in the package but not listed")
    assert validate_package(data, XdmLimits(allow_unlisted=True)).unlisted == ("IHE_XDM/SUBSET01/EXTRA.EXE",)


def test_readme_and_index_are_optional() -> None:
    assert len(validate_package(rezip(package(), drop=["README.TXT", "INDEX.HTM"])).documents) == 2


def test_directory_entries_are_accepted() -> None:
    data = rezip(package(), add=[("IHE_XDM/", b""), ("IHE_XDM/SUBSET01/", b"")])
    assert len(validate_package(data).documents) == 2


def test_content_changed_same_size_is_a_sha1_mismatch() -> None:
    tampered = PDF.replace(b"Catalog", b"Katalog")
    refused(rezip(package(), replace={PDF_PATH: tampered}), "'DOC0001.PDF': SHA-1 hash mismatch")


def test_sha256_slot_checked() -> None:
    def edit(root: ET.Element) -> None:
        slot_values(root, "urn:mssecure:sha256")[0].text = "00" * 32

    refused(edit_metadata(package(), edit), "'DOC0001.PDF': SHA-256 hash mismatch")


def test_sha256_slot_optional_for_other_producers() -> None:
    def edit(root: ET.Element) -> None:
        for parent in root.iter():
            for slot in list(parent.findall(f"{RIM}Slot")):
                if slot.get("name") == "urn:mssecure:sha256":
                    parent.remove(slot)

    checked = validate_package(edit_metadata(package(), edit))
    assert [document.sha256_declared for document in checked.documents] == [False, False]


def test_size_mismatch() -> None:
    def edit(root: ET.Element) -> None:
        slot_values(root, "size")[0].text = str(len(PDF) + 1)

    refused(edit_metadata(package(), edit), rf"size mismatch \(METADATA.XML says {len(PDF) + 1}, the file has")


@pytest.mark.parametrize("value", ["-1", "12abc", "9" * 5000, ""])
def test_size_not_a_number(value: str) -> None:
    def edit(root: ET.Element) -> None:
        slot_values(root, "size")[0].text = value

    refused(edit_metadata(package(), edit), "size in METADATA.XML is not a number")


@pytest.mark.parametrize(("slot", "reason"), [("hash", "no hash"), ("size", "no size"), ("URI", "has no URI")])
def test_required_slot_missing(slot: str, reason: str) -> None:
    def edit(root: ET.Element) -> None:
        for parent in root.iter():
            for element in list(parent.findall(f"{RIM}Slot")):
                if element.get("name") == slot:
                    parent.remove(element)

    refused(edit_metadata(package(), edit), reason)


@pytest.mark.parametrize("uri", ["../../README.TXT", "/etc/passwd", "..\\x", "C:/x", "a//b", "./DOC0001.PDF"])
def test_document_uri_traversal(uri: str) -> None:
    def edit(root: ET.Element) -> None:
        slot_values(root, "URI")[0].text = uri

    refused(edit_metadata(package(), edit), "is not a (plain )?relative path")


def test_document_listed_twice() -> None:
    def edit(root: ET.Element) -> None:
        slot_values(root, "URI")[1].text = "DOC0001.PDF"

    refused(edit_metadata(package(), edit), "lists 'IHE_XDM/SUBSET01/DOC0001.PDF' twice")


def test_no_document_entry() -> None:
    def edit(root: ET.Element) -> None:
        for element in root.iter(f"{RIM}ExtrinsicObject"):
            element.set("objectType", "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248")  # on-demand: not ours

    refused(edit_metadata(package(), edit), "lists no document")


def test_documents_about_different_patients() -> None:
    def edit(root: ET.Element) -> None:
        for identifier in root.iter(f"{RIM}ExternalIdentifier"):
            if identifier.get("registryObject") == "Document02" and "ISO" in identifier.get("value", ""):
                identifier.set("value", "IPP-1^^^&1.2.3&ISO")

    refused(edit_metadata(package(), edit), "another patient than its submission set")


def test_different_prescription_identifiers() -> None:
    def edit(root: ET.Element) -> None:
        slot_values(root, "urn:mssecure:prescription-id")[1].text = "RX-OTHER"

    refused(edit_metadata(package(), edit), "different prescription identifiers")


def test_malformed_prescription_identifier() -> None:
    def edit(root: ET.Element) -> None:
        for value in slot_values(root, "urn:mssecure:prescription-id"):
            value.text = "RX 1; DROP"

    refused(edit_metadata(package(), edit), "bad prescription identifier")


def test_author_without_ans_authority_has_no_rpps() -> None:
    def edit(root: ET.Element) -> None:
        for value in slot_values(root, "authorPerson"):
            value.text = "12345^Martin^Claire^^^^^^&1.2.3.4&ISO"

    checked = validate_package(edit_metadata(package(), edit))
    assert checked.author_id_nat is None
    assert checked.author_rpps is None
    assert checked.documents[0].author_person == "12345^Martin^Claire^^^^^^&1.2.3.4&ISO"


def test_reasons_escape_hostile_names() -> None:
    error = refused(rezip(package(), add=[("IHE_XDM/SUBSET01/\u202eFDP.EXE", b"x")]), "control characters")
    assert error.reason.isascii()  # the right-to-left override is shown escaped, not applied to the log line


@pytest.mark.parametrize("mime_type", ["application/pdf\r\nX-Evil: 1", "pdf", "text/"])
def test_mime_type_must_be_one(mime_type: str) -> None:
    def edit(root: ET.Element) -> None:
        next(root.iter(f"{RIM}ExtrinsicObject")).set("mimeType", mime_type)

    refused(edit_metadata(package(), edit), "is not a MIME type")


def test_several_subsets() -> None:
    files = {info.filename: content for info, content in entries(package())}
    second = {name.replace("SUBSET01", "SUBSET02"): content for name, content in files.items() if "SUBSET01" in name}
    checked = validate_package(rezip(package(), add=list(second.items())))
    assert [document.path for document in checked.documents] == [
        PDF_PATH,
        CDA_PATH,
        "IHE_XDM/SUBSET02/DOC0001.PDF",
        "IHE_XDM/SUBSET02/DOC0002.XML",
    ]
