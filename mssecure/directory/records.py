"""The directory entry as a value: its fields, its validation, and the text it is searched by.

``EntryData`` is what crosses layers (CLI → service, import files → importer, database → export): a frozen dataclass
of the owner's identity and the mailbox's kind and status. ``validated`` returns the canonical form or raises
``InvalidEntry`` with the first problem found. The importer's hot path does the same without building an
``EntryData``: ``validated_values`` then ``entry_row``, the plain tuple it stores.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
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
    "MAX_TEXT",
    "ROW_FIELDS",
    "EntryData",
    "Kind",
    "Status",
    "entry_row",
    "fold",
    "validated_values",
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
    if stripped.isascii():  # the common case: French accents only
        return stripped
    stripped = stripped.translate(_LIGATURES)
    if not stripped.isascii():  # rare: marks outside the Latin block, or letters with no decomposition
        stripped = stripped.translate(_strip_marks())
    return stripped


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
        return _search_text(self.__dict__)

    def row(self) -> tuple[Any, ...]:
        """The entry as the importer stores it: its values in ``ROW_FIELDS`` order (see ``entry_row``)."""
        return entry_row(self.__dict__)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def validated(self) -> EntryData:
        """The canonical form of this entry, or InvalidEntry naming the first problem."""
        return EntryData.from_values(self.__dict__)

    @staticmethod
    def from_values(given: Mapping[str, Any]) -> EntryData:
        """A validated, canonical entry from field values (missing fields take their defaults)."""
        return EntryData(**validated_values(given))


def validated_values(given: Mapping[str, Any], *, plain_text: bool = False) -> dict[str, Any]:
    """The canonical values of every field of an entry, from ``given`` (missing fields take their defaults).

    Raises InvalidEntry naming the first problem. ``plain_text`` says that the caller has checked every text value
    is already what this pass would make of it (printable, no surrounding or doubled spaces, at most 200
    characters, None rather than empty): the pass is skipped. One pass over a dict: this runs for every line of a
    540,000-line import.
    """
    values = {**_DEFAULTS, **given}
    values["address"] = check_address(values["address"])
    kind = values["kind"]
    if type(kind) is not Kind:  # calling an enum costs more than the check
        try:
            kind = values["kind"] = Kind(kind)
        except ValueError:
            raise InvalidEntry(f"unknown mailbox kind {kind!r} (expected {_choices(Kind)})") from None
    if type(values["status"]) is not Status:
        try:
            values["status"] = Status(values["status"])
        except ValueError:
            raise InvalidEntry(f"unknown status {values['status']!r} (expected {_choices(Status)})") from None
    if not plain_text:
        for name in _TEXT_FIELDS:
            value = values[name]
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidEntry(f"{name} must be text")
                if not value.isprintable() or "  " in value or value[:1] == " " or value[-1:] == " ":
                    value = " ".join(value.split())  # no control characters or line breaks in stored text
                if len(value) > MAX_TEXT:
                    raise InvalidEntry(f"{name} is longer than {MAX_TEXT} characters")
                values[name] = value or None
    _check_identifiers(values, kind)
    return values


def entry_row(values: Mapping[str, Any]) -> tuple[Any, ...]:
    """Validated field values (``validated_values``) as one row of plain values in ``ROW_FIELDS`` order.

    The fields in ``DATA_FIELDS`` order with the kind and status as their text, then the domain and the search
    text: what the importer writes, and what a parsing worker sends it (plain tuples cost little to pickle).
    """
    address: str = values["address"]
    return (
        address,
        str(values["kind"]),
        str(values["status"]),
        *_OTHER_FIELDS(values),
        address.rpartition("@")[2],
        _search_text(values),
    )


def _search_text(values: Mapping[str, Any]) -> str:
    # fold(" ".join(parts)), folding part by part: folding works character by character, and most parts (the address,
    # the identifiers) are ASCII, which only needs lower().
    return " ".join([p.lower() if p.isascii() else fold(p) for p in _SEARCHED(values) if p])


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


MAX_TEXT = 200  # characters of a text field
_NON_TEXT = {"address", "kind", "status", "dematerialisation", "unlisted"}
DATA_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EntryData))
# What the importer stores for an entry, in the order of its rows: the fields, then what is derived from them.
ROW_FIELDS: tuple[str, ...] = (*DATA_FIELDS, "domain", "search_text")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EntryData) if f.default is not dataclasses.MISSING}
_TEXT_FIELDS = tuple(f for f in DATA_FIELDS if f not in _NON_TEXT)
_OTHER_FIELDS = operator.itemgetter(*DATA_FIELDS[3:])  # after address, kind and status
# The fields ``directory search`` matches, in the order of the search text.
_SEARCHED = operator.itemgetter(
    "address", "last_name", "first_name", "identifier", "national_id", "structure_id", "organization",
    "trade_name", "service", "profession_label", "specialty_label",
)  # fmt: skip
