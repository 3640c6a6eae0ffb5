"""What an XDM package is about: the documents, their author (a professional with an RPPS) and the patient (INS).

Pure values with their checks; ``XdmError`` says which field is wrong. The identifiers follow the ANS conventions
used by the CI-SIS (cadre d'interopérabilité des systèmes d'information de santé):

- a professional is identified by the "identifiant national" ``8`` + RPPS (IdNat_PS), assigning authority
  ``1.2.250.1.71.4.2.1``, identifier type ``IDNPS``;
- a patient by the matricule INS: the 13-character NIR (or NIA) followed by its 2-digit key, OID
  ``1.2.250.1.213.1.4.8`` for the INS-NIR (``.9`` INS-NIA, ``.10``/``.11`` the test NIR/NIA).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from mssecure.directory.identifiers import check_rpps, national_id
from mssecure.errors import InvalidEntry
from mssecure.xdm._errors import XdmError

__all__ = [
    "INS_NIA_OID",
    "INS_NIR_OID",
    "INS_TEST_NIA_OID",
    "INS_TEST_NIR_OID",
    "RPPS_AUTHORITY_OID",
    "Author",
    "Document",
    "Patient",
    "check_ins",
    "check_prescription_id",
    "ins_key",
]

INS_NIR_OID = "1.2.250.1.213.1.4.8"
INS_NIA_OID = "1.2.250.1.213.1.4.9"
INS_TEST_NIR_OID = "1.2.250.1.213.1.4.10"
INS_TEST_NIA_OID = "1.2.250.1.213.1.4.11"
RPPS_AUTHORITY_OID = "1.2.250.1.71.4.2.1"  # ANS: national identifiers of professionals (IdNat_PS)

_INS_OIDS = (INS_NIR_OID, INS_NIA_OID, INS_TEST_NIR_OID, INS_TEST_NIA_OID)
# HL7 v2 delimiters (| ^ ~ \ &) would change the meaning of an XCN/CX value; control characters have no place in names.
_NAME_FORBIDDEN = re.compile(r"[|^~\\&\x00-\x1f\x7f]")
_NIR_RE = re.compile(r"[1-478][0-9]{4}(?:[0-9]{2}|2[AB])[0-9]{6}")


def ins_key(nir: str) -> str:
    """The 2-digit key of a 13-character NIR (checked by the caller): 97 minus the NIR modulo 97.

    For Corsica the department 2A counts as 19 and 2B as 18 (INSEE).
    """
    nir = nir.upper()
    department = nir[5:7]
    number = nir[:5] + {"2A": "19", "2B": "18"}.get(department, department) + nir[7:]
    return f"{97 - int(number) % 97:02d}"


def check_ins(value: str) -> str:
    """The matricule INS (15 characters: NIR + key, spaces removed), or XdmError saying what is wrong."""
    ins = "".join(value.split()).upper()
    if len(ins) != 15 or not ins.isascii() or not _NIR_RE.fullmatch(ins[:13]) or not ins[13:].isdigit():
        raise XdmError("bad INS: expected 15 characters (the 13-character NIR then its 2-digit key)")
    if ins_key(ins[:13]) != ins[13:]:
        raise XdmError("bad INS: the key does not match the NIR")
    return ins


_PRESCRIPTION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


def check_prescription_id(value: str) -> str:
    """A prescription identifier: 1 to 128 ASCII letters, digits and ``. _ : / -``, so it fits a header as it is.

    Its structure is the prescribing software's (an e-prescription number, a UUID, an OID-rooted id); we only keep
    it to a character set that can travel in a mail header and in a log line without escaping.
    """
    if not _PRESCRIPTION_ID_RE.fullmatch(value):
        raise XdmError("bad prescription identifier: 1 to 128 letters, digits and . _ : / - (starting alphanumeric)")
    return value


def _check_name(field: str, value: str) -> str:
    name = " ".join(value.split())
    if not name:
        raise XdmError(f"empty {field}")
    if _NAME_FORBIDDEN.search(name) or not name.isprintable():
        raise XdmError(f"bad {field}: the characters | ^ ~ \\ & and control characters are not allowed")
    return name


@dataclass(frozen=True)
class Author:
    """The professional who wrote the documents: names and RPPS (checked, Luhn key included)."""

    family_name: str
    given_name: str
    rpps: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "family_name", _check_name("author family name", self.family_name))
        object.__setattr__(self, "given_name", _check_name("author given name", self.given_name))
        try:
            object.__setattr__(self, "rpps", check_rpps(self.rpps))
        except InvalidEntry as error:
            raise XdmError(f"author: {error}") from None

    @property
    def id_nat(self) -> str:
        """The IdNat_PS: ``8`` followed by the RPPS."""
        return national_id("RPPS", self.rpps)


@dataclass(frozen=True)
class Patient:
    """The patient the documents are about.

    ``ins`` is the matricule INS; give it only when the identity is qualified (référentiel national d'identitovigilance:
    an unqualified identity must not carry its INS), which is what ``X-MSS-INS: O`` then asserts. Without an INS the
    patient is identified by a local identifier and the OID of the system that assigned it.
    """

    family_name: str
    given_name: str
    birth_date: date
    sex: str | None = None  # "M", "F" or "U" (HL7 administrative sex, as in PID-8)
    ins: str | None = None
    ins_oid: str = INS_NIR_OID
    local_id: str | None = None
    local_oid: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "family_name", _check_name("patient family name", self.family_name))
        object.__setattr__(self, "given_name", _check_name("patient given name", self.given_name))
        if self.sex is not None and self.sex not in ("M", "F", "U"):
            raise XdmError("bad patient sex: expected M, F or U")
        if self.ins is not None:
            object.__setattr__(self, "ins", check_ins(self.ins))
            if self.ins_oid not in _INS_OIDS:
                raise XdmError(f"bad INS OID {self.ins_oid!r}: expected one of {', '.join(_INS_OIDS)}")
        elif not (self.local_id and self.local_oid):
            raise XdmError("the patient needs an INS, or a local identifier with the OID of its assigning system")
        else:
            _check_name("patient local identifier", self.local_id)
            if not re.fullmatch(r"[0-2](?:\.(?:0|[1-9][0-9]*))+", self.local_oid):
                raise XdmError(f"bad OID {self.local_oid!r} for the patient's local identifier")

    @property
    def patient_id(self) -> str:
        """The patient identifier in HL7 v2 CX form, as XDS metadata carries it: ``ID^^^&OID&ISO``."""
        if self.ins is not None:
            return f"{self.ins}^^^&{self.ins_oid}&ISO"
        return f"{self.local_id}^^^&{self.local_oid}&ISO"


@dataclass(frozen=True)
class Document:
    """One document to package: its original file name (kept as the title when none is given), bytes, MIME type."""

    file_name: str
    content: bytes
    mime_type: str
    title: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", self.mime_type.lower()):
            raise XdmError(f"bad MIME type {self.mime_type!r} for {self.file_name!r}")
        object.__setattr__(self, "mime_type", self.mime_type.lower())
        _check_name("document file name", self.file_name)
        if self.title is not None:
            _check_name("document title", self.title)
