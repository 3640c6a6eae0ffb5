"""The directory entry as a value: its fields, its validation, and the text it is searched by.

``EntryData`` is what crosses layers (CLI → service, import files → importer, database → export): a frozen dataclass
of the owner's identity and the mailbox's kind and status. ``validated`` returns the canonical form or raises
``InvalidEntry`` with the first problem found.
"""

from __future__ import annotations

import dataclasses
import unicodedata
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


def fold(text: str) -> str:
    """Lowercase ``text`` and strip its accents: ``fold("Lefèvre") == "lefevre"``."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_LIGATURES))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


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
        return {f: getattr(self, f) for f in DATA_FIELDS}

    def validated(self) -> EntryData:
        """The canonical form of this entry, or InvalidEntry naming the first problem."""
        address = check_address(self.address)
        try:
            kind = Kind(self.kind)
        except ValueError:
            raise InvalidEntry(f"unknown mailbox kind {self.kind!r} (expected {_choices(Kind)})") from None
        try:
            status = Status(self.status)
        except ValueError:
            raise InvalidEntry(f"unknown status {self.status!r} (expected {_choices(Status)})") from None
        changes: dict[str, Any] = {"address": address, "kind": kind, "status": status}
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidEntry(f"{name} must be text")
                value = " ".join(value.split())  # no control characters or line breaks in stored text
                if len(value) > _MAX_TEXT:
                    raise InvalidEntry(f"{name} is longer than {_MAX_TEXT} characters")
                changes[name] = value or None
        entry = dataclasses.replace(self, **changes)
        return entry._with_checked_identifiers()

    def _with_checked_identifiers(self) -> EntryData:
        changes: dict[str, Any] = {}
        if self.identifier_type or self.identifier:
            if not (self.identifier_type and self.identifier):
                raise InvalidEntry("a professional identifier needs both its type and its value")
            kind = self.identifier_type.upper()
            identifier = check_person_identifier(kind, self.identifier)
            expected = national_id(kind, identifier)
            if self.national_id and self.national_id != expected:
                raise InvalidEntry(f"national id {self.national_id} does not match {kind} {identifier}")
            changes.update(identifier_type=kind, identifier=identifier, national_id=expected)
        elif self.national_id:
            raise InvalidEntry("a national id needs the identifier it is made of")
        elif self.kind is Kind.PERSONAL:
            raise InvalidEntry("a personal mailbox needs its owner's RPPS or ADELI identifier")
        if self.structure_id_type or self.structure_id:
            if not (self.structure_id_type and self.structure_id):
                raise InvalidEntry("a structure identifier needs both its type and its value")
            kind = self.structure_id_type.upper()
            changes.update(structure_id_type=kind, structure_id=check_structure_identifier(kind, self.structure_id))
        return dataclasses.replace(self, **changes)


def _choices(enum: type[StrEnum]) -> str:
    return ", ".join(member.value for member in enum)


_MAX_TEXT = 200
_NON_TEXT = {"address", "kind", "status", "dematerialisation", "unlisted"}
DATA_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EntryData))
_TEXT_FIELDS = tuple(f for f in DATA_FIELDS if f not in _NON_TEXT)
