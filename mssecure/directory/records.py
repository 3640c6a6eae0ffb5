"""The directory entry as a value: its fields, its validation, and the text it is searched by.

``EntryData`` is what crosses layers (CLI → service, import files → importer, database → export): a frozen dataclass
of the owner's identity and the mailbox's kind and status. ``validated`` returns the canonical form or raises
``InvalidEntry`` with the first problem found.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mssecure.directory.identifiers import (
    check_address,
    check_person_identifier,
    check_structure_identifier,
    national_id,
)
from mssecure.errors import InvalidEntry

__all__ = [
    "DATA_FIELDS",
    "EntryData",
    "Kind",
    "Status",
    "fold",
]


class Kind(StrEnum):
    """The kind of mailbox (BAL): a professional's, a service's or a pharmacy's, or a piece of software's."""

    PERSONAL = "personal"
    ORGANIZATIONAL = "organizational"
    APPLICATIVE = "applicative"


class Status(StrEnum):
    """Lifecycle of an entry: active ⇄ suspended, either → revoked, and revoked is final."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


# Folding for accent- and case-insensitive search: NFKD drops the accents, these ligatures have no decomposition.
_LIGATURES = str.maketrans({"œ": "oe", "Œ": "oe", "æ": "ae", "Æ": "ae", "ß": "ss"})


_LATIN_MARKS = re.compile("[\u0300-\u036f]+")  # the Combining Diacritical Marks block: every French accent


@functools.cache
def _strip_marks() -> dict[int, None]:
    """A str.translate table deleting every combining mark (built once, on first use)."""
    return {cp: None for cp in range(0x300, sys.maxunicode + 1) if unicodedata.combining(chr(cp))}


def _fold_once(text: str) -> str:
    if text.isascii():
        return text.lower()
    stripped = _LATIN_MARKS.sub("", unicodedata.normalize("NFKD", text.casefold()))
    if not stripped.isascii():  # rare: marks outside the Latin block, or letters with no decomposition
        stripped = stripped.translate(_strip_marks())
    return stripped.translate(_LIGATURES)


def fold(text: str) -> str:
    """Lowercase ``text`` and strip its accents: ``fold("Lefèvre") == "lefevre"``.

    Repeated to a fixed point (a decomposition can yield capitals, a case folding can yield accents), so that
    folding folded text changes nothing.
    """
    folded = _fold_once(text)
    for _ in range(4):
        again = _fold_once(folded)
        if again == folded:
            break
        folded = again
    return folded


@dataclass(frozen=True)
class EntryData:
    """Everything the directory knows about a certified address, except its history.

    Field names follow the columns of the national extraction ("Extraction Correspondance MSSanté").
    """

    address: str
    kind: Kind
    status: Status = Status.ACTIVE
    # The professional (personal mailboxes): RPPS or ADELI, and the national id = type prefix + identifier.
    identifier_type: str | None = None
    identifier: str | None = None
    national_id: str | None = None
    civility: str | None = None
    last_name: str | None = None
    first_name: str | None = None
    category_code: str | None = None
    category_label: str | None = None
    profession_code: str | None = None
    profession_label: str | None = None
    specialty_code: str | None = None  # "savoir-faire"
    specialty_label: str | None = None
    # The structure the mailbox belongs to: FINESS, SIREN, SIRET (or RPPS for a practice).
    structure_id_type: str | None = None
    structure_id: str | None = None
    organization: str | None = None  # "raison sociale"
    trade_name: str | None = None  # "enseigne commerciale"
    service: str | None = None  # "service de rattachement"
    address_complement: str | None = None  # postal line 2
    address_distribution: str | None = None  # postal line 3
    street_number: str | None = None
    street_number_suffix: str | None = None
    street_type: str | None = None
    street_name: str | None = None
    locality: str | None = None  # postal line 5, "lieu-dit"
    routing_line: str | None = None  # postal line 6, "ligne d'acheminement"
    postal_code: str | None = None
    department: str | None = None
    country: str | None = None
    dematerialisation: bool | None = None  # accepts paper-free exchanges
    unlisted: bool = False  # "liste rouge": never published in an exported directory

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    @property
    def display_name(self) -> str:
        """The owner's name as people write it: "Camille LEFÈVRE", or the organization's name."""
        person = " ".join(part for part in (self.first_name, self.last_name) if part)
        return person or self.organization or ""

    def search_text(self) -> str:
        """The folded text ``directory search`` matches: names, address, identifiers, organization, service."""
        parts = (
            self.address,
            self.last_name,
            self.first_name,
            self.identifier,
            self.national_id,
            self.structure_id,
            self.organization,
            self.trade_name,
            self.service,
            self.profession_label,
            self.specialty_label,
        )
        return fold(" ".join(p for p in parts if p))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def validated(self) -> EntryData:
        """The canonical form of this entry, or InvalidEntry naming the first problem."""
        return EntryData.from_values(self.__dict__)

    @staticmethod
    def from_values(given: Mapping[str, Any]) -> EntryData:
        """A validated, canonical entry from field values (missing fields take their defaults).

        One pass over a dict and one construction: this runs for every line of a 540,000-line import.
        """
        values = {**_DEFAULTS, **given}
        values["address"] = check_address(values["address"])
        try:
            kind = values["kind"] = Kind(values["kind"])
        except ValueError:
            raise InvalidEntry(f"unknown mailbox kind {values['kind']!r} (expected {_choices(Kind)})") from None
        try:
            values["status"] = Status(values["status"])
        except ValueError:
            raise InvalidEntry(f"unknown status {values['status']!r} (expected {_choices(Status)})") from None
        for name in _TEXT_FIELDS:
            value = values[name]
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidEntry(f"{name} must be text")
                if not value.isprintable() or "  " in value or value[:1] == " " or value[-1:] == " ":
                    value = " ".join(value.split())  # no control characters or line breaks in stored text
                if len(value) > _MAX_TEXT:
                    raise InvalidEntry(f"{name} is longer than {_MAX_TEXT} characters")
                values[name] = value or None
        _check_identifiers(values, kind)
        return EntryData(**values)


def _check_identifiers(values: dict[str, Any], kind: Kind) -> None:
    """Canonicalise (in ``values``) the professional and structure identifiers, or raise InvalidEntry."""
    id_type, identifier, given_national_id = values["identifier_type"], values["identifier"], values["national_id"]
    if id_type or identifier:
        if not (id_type and identifier):
            raise InvalidEntry("a professional identifier needs both its type and its value")
        id_type = id_type.upper()
        identifier = check_person_identifier(id_type, identifier)
        expected = national_id(id_type, identifier)
        if given_national_id and given_national_id != expected:
            raise InvalidEntry(f"national id {given_national_id} does not match {id_type} {identifier}")
        values.update(identifier_type=id_type, identifier=identifier, national_id=expected)
    elif given_national_id:
        raise InvalidEntry("a national id needs the identifier it is made of")
    elif kind is Kind.PERSONAL:
        raise InvalidEntry("a personal mailbox needs its owner's RPPS or ADELI identifier")
    structure_type, structure_id = values["structure_id_type"], values["structure_id"]
    if structure_type or structure_id:
        if not (structure_type and structure_id):
            raise InvalidEntry("a structure identifier needs both its type and its value")
        structure_type = structure_type.upper()
        values.update(
            structure_id_type=structure_type, structure_id=check_structure_identifier(structure_type, structure_id)
        )


def _choices(enum: type[StrEnum]) -> str:
    return ", ".join(member.value for member in enum)


_MAX_TEXT = 200
_NON_TEXT = {"address", "kind", "status", "dematerialisation", "unlisted"}
DATA_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EntryData))
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EntryData) if f.default is not dataclasses.MISSING}
_TEXT_FIELDS = tuple(f for f in DATA_FIELDS if f not in _NON_TEXT)
