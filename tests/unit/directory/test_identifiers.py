"""Identifiers of the trust space: Luhn keys, RPPS, ADELI, FINESS, SIREN, SIRET, national ids and addresses."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mssecure.directory.identifiers import (
    check_address,
    check_adeli,
    check_finess,
    check_person_identifier,
    check_rpps,
    check_siren,
    check_siret,
    check_structure_identifier,
    luhn_check_digit,
    luhn_valid,
    national_id,
)
from mssecure.errors import InvalidEntry

digit_strings = st.text(alphabet="0123456789", max_size=20)


def with_key(body: str) -> str:
    return body + luhn_check_digit(body)


def other_digit(digit: str) -> str:
    """A digit different from ``digit``."""
    return str((int(digit) + 1) % 10)


# --- Luhn --------------------------------------------------------------------------------------------------------


def test_luhn_check_digit_of_the_textbook_example() -> None:
    # ISO/IEC 7812-1 annex B worked example: 7992739871 → key 3.
    assert luhn_check_digit("7992739871") == "3"
    assert luhn_valid("79927398713")


@pytest.mark.parametrize("number", ["79927398713", "732829320", "73282932000074", "750712184", "0", "00"])
def test_luhn_valid_accepts_numbers_with_a_correct_key(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["79927398710", "79927398714", "732829321", "1", "", "7992739871a", "７９"])
def test_luhn_valid_refuses_wrong_keys_and_non_digits(number: str) -> None:
    assert not luhn_valid(number)


@given(digit_strings)
def test_appending_the_luhn_check_digit_gives_a_valid_number(body: str) -> None:
    key = luhn_check_digit(body)
    assert len(key) == 1
    assert key.isdigit()
    assert luhn_valid(body + key)


@given(digit_strings, st.data())
def test_changing_any_single_digit_of_a_valid_number_makes_it_invalid(body: str, data: st.DataObject) -> None:
    number = with_key(body)
    position = data.draw(st.integers(min_value=0, max_value=len(number) - 1), label="position")
    replacement = data.draw(st.sampled_from("0123456789").filter(lambda d: d != number[position]), label="digit")
    changed = number[:position] + replacement + number[position + 1 :]
    assert not luhn_valid(changed)


# --- RPPS and ADELI ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rpps", ["10869073667", "79927398713", " 10869073667\n"])
def test_check_rpps_accepts_eleven_digits_with_a_luhn_key(rpps: str) -> None:
    assert check_rpps(rpps) == rpps.strip()


@given(st.text(alphabet="0123456789", min_size=10, max_size=10))
def test_check_rpps_accepts_every_body_with_its_key(body: str) -> None:
    assert check_rpps(with_key(body)) == with_key(body)


@given(st.text(alphabet="0123456789", min_size=10, max_size=10))
def test_check_rpps_refuses_a_wrong_key(body: str) -> None:
    wrong = body + other_digit(luhn_check_digit(body))
    with pytest.raises(InvalidEntry, match=r"^bad identifier key: RPPS"):
        check_rpps(wrong)


@pytest.mark.parametrize("rpps", ["", "1086907366", "108690736670", "1086907366A", "1O869073667", "１0869073667"])
def test_check_rpps_refuses_wrong_length_or_non_digits(rpps: str) -> None:
    with pytest.raises(InvalidEntry, match=r"^bad identifier: RPPS .* must be 11 digits"):
        check_rpps(rpps)


@pytest.mark.parametrize("adeli", ["751234567", "000000000", " 291012345 "])
def test_check_adeli_accepts_nine_digits(adeli: str) -> None:
    assert check_adeli(adeli) == adeli.strip()


@pytest.mark.parametrize("adeli", ["", "75123456", "7512345678", "75123456X", "２91012345"])
def test_check_adeli_refuses_anything_but_nine_digits(adeli: str) -> None:
    with pytest.raises(InvalidEntry, match=r"^bad identifier: ADELI .* must be 9 digits"):
        check_adeli(adeli)


def test_check_person_identifier_dispatches_on_the_type() -> None:
    assert check_person_identifier("RPPS", "10869073667") == "10869073667"
    assert check_person_identifier("ADELI", "751234567") == "751234567"
    with pytest.raises(InvalidEntry, match=r"^bad identifier key: RPPS"):
        check_person_identifier("RPPS", "10869073668")


@pytest.mark.parametrize("kind", ["NIR", "rpps", "", "FINESS"])
def test_check_person_identifier_refuses_unknown_types(kind: str) -> None:
    with pytest.raises(InvalidEntry, match=r"^unknown identifier type .*expected RPPS or ADELI"):
        check_person_identifier(kind, "10869073667")


@given(digit_strings)
def test_national_id_prefixes_8_to_an_rpps_and_0_to_an_adeli(identifier: str) -> None:
    assert national_id("RPPS", identifier) == "8" + identifier
    assert national_id("ADELI", identifier) == "0" + identifier


# --- FINESS, SIREN, SIRET ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("finess", ["750712184", "203374061", " 750712184 "])
def test_check_finess_accepts_nine_digits_with_a_luhn_key(finess: str) -> None:
    assert check_finess(finess) == finess.strip()


@pytest.mark.parametrize(
    ("finess", "canonical"),
    [
        # The key of a Corsican FINESS is computed with the department written 20: 20000001 → key 6.
        ("2A0000016", "2A0000016"),
        ("2B0000016", "2B0000016"),
        ("2a0000016", "2A0000016"),
        ("2b0000016", "2B0000016"),
    ],
)
def test_check_finess_computes_the_corsican_key_with_20(finess: str, canonical: str) -> None:
    assert luhn_valid("200000016")  # the number the key is computed on
    assert check_finess(finess) == canonical


@given(st.sampled_from(["2A", "2B"]), st.text(alphabet="0123456789", min_size=6, max_size=6))
def test_check_finess_accepts_every_corsican_number_keyed_on_20(department: str, rest: str) -> None:
    key = luhn_check_digit("20" + rest)
    assert check_finess(department + rest + key) == department + rest + key
    with pytest.raises(InvalidEntry, match=r"^bad identifier key: FINESS"):
        check_finess(department + rest + other_digit(key))


@pytest.mark.parametrize("finess", ["750712185", "2A0000017", "2B0000015"])
def test_check_finess_refuses_a_wrong_key(finess: str) -> None:
    with pytest.raises(InvalidEntry, match=r"^bad identifier key: FINESS"):
        check_finess(finess)


@pytest.mark.parametrize("finess", ["", "75071218", "7507121840", "2C0000016", "A20000016", "75071218X", "2A00000１6"])
def test_check_finess_refuses_wrong_length_or_characters(finess: str) -> None:
    with pytest.raises(InvalidEntry, match=r"^bad identifier: FINESS"):
        check_finess(finess)


@pytest.mark.parametrize("siren", ["732829320", "356000000", with_key("12345678")])
def test_check_siren_accepts_nine_digits_with_a_luhn_key(siren: str) -> None:
    assert check_siren(siren) == siren


def test_check_siren_refuses_a_wrong_key() -> None:
    with pytest.raises(InvalidEntry, match=r"^bad identifier key: SIREN"):
        check_siren("732829321")


@pytest.mark.parametrize("siren", ["", "73282932", "7328293200", "73282932O"])
def test_check_siren_refuses_wrong_length_or_non_digits(siren: str) -> None:
    with pytest.raises(InvalidEntry, match=r"^bad identifier: SIREN .* must be 9 digits"):
        check_siren(siren)


@pytest.mark.parametrize("siret", ["73282932000074", with_key("1234567890123")])
def test_check_siret_accepts_fourteen_digits_with_a_luhn_key(siret: str) -> None:
    assert check_siret(siret) == siret


@pytest.mark.parametrize("siret", ["73282932000075", "73282932000073"])
def test_check_siret_refuses_a_wrong_key(siret: str) -> None:
    with pytest.raises(InvalidEntry, match=r"^bad identifier key: SIRET"):
        check_siret(siret)


@pytest.mark.parametrize("siret", ["", "7328293200007", "732829320000740", "7328293200007A"])
def test_check_siret_refuses_wrong_length_or_non_digits(siret: str) -> None:
    with pytest.raises(InvalidEntry, match=r"^bad identifier: SIRET .* must be 14 digits"):
        check_siret(siret)


@pytest.mark.parametrize(
    "siret",
    [
        "35600000000001",  # digit sum 15, fails Luhn
        "35600000000047",  # digit sum 25
        "35600000049837",  # digit sum 45
        "35600000000006",  # digit sum 20 (and Luhn-valid too)
    ],
)
def test_check_siret_accepts_la_poste_establishments_whose_digit_sum_is_a_multiple_of_5(siret: str) -> None:
    assert sum(int(c) for c in siret) % 5 == 0
    assert check_siret(siret) == siret


@pytest.mark.parametrize("siret", ["35600000000014", "35600000000022", "35600000000002"])
def test_check_siret_refuses_la_poste_establishments_whose_digit_sum_is_not_a_multiple_of_5(siret: str) -> None:
    assert sum(int(c) for c in siret) % 5 != 0
    with pytest.raises(InvalidEntry, match=r"^bad identifier key: SIRET"):
        check_siret(siret)


def test_check_siret_checks_la_poste_head_office_with_luhn() -> None:
    head_office = "35600000000048"
    assert luhn_valid(head_office)
    assert sum(int(c) for c in head_office) % 5 != 0  # so only the Luhn rule can accept it
    assert check_siret(head_office) == head_office


@pytest.mark.parametrize(
    ("kind", "value"),
    [("FINESS", "750712184"), ("SIREN", "732829320"), ("SIRET", "73282932000074"), ("RPPS", "10869073667")],
)
def test_check_structure_identifier_dispatches_on_the_type(kind: str, value: str) -> None:
    assert check_structure_identifier(kind, value) == value


@pytest.mark.parametrize(
    ("kind", "value"),
    [("FINESS", "750712185"), ("SIREN", "732829321"), ("SIRET", "73282932000075"), ("RPPS", "10869073668")],
)
def test_check_structure_identifier_applies_the_check_of_the_type(kind: str, value: str) -> None:
    with pytest.raises(InvalidEntry, match=rf"^bad identifier key: {kind}"):
        check_structure_identifier(kind, value)


@pytest.mark.parametrize("kind", ["ADELI", "finess", "", "XYZ"])
def test_check_structure_identifier_refuses_unknown_types(kind: str) -> None:
    with pytest.raises(InvalidEntry, match=r"^unknown structure identifier type .*FINESS, SIREN, SIRET, RPPS"):
        check_structure_identifier(kind, "750712184")


# --- Addresses ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "canonical"),
    [
        ("camille.lefevre@chu-nord.mssante.test", "camille.lefevre@chu-nord.mssante.test"),
        ("  Camille.Lefevre@CHU-Nord.MSSante.test\n", "camille.lefevre@chu-nord.mssante.test"),
        ("a+b_c-d.e@x.fr", "a+b_c-d.e@x.fr"),
        ("secretariat@a-b.c2.example.fr", "secretariat@a-b.c2.example.fr"),
        ("0@9.fr", "0@9.fr"),
    ],
)
def test_check_address_lowercases_and_strips_valid_addresses(address: str, canonical: str) -> None:
    assert check_address(address) == canonical


def test_check_address_accepts_the_longest_local_part_and_address() -> None:
    local = "a" * 64
    domain = ".".join(["b" * 63, "b" * 63, "b" * 58, "fr"])
    assert len(f"{local}@{domain}") == 254
    assert check_address(f"{local}@{domain}") == f"{local}@{domain}"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("", r"^empty address$"),
        ("   \t\n", r"^empty address$"),
        ("camille.lefevre.chu-nord.mssante.test", r"expected local-part@domain"),
        ("camille@lefevre@chu-nord.mssante.test", r"expected local-part@domain"),
        ("@chu-nord.mssante.test", r"invalid local part"),
        (".camille@chu-nord.mssante.test", r"invalid local part"),
        ("camille.@chu-nord.mssante.test", r"invalid local part"),
        ("camille..lefevre@chu-nord.mssante.test", r"invalid local part"),
        ("camille lefevre@chu-nord.mssante.test", r"invalid local part"),
        ('"camille"@chu-nord.mssante.test', r"invalid local part"),
        ("a" * 65 + "@chu-nord.mssante.test", r"invalid local part"),
        ("camille@", r"invalid domain"),
        ("camille@localhost", r"invalid domain"),
        ("camille@-chu.mssante.test", r"invalid domain"),
        ("camille@chu-.mssante.test", r"invalid domain"),
        ("camille@chu..mssante.test", r"invalid domain"),
        ("camille@chu.mssante.test.", r"invalid domain"),
        ("camille@chu_nord.mssante.test", r"invalid domain"),
        ("camille@" + "c" * 64 + ".test", r"invalid domain"),
        ("camille@[192.0.2.1]", r"invalid domain"),
        ("camille@192.0.2.1", r"invalid domain"),
        ("camille@chu-nord.123", r"invalid domain"),
        ("camille.lefèvre@chu-nord.mssante.test", r"only ASCII"),
        ("camille@chu-nörd.mssante.test", r"only ASCII"),
        ("a" * 64 + "@" + ".".join(["b" * 63, "b" * 63, "b" * 59, "fr"]), r"longer than 254 characters"),
    ],
)
def test_check_address_says_what_is_wrong(address: str, reason: str) -> None:
    with pytest.raises(InvalidEntry, match=reason):
        check_address(address)


def test_check_address_rejections_start_with_bad_address_and_quote_the_value() -> None:
    with pytest.raises(InvalidEntry, match=r"^bad address 'pas-une-adresse': "):
        check_address("pas-une-adresse")


def test_check_address_refuses_non_ascii_input_that_lowercases_to_ascii() -> None:
    with pytest.raises(InvalidEntry, match=r"only ASCII"):
        check_address("\u212aamille@chu-nord.mssante.test")  # KELVIN SIGN, not the letter K


@given(st.text())
@example("")
@example("a@b.fr")
@example("A@B.FR")
@example("a@@b.fr")
@example("\u0130@b.fr")  # İ lowercases to two code points
def test_check_address_returns_a_lowercase_ascii_address_or_raises_invalid_entry(text: str) -> None:
    try:
        address = check_address(text)
    except InvalidEntry:
        return
    assert address.isascii()
    assert address == address.lower()
    assert address.count("@") == 1
    assert check_address(address) == address


_local_parts = st.from_regex(r"[a-zA-Z0-9_+-]{1,20}(\.[a-zA-Z0-9_+-]{1,20}){0,3}", fullmatch=True)
_labels = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", fullmatch=True)
_top_labels = st.from_regex(r"[a-zA-Z][a-zA-Z0-9]{1,10}", fullmatch=True)


@given(_local_parts, st.lists(_labels, min_size=1, max_size=4), _top_labels)
def test_check_address_accepts_every_address_of_the_certified_alphabet(local: str, labels: list[str], top: str) -> None:
    address = f"{local}@{'.'.join([*labels, top])}"
    assert check_address(address) == address.lower()
