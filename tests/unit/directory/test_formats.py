"""Directory files: the national extraction, mssecure's CSV and JSON, and the synthetic extraction generator."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssecure.directory.formats import (
    _EXTRACTION_FIELDS,
    EXTRACTION_HEADER,
    Accepted,
    Chunk,
    Format,
    Record,
    _extraction_values,
    address_digest,
    chunked,
    read_chunks,
    read_csv,
    read_extraction,
    read_json,
    read_records,
    write_entries,
)
from mssecure.directory.identifiers import check_finess, check_rpps
from mssecure.directory.records import DATA_FIELDS, ROW_FIELDS, EntryData, Kind, Status, validated_values
from mssecure.directory.synthetic import SampleSummary, write_sample_extraction
from mssecure.errors import ImportFormatError, InvalidEntry

Reader = Callable[[Iterable[bytes]], Iterator[Record]]

HEADER = "|".join(EXTRACTION_HEADER)
SAMPLE = (
    "PER|camille.lefevre1@infirmier.mssante.test|8|10869073667|810869073667|1|203374061|||LEFÈVRE|Camille|C|Civil|"
    "60|Infirmier|||1|Maison de santé pluriprofessionnelle||Bâtiment B||31|BIS|PL|des Écoles||29200 BREST|29200|29|"
    "FRANCE"
)
# Columns of the extraction the tests change (see _EXTRACTION_FIELDS in formats.py).
KIND, ADDRESS, ID_TYPE, IDENTIFIER, NATIONAL_ID, STRUCTURE_TYPE, STRUCTURE_ID = range(7)
LAST_NAME, FIRST_NAME, DEMATERIALISATION = 9, 10, 17

SAMPLE_DATA = EntryData(
    address="camille.lefevre1@infirmier.mssante.test",
    kind=Kind.PERSONAL,
    identifier_type="RPPS",
    identifier="10869073667",
    national_id="810869073667",
    last_name="LEFÈVRE",
    first_name="Camille",
    category_code="C",
    category_label="Civil",
    profession_code="60",
    profession_label="Infirmier",
    structure_id_type="FINESS",
    structure_id="203374061",
    organization="Maison de santé pluriprofessionnelle",
    address_complement="Bâtiment B",
    street_number="31",
    street_number_suffix="BIS",
    street_type="PL",
    street_name="des Écoles",
    routing_line="29200 BREST",
    postal_code="29200",
    department="29",
    country="FRANCE",
    dematerialisation=True,
)


def row(changes: dict[int, str] | None = None) -> str:
    """The sample extraction line with the columns in ``changes`` replaced."""
    columns = SAMPLE.split("|")
    for position, value in (changes or {}).items():
        columns[position] = value
    return "|".join(columns)


def extraction(*lines: str) -> list[bytes]:
    """An extraction file as the raw lines the reader gets: the header, then ``lines``."""
    return [f"{line}\n".encode() for line in (HEADER, *lines)]


def lines_of(text: str) -> list[bytes]:
    return [line.encode() for line in text.splitlines(keepends=True)]


def test_the_header_has_31_columns() -> None:
    assert len(EXTRACTION_HEADER) == 31
    assert len(SAMPLE.split("|")) == 31


# --- read_extraction: valid lines --------------------------------------------------------------------------------


def test_read_extraction_reads_the_sample_line() -> None:
    assert list(read_extraction(extraction(SAMPLE))) == [Record(2, SAMPLE_DATA)]


def test_read_extraction_reads_an_adeli_professional() -> None:
    [record] = read_extraction(extraction(row({ID_TYPE: "0", IDENTIFIER: "291012345", NATIONAL_ID: "0291012345"})))
    assert record.data is not None
    assert (record.data.identifier_type, record.data.national_id) == ("ADELI", "0291012345")


@pytest.mark.parametrize(
    ("code", "kind"), [("ORG", Kind.ORGANIZATIONAL), ("APP", Kind.APPLICATIVE), ("org", Kind.ORGANIZATIONAL)]
)
def test_read_extraction_reads_mailboxes_without_a_professional(code: str, kind: Kind) -> None:
    line = row({KIND: code, ID_TYPE: "", IDENTIFIER: "", NATIONAL_ID: "", LAST_NAME: "", FIRST_NAME: ""})
    [record] = read_extraction(extraction(line))
    assert record.reason is None
    assert record.data is not None
    assert record.data.kind is kind
    assert record.data.identifier is None
    assert record.data.display_name == "Maison de santé pluriprofessionnelle"


@pytest.mark.parametrize(
    ("code", "id_type", "value"),
    [("1", "FINESS", "203374061"), ("2", "SIREN", "732829320"), ("3", "SIRET", "73282932000074"),
     ("4", "RPPS", "10869073667")],
)  # fmt: skip
def test_read_extraction_maps_structure_identifier_types(code: str, id_type: str, value: str) -> None:
    [record] = read_extraction(extraction(row({STRUCTURE_TYPE: code, STRUCTURE_ID: value})))
    assert record.data is not None
    assert (record.data.structure_id_type, record.data.structure_id) == (id_type, value)


def test_read_extraction_strips_spaces_around_fields() -> None:
    spaced = "|".join(f"  {column} " for column in SAMPLE.split("|"))
    assert list(read_extraction(extraction(spaced))) == [Record(2, SAMPLE_DATA)]


def test_read_extraction_ignores_blank_lines_but_counts_them() -> None:
    raw = extraction("", SAMPLE, "   ", "\t", row({ADDRESS: "autre@infirmier.mssante.test"}))
    records = list(read_extraction(raw))
    assert [r.line for r in records] == [3, 6]
    assert all(r.data is not None for r in records)


def test_read_extraction_accepts_a_byte_order_mark_on_the_header() -> None:
    raw = extraction(SAMPLE)
    raw[0] = b"\xef\xbb\xbf" + raw[0]
    assert list(read_extraction(raw)) == [Record(2, SAMPLE_DATA)]


def test_read_extraction_accepts_crlf_line_ends_and_a_last_line_without_one() -> None:
    raw = [f"{HEADER}\r\n".encode(), f"{SAMPLE}\r\n".encode(), row({ADDRESS: "b@infirmier.mssante.test"}).encode()]
    records = list(read_extraction(raw))
    assert [r.reason for r in records] == [None, None]
    assert records[0].data == SAMPLE_DATA


@pytest.mark.parametrize(
    ("value", "flag"),
    [("true", True), ("True", True), ("1", True), ("false", False), ("False", False), ("0", False), ("", None)],
)
def test_read_extraction_parses_dematerialisation(value: str, flag: bool | None) -> None:
    [record] = read_extraction(extraction(row({DEMATERIALISATION: value})))
    assert record.data is not None
    assert record.data.dematerialisation is flag


# --- read_extraction: rejected lines -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("|".join(SAMPLE.split("|")[:20]), "wrong column count: 20 columns, expected 31"),
        (SAMPLE + "|", "wrong column count: 32 columns, expected 31"),
        (row({ADDRESS: ""}), "empty address"),
        (row({ADDRESS: "  "}), "empty address"),
        (row({ADDRESS: "pas-une-adresse"}), "bad address 'pas-une-adresse': expected local-part@domain"),
        (row({IDENTIFIER: "10000000000", NATIONAL_ID: "810000000000"}), "bad identifier key: RPPS 10000000000"),
        (row({IDENTIFIER: "1086907366"}), "bad identifier: RPPS '1086907366' must be 11 digits"),
        (row({NATIONAL_ID: "899999999999"}), "national id 899999999999 does not match RPPS 10869073667"),
        (row({KIND: "XYZ"}), "unknown mailbox type 'XYZ' (expected PER, ORG or APP)"),
        (row({KIND: ""}), "unknown mailbox type '' (expected PER, ORG or APP)"),
        (row({ID_TYPE: "5"}), "unknown professional identifier type '5' (expected 8, 0)"),
        (row({ID_TYPE: ""}), "unknown professional identifier type '' (expected 8, 0)"),
        (row({STRUCTURE_TYPE: "9"}), "unknown structure identifier type '9' (expected 1, 2, 3, 4)"),
        (row({STRUCTURE_ID: "203374062"}), "bad identifier key: FINESS 203374062 fails the Luhn check"),
        (row({ID_TYPE: "", IDENTIFIER: "", NATIONAL_ID: ""}), "a personal mailbox needs its owner's RPPS or ADELI"),
    ],
)
def test_read_extraction_rejects_a_bad_line_with_its_line_number(line: str, reason: str) -> None:
    other = row({ADDRESS: "autre@infirmier.mssante.test"})
    records = list(read_extraction(extraction(SAMPLE, line, other)))
    assert [r.line for r in records] == [2, 3, 4]
    assert records[1].data is None
    assert records[1].reason is not None
    assert records[1].reason.startswith(reason)
    assert records[0].data == SAMPLE_DATA
    assert records[2].data is not None


def test_read_extraction_rejects_a_line_that_is_not_utf8() -> None:
    raw = extraction(SAMPLE, "replaced below", "", SAMPLE)
    raw[2] = row({LAST_NAME: "LEF\xc8VRE"}).encode("latin-1") + b"\n"
    records = list(read_extraction(raw))
    assert records[1] == Record(3, reason="line is not valid UTF-8")
    assert records[2].line == 5
    assert records[2].data == SAMPLE_DATA


@pytest.mark.parametrize(
    "raw",
    [
        [],
        [b""],
        [b"\n", f"{HEADER}\n".encode()],
        [f"{SAMPLE}\n".encode()],
        [HEADER.replace("Adresse BAL", "Adresse").encode()],
        [HEADER.rsplit("|", 1)[0].encode()],
        [(HEADER + "|Extra").encode()],
        [HEADER.replace("|", ";").encode()],
        [HEADER.encode("utf-16")],
        [HEADER.encode("latin-1")],
    ],
    ids=["empty", "empty-line", "blank-first", "no-header", "renamed", "30-columns", "32-columns", "semicolons",
         "utf16", "latin1"],
)  # fmt: skip
def test_read_extraction_refuses_a_file_without_the_header(raw: list[bytes]) -> None:
    with pytest.raises(ImportFormatError, match=r"^not a national directory extraction"):
        list(read_extraction(raw))


def test_read_extraction_says_when_the_header_is_not_utf8() -> None:
    with pytest.raises(ImportFormatError, match=r"the first line is not valid UTF-8"):
        list(read_extraction([HEADER.encode("latin-1"), SAMPLE.encode()]))


def test_read_extraction_accepts_spaces_around_header_cells() -> None:
    header = " | ".join(EXTRACTION_HEADER)
    assert list(read_extraction([header.encode(), SAMPLE.encode()])) == [Record(2, SAMPLE_DATA)]


def test_read_records_dispatches_on_the_format() -> None:
    assert list(read_records(Format.EXTRACTION, extraction(SAMPLE))) == [Record(2, SAMPLE_DATA)]
    with pytest.raises(ImportFormatError):
        list(read_records(Format.JSON, extraction(SAMPLE)))


_extraction_cells = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["PER", "ORG", "APP", "8", "0", "1", "2", "3", "4", "10869073667", "810869073667", "203374061",
                     "a@b.fr", "true", "", " "]),
)  # fmt: skip
_extraction_lines = st.one_of(
    st.binary(max_size=80),
    st.lists(_extraction_cells, min_size=29, max_size=33).map(lambda cells: "|".join(cells).encode()),
    st.lists(_extraction_cells, min_size=31, max_size=31).map(lambda cells: "|".join(cells).encode()),
)


@settings(max_examples=60)
@given(st.lists(_extraction_lines, max_size=6))
def test_read_extraction_only_yields_records_after_a_valid_header(lines: list[bytes]) -> None:
    records = list(read_extraction([HEADER.encode(), *lines]))
    assert len(records) <= len(lines)
    assert [r.line for r in records] == sorted({r.line for r in records})
    for record in records:
        assert 2 <= record.line <= len(lines) + 1
        assert (record.data is None) != (record.reason is None)


# --- read_chunks: what the importer takes ------------------------------------------------------------------------


def flattened(chunks: Iterable[Chunk]) -> tuple[list[tuple[int, str]], list[Accepted]]:
    chunks = list(chunks)
    return [r for c in chunks for r in c.rejected], [a for c in chunks for a in c.accepted]


def as_chunks(records: Iterable[Record]) -> tuple[list[tuple[int, str]], list[Accepted]]:
    """What the chunks of a file should hold, made from its records."""
    records = list(records)
    rejected = [(r.line, r.reason or "") for r in records if r.data is None]
    accepted = [(r.line, address_digest(r.data.address), r.data.row(), False) for r in records if r.data is not None]
    return rejected, accepted


def test_read_chunks_of_an_extraction_hold_what_its_records_hold() -> None:
    out = io.StringIO()
    write_sample_extraction(out, 4500, seed=3, with_errors=True)
    raw = lines_of(out.getvalue())
    chunks = list(read_chunks(Format.EXTRACTION, raw))
    assert [len(c.rejected) + len(c.accepted) for c in chunks] == [2000, 2000, 507]
    assert flattened(chunks) == as_chunks(read_extraction(raw))


def test_read_chunks_of_the_sample_line() -> None:
    [chunk] = read_chunks(Format.EXTRACTION, extraction("", SAMPLE))  # a blank line is skipped, but counted
    assert chunk.rejected == []
    [(line, digest, row, sets_status)] = chunk.accepted
    assert (line, digest, sets_status) == (3, address_digest(SAMPLE_DATA.address), False)
    assert dict(zip(ROW_FIELDS, row, strict=True)) == {
        **SAMPLE_DATA.to_dict(),
        "kind": "personal",
        "status": "active",
        "domain": "infirmier.mssante.test",
        "search_text": SAMPLE_DATA.search_text(),
    }
    assert [type(v) for v in row[1:3]] == [str, str]  # plain text, not enums: cheap to pickle


def test_read_chunks_rejects_a_line_that_is_not_utf8() -> None:
    raw = extraction(SAMPLE)
    raw.append(row({LAST_NAME: "LEF\xc8VRE"}).encode("latin-1") + b"\n")
    [chunk] = read_chunks(Format.EXTRACTION, raw)
    assert chunk.rejected == [(3, "line is not valid UTF-8")]
    assert [a[0] for a in chunk.accepted] == [2]


def test_read_chunks_refuses_a_file_without_the_header() -> None:
    with pytest.raises(ImportFormatError, match=r"^not a national directory extraction"):
        list(read_chunks(Format.EXTRACTION, [SAMPLE.encode()]))


@pytest.mark.parametrize(("fmt", "reader"), [(Format.CSV, read_csv), (Format.JSON, read_json)])
def test_read_chunks_of_csv_and_json_are_their_records(fmt: Format, reader: Reader) -> None:
    raw = lines_of(write(fmt, ENTRIES))
    [chunk] = read_chunks(fmt, raw)
    assert chunk.rejected == []
    assert chunk.accepted == [
        (r.line, address_digest(r.data.address), r.data.row(), True) for r in reader(raw) if r.data is not None
    ]


def test_chunked_cuts_records_into_chunks_of_a_size() -> None:
    records = [Record(2, SAMPLE_DATA), Record(3, reason="no"), Record(4, SAMPLE_DATA, sets_status=True)]
    assert list(chunked(records, 2)) == [
        Chunk([(3, "no")], [(2, address_digest(SAMPLE_DATA.address), SAMPLE_DATA.row(), False)]),
        Chunk([], [(4, address_digest(SAMPLE_DATA.address), SAMPLE_DATA.row(), True)]),
    ]


@settings(max_examples=60)
@given(st.lists(_extraction_lines, max_size=6))
def test_read_chunks_and_read_extraction_agree_on_any_lines(lines: list[bytes]) -> None:
    raw = [HEADER.encode(), *lines]
    assert flattened(read_chunks(Format.EXTRACTION, raw)) == as_chunks(read_extraction(raw))


_TEXT_COLUMNS = [7, 8, 9, 10, *range(11, 17), *range(18, 31)]  # the text fields of an extraction line
_text_cells = st.one_of(
    st.text(st.characters(exclude_characters="|"), max_size=12),
    st.text(alphabet=" \t\xa0\u3000\x85abcÉé", max_size=8),
    st.sampled_from(["", " ", "x" * 200, "x" * 201, " " + "x" * 200, "Dupré  Martin", " Dupré ", "a\tb", "Œ"]),
)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(_TEXT_COLUMNS), _text_cells, max_size=4), st.sampled_from(["", " "]))
def test_a_line_said_plain_validates_as_with_the_full_text_pass(changes: dict[int, str], pad: str) -> None:
    # The extraction reader skips stripping, and validation's text pass, when the line shows they would change
    # nothing: what it reads must be what they give.
    values, plain = _extraction_values(pad + row(changes))
    for position, value in changes.items():
        assert values[_EXTRACTION_FIELDS[position]] == (value.strip() or None)
    try:
        full = validated_values(values)
    except InvalidEntry as exc:
        if plain:
            with pytest.raises(InvalidEntry, match=re.escape(str(exc))):
                validated_values(values, plain_text=True)
        return
    if plain:
        assert validated_values(values, plain_text=True) == full


# --- mssecure CSV and JSON: round trip ---------------------------------------------------------------------------


ENTRIES = [
    (SAMPLE_DATA, True),
    (
        EntryData(
            address="jerome.benard@medecin.mssante.test",
            kind=Kind.PERSONAL,
            status=Status.SUSPENDED,
            identifier_type="ADELI",
            identifier="291012345",
            national_id="0291012345",
            civility="DR",
            last_name="BÉNARD",
            first_name="Jérôme",
            specialty_code="SM53",
            specialty_label='Spécialiste en Médecine Générale, "MG"',
            dematerialisation=False,
            unlisted=True,
        ),
        False,
    ),
    (
        EntryData(
            address="pharmacie.du.marche@pharmacien.mssante.test",
            kind=Kind.ORGANIZATIONAL,
            status=Status.REVOKED,
            structure_id_type="SIRET",
            structure_id="73282932000074",
            organization="Pharmacie du Marché; Œuvray & fils",
            trade_name="PHARMACIE DU MARCHÉ",
            service="Officine",
        ),
        True,
    ),
    (EntryData(address="lgc@chu-nord.mssante.test", kind=Kind.APPLICATIVE), False),
]


def write(fmt: Format, entries: list[tuple[EntryData, bool]]) -> str:
    out = io.StringIO()
    assert write_entries(fmt, entries, out) == len(entries)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "reader"), [(Format.CSV, read_csv), (Format.JSON, read_json)])
def test_written_entries_read_back_equal(fmt: Format, reader: Reader) -> None:
    assert all(data.validated() == data for data, _ in ENTRIES)
    records = list(reader(lines_of(write(fmt, ENTRIES))))
    assert [r.data for r in records] == [data for data, _ in ENTRIES]
    assert [r.reason for r in records] == [None] * len(ENTRIES)
    assert all(r.sets_status for r in records)
    assert [r.line for r in records] == [2, 3, 4, 5]  # one entry per line after the header or the opening bracket


@pytest.mark.parametrize(("fmt", "reader"), [(Format.CSV, read_csv), (Format.JSON, read_json)])
def test_writing_nothing_reads_back_nothing(fmt: Format, reader: Reader) -> None:
    assert list(reader(lines_of(write(fmt, [])))) == []


def test_write_entries_csv_writes_booleans_as_words_and_none_as_empty() -> None:
    text = write(Format.CSV, [ENTRIES[1]])
    header, line = text.splitlines()
    assert header.split(",") == [*DATA_FIELDS, "local"]
    values = dict(zip(header.split(","), next(csv.reader([line])), strict=True))
    assert values["dematerialisation"] == "false"
    assert values["unlisted"] == "true"
    assert values["local"] == "false"
    assert values["service"] == ""
    assert values["kind"] == "personal"
    assert values["status"] == "suspended"


def test_write_entries_json_is_an_array_with_one_entry_per_line() -> None:
    text = write(Format.JSON, ENTRIES[:2])
    assert text.splitlines()[0] == "["
    assert text.splitlines()[-1] == "]"
    first = json.loads(text.splitlines()[1].rstrip(","))
    assert first["kind"] == "personal"
    assert first["local"] is True
    assert first["specialty_code"] is None
    assert first["last_name"] == "LEFÈVRE"  # not \u-escaped
    assert "LEFÈVRE" in text


def test_write_entries_refuses_the_extraction_format() -> None:
    with pytest.raises(ImportFormatError, match="extraction"):
        write_entries(Format.EXTRACTION, [ENTRIES[0]], io.StringIO())


_texts = st.text(max_size=30)


@settings(max_examples=50)
@given(
    st.sampled_from(list(Kind)),
    st.sampled_from(list(Status)),
    _texts,
    _texts,
    st.none() | st.booleans(),
    st.booleans(),
)
def test_any_valid_entry_survives_a_csv_and_a_json_round_trip(
    kind: Kind, status: Status, name: str, organization: str, dematerialisation: bool | None, unlisted: bool
) -> None:
    data = EntryData(
        address="x.y@chu-nord.mssante.test",
        kind=kind,
        status=status,
        identifier_type="RPPS" if kind is Kind.PERSONAL else None,
        identifier="10869073667" if kind is Kind.PERSONAL else None,
        last_name=name,
        organization=organization,
        dematerialisation=dematerialisation,
        unlisted=unlisted,
    ).validated()
    for fmt, reader in ((Format.CSV, read_csv), (Format.JSON, read_json)):
        [record] = reader(lines_of(write(fmt, [(data, True)])))
        assert record.data == data, fmt


# --- mssecure JSON: reading --------------------------------------------------------------------------------------


def test_read_json_names_the_line_each_object_starts_on() -> None:
    text = """[
  {"address": "a@chu-nord.mssante.test", "kind": "organizational"},
  {
    "address": "pas-une-adresse",
    "kind": "organizational"
  },

  {"address": "b@chu-nord.mssante.test",
   "kind": "personal"},  42,
  {"address": "c@chu-nord.mssante.test", "kind": "applicative", "colour": "blue"}
]
"""
    records = list(read_json(lines_of(text)))
    assert [(r.line, r.reason) for r in records] == [
        (2, None),
        (3, "bad address 'pas-une-adresse': expected local-part@domain"),
        (8, "a personal mailbox needs its owner's RPPS or ADELI identifier"),
        (9, "expected an object"),
        (10, "unknown field 'colour'"),
    ]


def test_read_json_accepts_a_byte_order_mark_and_a_single_line() -> None:
    raw = [b'\xef\xbb\xbf[{"address": "A@chu-nord.mssante.test", "kind": "organizational"}]']
    [record] = read_json(raw)
    assert record.data == EntryData(address="a@chu-nord.mssante.test", kind=Kind.ORGANIZATIONAL)
    assert record.sets_status is False


def test_read_json_ignores_the_derived_keys_of_an_export() -> None:
    value = {"address": "a@chu-nord.mssante.test", "kind": "organizational", "local": True,
             "domain": "ignored.test", "created_at": "2026-01-01", "updated_at": None}  # fmt: skip
    [record] = read_json([json.dumps([value]).encode()])
    assert record.data == EntryData(address="a@chu-nord.mssante.test", kind=Kind.ORGANIZATIONAL)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"unlisted": "yes"}, True),
        ({"unlisted": "Oui"}, True),
        ({"unlisted": "no"}, False),
        ({"unlisted": ""}, False),
        ({"unlisted": None}, False),
        ({"unlisted": True}, True),
        ({"dematerialisation": "non"}, False),
        ({"dematerialisation": "  "}, None),
        ({"dematerialisation": "1"}, True),
    ],
)
def test_read_json_reads_flags_given_as_words(changes: dict[str, object], expected: bool | None) -> None:
    value = {"address": "a@chu-nord.mssante.test", "kind": "organizational", **changes}
    [record] = read_json([json.dumps([value]).encode()])
    assert record.data is not None
    [name] = changes
    assert getattr(record.data, name) is expected


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"unlisted": "maybe"}, "unlisted must be true or false, not 'maybe'"),
        ({"unlisted": 1}, "unlisted must be true or false"),
        ({"dematerialisation": "peut-être"}, "dematerialisation must be true or false, not 'peut-être'"),
        ({"dematerialisation": []}, "dematerialisation must be true or false"),
        ({"colour": "blue"}, "unknown field 'colour'"),
        ({"address": ""}, "empty address"),
        ({"address": None}, "empty address"),
        ({"address": 42}, "address must be text"),
        ({"kind": None}, "missing mailbox kind"),
        ({"kind": "bogus"}, "unknown mailbox kind 'bogus'"),
        ({"status": "deleted"}, "unknown status 'deleted'"),
        ({"organization": {"name": "CHU"}}, "organization must be text"),
    ],
)
def test_read_json_rejects_bad_objects(changes: dict[str, object], reason: str) -> None:
    value = {"address": "a@chu-nord.mssante.test", "kind": "organizational", **changes}
    [record] = read_json([json.dumps([value]).encode()])
    assert record.data is None
    assert record.reason is not None
    assert record.reason.startswith(reason)


def test_read_json_sets_status_only_when_the_object_says_it() -> None:
    values = [{"address": "a@chu-nord.mssante.test", "kind": "organizational", "status": "suspended"},
              {"address": "b@chu-nord.mssante.test", "kind": "organizational", "status": ""}]  # fmt: skip
    first, second = read_json([json.dumps(values).encode()])
    assert (first.sets_status, first.data and first.data.status) == (True, Status.SUSPENDED)
    assert (second.sets_status, second.data and second.data.status) == (False, Status.ACTIVE)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", r"unexpected end of file"),
        (b"  \n ", r"unexpected end of file"),
        (b'{"address": "a@chu-nord.mssante.test", "kind": "organizational"}', r"expected an array"),
        (b'"[]"', r"expected an array"),
        (b"[", r"unexpected end of file"),
        (b'[{"address": "a@chu-nord.mssante.test", "kind": "organizational"}', r"unexpected end of file"),
        (b'[{"address": "a@chu-nord.mssante.test", "kind": "organiz', r"^line 1: malformed JSON"),
        (b'[\n{"address": "a@chu-nord.mssante.test",\n "kind": }]', r"^line 3: malformed JSON"),
        (b"[1 2]", r"^line 1: malformed JSON \(expected , or \]\)"),
        (b"[]\n\ngarbage", r"^line 1: unexpected data after the array"),
        (b"[]]", r"unexpected data after the array"),
        (b"[] []", r"unexpected data after the array"),
        (b"[\xff]", r"not valid UTF-8"),
    ],
)
def test_read_json_refuses_a_file_that_is_not_an_array_of_entries(raw: bytes, message: str) -> None:
    with pytest.raises(ImportFormatError, match=message):
        list(read_json([raw]))


def test_read_json_accepts_trailing_white_space() -> None:
    assert list(read_json([b"[]\n", b"\n", b"  \r\n"])) == []


def test_read_json_refuses_deeply_nested_json_as_a_format_error() -> None:
    raw = b"[\n" + b"[" * 100_000 + b"]" * 100_000 + b"]"
    with pytest.raises(ImportFormatError, match=r"^line 2: JSON nested too deeply"):
        list(read_json([raw]))


def test_read_json_refuses_a_number_too_long_to_convert_as_a_format_error() -> None:
    raw = b"[\n" + b"1" * 5000 + b"]"
    with pytest.raises(ImportFormatError, match=r"^line 2: "):
        list(read_json([raw]))


# --- mssecure CSV: reading ---------------------------------------------------------------------------------------


def test_read_csv_reads_only_the_columns_it_is_given() -> None:
    raw = lines_of("kind,address,organization\norganizational,A@chu-nord.mssante.test,CHU Nord\n")
    [record] = read_csv(raw)
    assert record == Record(
        2, EntryData(address="a@chu-nord.mssante.test", kind=Kind.ORGANIZATIONAL, organization="CHU Nord")
    )


def test_read_csv_skips_blank_rows_and_rejects_rows_of_the_wrong_width() -> None:
    text = (
        "address,kind,unlisted\n"
        "\n"
        " , ,\n"
        "a@chu-nord.mssante.test,organizational\n"
        "b@chu-nord.mssante.test,applicative,maybe\n"
    )
    records = list(read_csv(lines_of(text)))
    assert [(r.line, r.reason) for r in records] == [
        (4, "wrong column count: 2 columns, expected 3"),
        (5, "unlisted must be true or false, not 'maybe'"),
    ]


def test_read_csv_reads_unlisted_given_as_yes() -> None:
    [record] = read_csv(lines_of("address,kind,unlisted\na@chu-nord.mssante.test,organizational,yes\n"))
    assert record.data is not None
    assert record.data.unlisted is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"header must name address and kind"),
        ("address,organization\n", r"header must name address and kind"),
        ("kind\n", r"header must name address and kind"),
        ("address,kind,colour\n", r"'colour' is not a directory field"),
        ('address,kind\n"a@chu-nord.mssante.test"x,organizational\n', r"^line 2: malformed CSV"),
    ],
)
def test_read_csv_refuses_a_file_it_cannot_read(text: str, message: str) -> None:
    with pytest.raises(ImportFormatError, match=message):
        list(read_csv(lines_of(text)))


def test_read_csv_refuses_a_line_that_is_not_utf8() -> None:
    raw = [
        b"address,kind,organization\n",
        b"a@chu-nord.mssante.test,organizational,CHU\n",
        b"b@x.fr,applicative,\xe9\n",
    ]
    with pytest.raises(ImportFormatError, match=r"^line 3 is not valid UTF-8"):
        list(read_csv(raw))


# --- fuzzing: never anything but records or ImportFormatError ----------------------------------------------------


def records_or_format_error(reader: Reader, raw: list[bytes]) -> None:
    try:
        records = list(reader(raw))
    except ImportFormatError:
        return
    for record in records:
        assert isinstance(record, Record)
        assert (record.data is None) != (record.reason is None)


@pytest.mark.parametrize("reader", [read_json, read_csv])
@settings(max_examples=60)
@given(st.lists(st.binary(max_size=60), max_size=5))
def test_readers_on_arbitrary_bytes_yield_records_or_raise_import_format_error(
    reader: Reader, raw: list[bytes]
) -> None:
    records_or_format_error(reader, raw)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
_json_objects = st.dictionaries(
    st.sampled_from([*DATA_FIELDS, "local", "domain", "colour"]),
    _json_values | st.sampled_from(["a@b.fr", "personal", "organizational", "RPPS", "10869073667", "yes"]),
    max_size=8,
)


@settings(max_examples=60)
@given(st.lists(_json_objects | _json_values, max_size=4), st.integers(min_value=0, max_value=2))
def test_read_json_on_arbitrary_arrays_yields_one_record_per_element(values: list[object], indent: int) -> None:
    text = json.dumps(values, indent=indent or None)
    records = list(read_json(lines_of(text)))
    assert len(records) == len(values)
    for record in records:
        assert (record.data is None) != (record.reason is None)


@settings(max_examples=60)
@given(st.lists(st.text(max_size=40), max_size=5))
def test_read_csv_on_arbitrary_rows_yields_records_or_raises_import_format_error(rows: list[str]) -> None:
    raw = [b"address,kind,status,unlisted,organization\n", *(f"{r}\n".encode() for r in rows)]
    records_or_format_error(read_csv, raw)


# --- synthetic extractions ---------------------------------------------------------------------------------------


def sample(lines: int, *, seed: int = 1, with_errors: bool = False) -> tuple[str, SampleSummary]:
    out = io.StringIO()
    summary = write_sample_extraction(out, lines, seed=seed, with_errors=with_errors)
    return out.getvalue(), summary


def test_a_sample_with_errors_reads_back_as_its_summary_says() -> None:
    text, summary = sample(60, seed=7, with_errors=True)
    records = list(read_extraction(lines_of(text)))
    assert len(records) == summary.lines == len(text.splitlines()) - 1
    valid = [r for r in records if r.data is not None]
    rejected = [r for r in records if r.reason is not None]
    # Duplicates are the importer's business: here they read as valid lines.
    assert len(valid) == summary.valid + summary.duplicates
    assert len(rejected) == summary.rejected
    assert summary == SampleSummary(lines=60 + 5 + 2, valid=60, rejected=5, duplicates=2)


def test_a_sample_with_errors_has_one_rejection_of_each_kind() -> None:
    text, _ = sample(20, seed=3, with_errors=True)
    reasons = [r.reason for r in read_extraction(lines_of(text)) if r.reason]
    expected = ["wrong column count", "empty address", "bad address", "bad identifier key", "unknown mailbox type"]
    assert len(reasons) == len(expected)
    for reason, prefix in zip(reasons, expected, strict=True):
        assert reason.startswith(prefix), reason


def test_the_duplicates_of_a_sample_repeat_an_address_of_the_file() -> None:
    text, _ = sample(20, seed=3, with_errors=True)
    addresses = [r.data.address for r in read_extraction(lines_of(text)) if r.data]
    assert len(addresses) == 22
    assert len(set(addresses)) == 20
    assert addresses[-1] == addresses[-2] == addresses[0]


def test_a_sample_without_errors_is_all_valid_lines() -> None:
    text, summary = sample(40, seed=2)
    records = list(read_extraction(lines_of(text)))
    assert summary == SampleSummary(lines=40, valid=40, rejected=0, duplicates=0)
    assert [r.reason for r in records] == [None] * 40
    assert len({r.data.address for r in records if r.data}) == 40


def test_a_sample_is_deterministic_for_a_seed() -> None:
    assert sample(30, seed=5, with_errors=True) == sample(30, seed=5, with_errors=True)
    assert sample(30, seed=5)[0] != sample(30, seed=6)[0]


def test_the_identifiers_of_a_sample_pass_their_checks() -> None:
    text, _ = sample(300, seed=11)
    rows = [line.split("|") for line in text.splitlines()[1:]]
    rpps = [columns[IDENTIFIER] for columns in rows if columns[ID_TYPE] == "8"]
    finess = [columns[STRUCTURE_ID] for columns in rows if columns[STRUCTURE_TYPE] == "1"]
    assert len(rpps) > 100
    assert len(finess) == 300
    assert [check_rpps(n) for n in rpps] == rpps
    assert [check_finess(n) for n in finess] == finess
    assert all(columns[NATIONAL_ID] == columns[ID_TYPE] + columns[IDENTIFIER] for columns in rows)
