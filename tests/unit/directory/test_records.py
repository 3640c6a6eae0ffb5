"""The directory entry as a value: canonical form, refusals, folding and the text it is searched by."""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mssecure.directory.records import (
    DATA_FIELDS,
    ROW_FIELDS,
    EntryData,
    Kind,
    Status,
    entry_row,
    fold,
    validated_values,
)
from mssecure.errors import InvalidEntry

RPPS = "10869073667"
ADELI = "751234567"
FINESS = "750712184"


def doctor(**changes: Any) -> EntryData:
    """A valid personal entry, with ``changes`` applied."""
    values: dict[str, Any] = {
        "address": "camille.lefevre@chu-nord.mssante.test",
        "kind": Kind.PERSONAL,
        "identifier_type": "RPPS",
        "identifier": RPPS,
        "last_name": "LEFÈVRE",
        "first_name": "Camille",
        "profession_label": "Médecin",
        "structure_id_type": "FINESS",
        "structure_id": FINESS,
        "organization": "Centre Hospitalier Universitaire",
    }
    values.update(changes)
    return EntryData(**values)


def service(**changes: Any) -> EntryData:
    """A valid organizational entry (no professional identifier), with ``changes`` applied."""
    values: dict[str, Any] = {
        "address": "secretariat.cardiologie@chu-nord.mssante.test",
        "kind": Kind.ORGANIZATIONAL,
        "organization": "Centre Hospitalier Universitaire",
        "service": "Cardiologie",
    }
    values.update(changes)
    return EntryData(**values)


# --- validated: canonical form -----------------------------------------------------------------------------------


def test_validated_canonicalises_every_field() -> None:
    entry = doctor(
        address="  Camille.Lefevre@CHU-Nord.MSSante.test ",
        kind="personal",
        status="suspended",
        identifier_type="rpps",
        identifier=f" {RPPS} ",
        last_name="  LEFÈVRE \n",
        first_name="Jean \t\n Camille",
        service="",
        civility="   ",
        structure_id_type="finess",
        structure_id="2a0000016",
    ).validated()
    assert entry.address == "camille.lefevre@chu-nord.mssante.test"
    assert entry.kind is Kind.PERSONAL
    assert entry.status is Status.SUSPENDED
    assert entry.identifier_type == "RPPS"
    assert entry.identifier == RPPS
    assert entry.national_id == "8" + RPPS
    assert entry.last_name == "LEFÈVRE"
    assert entry.first_name == "Jean Camille"
    assert entry.service is None
    assert entry.civility is None
    assert entry.structure_id_type == "FINESS"
    assert entry.structure_id == "2A0000016"


def test_validated_computes_the_national_id_of_an_adeli() -> None:
    entry = doctor(identifier_type="ADELI", identifier=ADELI).validated()
    assert entry.identifier_type == "ADELI"
    assert entry.national_id == "0" + ADELI


def test_validated_accepts_a_national_id_that_matches() -> None:
    assert doctor(national_id="8" + RPPS).validated().national_id == "8" + RPPS


def test_validated_keeps_the_default_status_and_the_flags() -> None:
    entry = service(dematerialisation=True, unlisted=True).validated()
    assert entry.status is Status.ACTIVE
    assert entry.dematerialisation is True
    assert entry.unlisted is True


@pytest.mark.parametrize("kind", [Kind.ORGANIZATIONAL, Kind.APPLICATIVE])
def test_validated_lets_non_personal_mailboxes_have_no_professional_identifier(kind: Kind) -> None:
    entry = service(kind=kind).validated()
    assert entry.kind is kind
    assert entry.identifier is None
    assert entry.national_id is None


def test_validated_accepts_text_of_exactly_200_characters_after_collapsing_spaces() -> None:
    assert doctor(organization="x" * 200).validated().organization == "x" * 200
    assert doctor(organization="a" + " " * 300 + "b").validated().organization == "a b"


def test_validated_is_idempotent() -> None:
    once = doctor(address="Camille.Lefevre@CHU-Nord.mssante.test", first_name=" Camille ").validated()
    assert once.validated() == once


@given(st.text(max_size=250))
def test_validated_text_has_no_line_breaks_nor_surrounding_spaces(text: str) -> None:
    if len(" ".join(text.split())) > 200:
        with pytest.raises(InvalidEntry, match=r"^service is longer than 200 characters$"):
            service(service=text).validated()
        return
    entry = service(service=text).validated()
    if entry.service is None:
        assert not text.strip()
    else:
        assert entry.service == " ".join(text.split())
        assert not any(c in entry.service for c in "\n\r\t\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
        assert entry.service == entry.service.strip()


# --- validated: refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"identifier_type": None, "identifier": None}, r"^a personal mailbox needs its owner's RPPS or ADELI"),
        ({"identifier_type": "", "identifier": "  "}, r"^a personal mailbox needs its owner's RPPS or ADELI"),
        ({"national_id": "8" + ADELI}, r"^national id 8751234567 does not match RPPS 10869073667$"),
        ({"national_id": "0" + RPPS}, r"^national id 010869073667 does not match RPPS"),
        ({"kind": "bogus"}, r"^unknown mailbox kind 'bogus' \(expected personal, organizational, applicative\)"),
        ({"kind": "PERSONAL"}, r"^unknown mailbox kind 'PERSONAL'"),
        ({"status": "deleted"}, r"^unknown status 'deleted' \(expected active, suspended, revoked\)"),
        ({"structure_id_type": "XYZ"}, r"^unknown structure identifier type 'XYZ'"),
        ({"structure_id_type": None}, r"^a structure identifier needs both its type and its value"),
        ({"structure_id": None}, r"^a structure identifier needs both its type and its value"),
        ({"structure_id": "750712185"}, r"^bad identifier key: FINESS"),
        ({"identifier": None}, r"^a professional identifier needs both its type and its value"),
        ({"identifier_type": None}, r"^a professional identifier needs both its type and its value"),
        ({"identifier_type": "NIR"}, r"^unknown identifier type 'NIR'"),
        ({"identifier": "10869073668"}, r"^bad identifier key: RPPS"),
        ({"identifier_type": "ADELI"}, r"^bad identifier: ADELI"),
        ({"address": "pas-une-adresse"}, r"^bad address"),
        ({"address": "  "}, r"^empty address$"),
        ({"organization": "x" * 201}, r"^organization is longer than 200 characters$"),
        ({"last_name": "é" * 201}, r"^last_name is longer than 200 characters$"),
        ({"last_name": 42}, r"^last_name must be text$"),
    ],
)
def test_validated_refuses_invalid_entries(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEntry, match=reason):
        doctor(**changes).validated()


def test_validated_refuses_a_national_id_without_its_identifier() -> None:
    with pytest.raises(InvalidEntry, match=r"^a national id needs the identifier it is made of"):
        service(national_id="8" + RPPS).validated()


def test_validated_does_not_change_the_original() -> None:
    entry = doctor(address="Camille.Lefevre@chu-nord.mssante.test")
    entry.validated()
    assert entry.address == "Camille.Lefevre@chu-nord.mssante.test"
    assert entry.national_id is None


# --- display_name, domain, search_text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({}, "Camille LEFÈVRE"),
        ({"first_name": None}, "LEFÈVRE"),
        ({"last_name": None}, "Camille"),
        ({"first_name": None, "last_name": None}, "Centre Hospitalier Universitaire"),
        ({"first_name": None, "last_name": None, "organization": None}, ""),
    ],
)
def test_display_name_is_the_person_else_the_organization(changes: dict[str, Any], name: str) -> None:
    assert doctor(**changes).display_name == name


def test_domain_is_the_part_after_the_at_sign() -> None:
    assert doctor().domain == "chu-nord.mssante.test"


def test_search_text_holds_the_folded_names_organization_and_identifiers() -> None:
    entry = doctor(
        service="Pharmacie à usage intérieur",
        trade_name="CHU NORD",
        specialty_label="Spécialiste en Médecine Générale",
    ).validated()
    text = entry.search_text()
    for part in (
        "camille.lefevre@chu-nord.mssante.test",
        "lefevre",
        "camille",
        RPPS,
        "8" + RPPS,
        FINESS,
        "centre hospitalier universitaire",
        "chu nord",
        "pharmacie a usage interieur",
        "medecin",
        "specialiste en medecine generale",
    ):
        assert part in text
    assert text == fold(text)


def test_search_text_leaves_out_missing_fields() -> None:
    text = EntryData(address="lgc@chu-nord.mssante.test", kind=Kind.APPLICATIVE).search_text()
    assert text == "lgc@chu-nord.mssante.test"


def test_search_text_leaves_out_fields_that_are_not_searched() -> None:
    text = service(street_name="Rue des Écoles", postal_code="29200", civility="DR").search_text()
    assert "ecoles" not in text
    assert "29200" not in text


# --- fold --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Lefèvre", "lefevre"),
        ("LEFÈVRE", "lefevre"),
        ("Élodie Brûlé", "elodie brule"),
        ("Maëlle Noël", "maelle noel"),
        ("Œuvray", "oeuvray"),
        ("ŒUVRAY", "oeuvray"),
        ("cœur", "coeur"),
        ("Lætitia", "laetitia"),
        ("ÆSCHYLE", "aeschyle"),
        ("Straße", "strasse"),
        ("ﬁchier", "fichier"),  # NFKD decomposes the fi ligature
        ("Ｍｅｄｅｃｉｎ", "medecin"),  # fullwidth letters
        ("", ""),
    ],
)
def test_fold_strips_accents_ligatures_and_case(text: str, folded: str) -> None:
    assert fold(text) == folded


@given(st.text())
@example("Ǽ")  # LATIN CAPITAL LETTER AE WITH ACUTE: NFKD gives Æ + combining acute
@example("ꟹ")  # MODIFIER LETTER SMALL LIGATURE OE: NFKD gives œ
def test_fold_is_idempotent(text: str) -> None:
    assert fold(fold(text)) == fold(text)


@given(st.text())
@example("Lefèvre")
@example("Ǽ")
@example("\u0130")  # İ: NFKD gives I + combining dot above
def test_fold_output_has_no_combining_characters(text: str) -> None:
    assert not any(unicodedata.combining(c) for c in fold(text))


@given(st.text())
def test_fold_output_is_casefolded(text: str) -> None:
    folded = fold(text)
    assert folded.casefold() == folded


def _fold_as_first_written(text: str) -> str:
    """``fold`` before it skipped the ligature table for text already ASCII: the reference it must still match."""

    def once(text: str) -> str:
        if text.isascii():
            return text.lower()
        stripped = re.sub("[\u0300-\u036f]+", "", unicodedata.normalize("NFKD", text.casefold()))
        if not stripped.isascii():
            stripped = "".join(c for c in stripped if not unicodedata.combining(c))
        return stripped.translate(str.maketrans({"œ": "oe", "Œ": "oe", "æ": "ae", "Æ": "ae", "ß": "ss"}))

    folded = once(text)
    for _ in range(4):
        again = once(folded)
        if again == folded:
            break
        folded = again
    return folded


@given(st.text())
@example("Lætitia Œuvray")
@example("Ǽ")
def test_fold_folds_as_it_was_first_written(text: str) -> None:
    assert fold(text) == _fold_as_first_written(text)


# Fields of an organizational entry that search_text holds, in the order it holds them (after the address).
_SEARCHED = ("last_name", "first_name", "organization", "trade_name", "service", "profession_label")
_parts = st.text(max_size=12) | st.sampled_from(["Lætitia", "Ǽ", "\u0301", "İ", "ﬁ", " ", "ΣΑΣ"])


@given(st.lists(_parts, min_size=len(_SEARCHED), max_size=len(_SEARCHED)))
def test_search_text_is_the_folded_text_of_the_searched_fields(texts: list[str]) -> None:
    # search_text folds field by field, which must give what folding the joined text gives.
    entry = service(**dict(zip(_SEARCHED, texts, strict=True)))
    assert entry.search_text() == fold(" ".join(p for p in (entry.address, *texts) if p))


# --- the importer's rows -----------------------------------------------------------------------------------------


def test_row_fields_are_the_fields_then_the_domain_and_the_search_text() -> None:
    assert (*DATA_FIELDS, "domain", "search_text") == ROW_FIELDS
    assert DATA_FIELDS[:3] == ("address", "kind", "status")  # entry_row writes these three itself


def test_row_holds_every_value_in_row_fields_order_with_plain_text_for_enums() -> None:
    entry = doctor(status=Status.SUSPENDED, dematerialisation=False).validated()
    row = entry.row()
    assert dict(zip(ROW_FIELDS, row, strict=True)) == {
        **entry.to_dict(),
        "kind": "personal",
        "status": "suspended",
        "domain": "chu-nord.mssante.test",
        "search_text": entry.search_text(),
    }
    assert [type(v) for v in row[1:3]] == [str, str]
    assert row == entry_row(validated_values(entry.to_dict()))


def test_validated_values_are_those_of_the_validated_entry() -> None:
    given = doctor(address=" Camille.Lefevre@CHU-Nord.mssante.test", first_name=" Camille ").to_dict()
    assert validated_values(given) == EntryData.from_values(given).to_dict()


def test_entry_data_is_frozen() -> None:
    entry = doctor()
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.address = "other@chu-nord.mssante.test"  # type: ignore[misc]
