"""A generator of synthetic national directory extractions, for the demo, the tests and the benchmarks.

Everything is invented (names, identifiers with valid check digits, addresses under ``.mssante.test``) and
deterministic for a given seed. ``with_errors`` appends one line of each kind the importer must reject, plus
duplicates, so that a generated file exercises the whole import report.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from mssecure.directory.formats import EXTRACTION_HEADER
from mssecure.directory.identifiers import luhn_check_digit
from mssecure.directory.records import fold

__all__ = ["DEFAULT_DOMAINS", "SampleSummary", "write_sample_extraction"]

DEFAULT_DOMAINS = (
    "chu-nord.mssante.test",
    "clinique-des-lilas.mssante.test",
    "ght-sud.mssante.test",
    "medecin.mssante.test",
    "pharmacien.mssante.test",
    "infirmier.mssante.test",
)
_FIRST = (
    "Camille", "Chloé", "Inès", "Zoé", "Anaïs", "Léa", "Manon", "Hélène", "Agnès", "Maëlle", "Benoît", "Luc",
    "Jérôme", "François", "Raphaël", "Noël", "Hugo", "Théo", "Loïc", "Gaëtan", "Éric", "Joël", "Cécile", "Élodie",
)  # fmt: skip
_LAST = (
    "Lefèvre", "Martin", "Girard", "Moreau", "Garcia", "Bertrand", "Morel", "Dupré", "Bénard", "Le Gall", "Perrin",
    "Roussel", "Faure", "Mercier", "Boyer", "Lemaître", "Chevalier", "Gauthier", "Noël", "Fontaine", "Brûlé",
    "Caron", "Aubert", "Lacroix", "Rivière", "Ménard", "Collin", "Œuvray", "Hébert", "Besnard",
)  # fmt: skip
_PROFESSIONS = (
    ("10", "Médecin"), ("21", "Pharmacien"), ("40", "Chirurgien-Dentiste"), ("50", "Sage-Femme"),
    ("60", "Infirmier"), ("70", "Masseur-Kinésithérapeute"),
)  # fmt: skip
_SPECIALTIES = (
    ("SM53", "Spécialiste en Médecine Générale"), ("SM26", "Qualifié en Médecine Générale"),
    ("SM04", "Cardiologie et maladies vasculaires"), ("SM40", "Pédiatrie"), ("SM38", "Psychiatrie"),
)  # fmt: skip
_ORGANIZATIONS = (
    "Centre Hospitalier Universitaire", "Clinique des Lilas", "Pharmacie du Marché", "Pharmacie de la Gare",
    "Maison de santé pluriprofessionnelle", "Laboratoire Bio-Ouest", "Cabinet médical des Tilleuls",
)  # fmt: skip
_SERVICES = ("", "", "Cardiologie", "Urgences", "Pharmacie à usage intérieur", "Officine", "Secrétariat")
_CITIES = (
    ("59000", "LILLE", "59"), ("35000", "RENNES", "35"), ("69003", "LYON", "69"), ("29200", "BREST", "29"),
    ("06000", "NICE", "06"), ("31000", "TOULOUSE", "31"), ("20000", "AJACCIO", "2A"),
)  # fmt: skip
_STREETS = ("de la République", "des Écoles", "Jean Jaurès", "Victor Hugo", "du Général de Gaulle")


@dataclass(frozen=True)
class SampleSummary:
    """What a generated file holds: its data lines, and how many the importer should reject or count twice."""

    lines: int
    valid: int
    rejected: int
    duplicates: int


def _luhn_number(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return body + luhn_check_digit(body)


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in fold(text)).split())


class _Generator:
    def __init__(self, seed: int, domains: Sequence[str]) -> None:
        self.rng = random.Random(seed)
        self.domains = tuple(domains)
        self.taken: dict[str, int] = {}

    def _address(self, base: str, domain: str) -> str:
        n = self.taken.get(f"{base}@{domain}", 0)
        self.taken[f"{base}@{domain}"] = n + 1
        return f"{base}{n if n else ''}@{domain}"

    def _structure(self) -> list[str]:
        rng = self.rng
        organization = rng.choice(_ORGANIZATIONS)
        postal_code, city, department = rng.choice(_CITIES)
        return [
            organization,
            organization.upper() if rng.random() < 0.5 else "",
            rng.choice(("", "", "Bâtiment B")),
            "",
            str(rng.randint(1, 200)),
            rng.choice(("", "", "BIS")),
            rng.choice(("R", "AV", "BD", "PL")),
            rng.choice(_STREETS),
            "",
            f"{postal_code} {city}",
            postal_code,
            department,
            "FRANCE",
        ]

    def line(self) -> str:
        rng = self.rng
        domain = rng.choice(self.domains)
        finess = _luhn_number(rng, rng.choice(("59", "35", "69", "29", "06", "31")), 9)
        roll = rng.random()
        if roll < 0.8:
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            address = self._address(f"{_slug(first).replace('-', '')}.{_slug(last)}", domain)
            code, label = rng.choice(_PROFESSIONS)
            specialty = rng.choice(_SPECIALTIES) if code == "10" else ("", "")
            if rng.random() < 0.9:
                id_type, identifier = "8", _luhn_number(rng, "10", 11)
            else:
                id_type, identifier = "0", "".join(rng.choice("0123456789") for _ in range(9))
            columns = [
                "PER", address, id_type, identifier, id_type + identifier, "1", finess, rng.choice(_SERVICES),
                rng.choice(("", "M", "MME", "DR", "PR")), last.upper(), first, "C", "Civil", code, label,
                *specialty, rng.choice(("", "true", "false", "1", "True", "False")),
            ]  # fmt: skip
        else:
            kind = "ORG" if roll < 0.95 else "APP"
            base = _slug(rng.choice(_ORGANIZATIONS)) if kind == "ORG" else rng.choice(("lgc", "sih", "lab-system"))
            columns = [kind, self._address(base, domain), "", "", "", "1", finess, rng.choice(_SERVICES)]
            columns += [""] * 9 + [rng.choice(("", "true"))]
        return "|".join(columns + self._structure())


def write_sample_extraction(
    out: IO[str],
    lines: int,
    *,
    seed: int = 1,
    domains: Sequence[str] = DEFAULT_DOMAINS,
    with_errors: bool = False,
) -> SampleSummary:
    """Write a synthetic extraction of ``lines`` valid data lines (plus error lines when ``with_errors``)."""
    generator = _Generator(seed, domains)
    out.write("|".join(EXTRACTION_HEADER) + "\n")
    first = ""
    for _ in range(lines):
        line = generator.line()
        first = first or line
        out.write(line + "\n")
    if not with_errors:
        return SampleSummary(lines=lines, valid=lines, rejected=0, duplicates=0)
    columns = first.split("|")

    def variant(**changes: str) -> str:
        values = list(columns)
        for position, value in changes.items():
            values[int(position[1:])] = value
        return "|".join(values)

    bad = [
        "|".join(columns[:20]),  # wrong column count
        variant(c1=""),  # empty address
        variant(c1="pas-une-adresse"),  # bad address
        variant(c1="cle.fausse@medecin.mssante.test", c0="PER", c2="8", c3="10000000000", c4="810000000000"),
        variant(c1="type.inconnu@medecin.mssante.test", c0="XYZ"),  # unknown mailbox type
    ]
    duplicates = [first, variant(c1=columns[1].upper())]  # the same address, also in capitals
    for line in bad + duplicates:
        out.write(line + "\n")
    return SampleSummary(lines=lines + len(bad) + len(duplicates), valid=lines, rejected=len(bad), duplicates=2)
