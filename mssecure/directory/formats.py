"""Directory file formats: the national extraction (read), and mssecure's own CSV and JSON (read and write).

Readers take the raw lines of a file (bytes, so that one badly encoded line is one rejected line) and yield one
``Record`` per entry: its line number and either a validated ``EntryData`` or the reason it was rejected.
A file that cannot be read at all (wrong header, not JSON) raises ``ImportFormatError``.

The national extraction ("Extraction Correspondance MSSanté", published by the ANS): UTF-8, ``|``-separated, one
header line, 31 columns, mailbox types PER/ORG/APP, professional identifier type 8 (RPPS) or 0 (ADELI).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import IO, Any

from mssecure.directory.records import DATA_FIELDS, EntryData, Kind
from mssecure.errors import ImportFormatError, InvalidEntry

__all__ = [
    "EXTRACTION_HEADER",
    "Format",
    "Record",
    "read_csv",
    "read_extraction",
    "read_json",
    "read_records",
    "write_entries",
]


class Format(StrEnum):
    EXTRACTION = "extraction"
    CSV = "csv"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class Record:
    """One entry read from a file: ``data`` when valid, else ``reason``; ``sets_status`` if the file says it."""

    line: int
    data: EntryData | None = None
    reason: str | None = None
    sets_status: bool = False
    search_text: str | None = None  # precomputed by a parallel reader, else computed when stored


EXTRACTION_HEADER = (
    "Type de BAL", "Adresse BAL", "Type Identifiant PP", "Identifiant PP", "Identification nationale PP",
    "Type identifiant structure", "Identification Structure", "Service de rattachement", "Civilité d'exercice",
    "Nom d'exercice", "Prénom d'exercice", "Catégorie profession", "Libellé de catégorie profession",
    "Code Profession", "Libellé Profession", "Code savoir-faire", "Libellé savoir-faire", "Dématérialisation",
    "Raison Sociale structure BAL", "Enseigne commerciale structure BAL", "L2COMPLEMENTLOCALISATION structure BAL",
    "L3COMPLEMENTDISTRIBUTION structure BAL", "L4NUMEROVOIE structure BAL", "L4COMPLEMENTNUMEROVOIE structure BAL",
    "NL4TYPEVOIE structure BAL", "L4LIBELLEVOIE structure BAL", "L5LIEUDITMENTION structure BAL",
    "L6LIGNEACHEMINEMENT structure BAL", "Code postal structure BAL", "Département structure BAL",
    "Pays structure BAL",
)  # fmt: skip

# Column i of the extraction → EntryData field (None: handled specially or not kept).
_EXTRACTION_FIELDS = (
    None, "address", None, "identifier", "national_id", None, "structure_id", "service", "civility", "last_name",
    "first_name", "category_code", "category_label", "profession_code", "profession_label", "specialty_code",
    "specialty_label", None, "organization", "trade_name", "address_complement", "address_distribution",
    "street_number", "street_number_suffix", "street_type", "street_name", "locality", "routing_line",
    "postal_code", "department", "country",
)  # fmt: skip
_EXTRACTION_KINDS = {"PER": Kind.PERSONAL, "ORG": Kind.ORGANIZATIONAL, "APP": Kind.APPLICATIVE}
_EXTRACTION_KIND_CODES = {kind: code for code, kind in _EXTRACTION_KINDS.items()}
_PERSON_ID_TYPES = {"8": "RPPS", "0": "ADELI"}
_STRUCTURE_ID_TYPES = {"1": "FINESS", "2": "SIREN", "3": "SIRET", "4": "RPPS"}
_TRUE = {"true", "1", "oui", "o", "yes", "y"}
_FALSE = {"false", "0", "non", "n", "no"}
# Keys an mssecure export writes that are derived, not imported.
_DERIVED_KEYS = {"local", "domain", "created_at", "updated_at"}


def _flag(value: str) -> bool | None:
    folded = value.strip().lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    return None


def _lines(raw: Iterable[bytes]) -> Iterator[tuple[int, str | None]]:
    """(line number, text) for each line; text is None when the line is not UTF-8."""
    for number, line in enumerate(raw, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            yield number, None
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        yield number, text.rstrip("\r\n")


def _extraction_record(line: int, text: str) -> Record:
    try:
        return Record(line, EntryData.from_values(_extraction_values(text)))
    except InvalidEntry as exc:
        return Record(line, reason=str(exc))


def read_extraction(raw: Iterable[bytes], *, workers: int = 0) -> Iterator[Record]:
    """The records of a national extraction; with ``workers`` > 0, lines are parsed by that many processes.

    Either way the records come out in file order, and at most a few chunks of lines are in flight.
    """
    lines = _lines(raw)
    number, header = next(lines, (0, ""))
    if header is None:
        raise ImportFormatError("not a national directory extraction: the first line is not valid UTF-8")
    if tuple(c.strip() for c in header.split("|")) != EXTRACTION_HEADER:
        raise ImportFormatError(
            "not a national directory extraction: the first line is not the 31-column header "
            f"starting with {EXTRACTION_HEADER[0]!r}|{EXTRACTION_HEADER[1]!r}"
        )
    if workers <= 0:
        for number, text in lines:
            yield from _parse_extraction_lines([(number, text)], precompute=False)
        return
    context = multiprocessing.get_context(
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    )
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: deque[Future[list[Record]]] = deque()
        while chunk := list(islice(lines, _CHUNK)):
            pending.append(pool.submit(_parse_extraction_lines, chunk))
            if len(pending) > 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


_CHUNK = 2000


def _parse_extraction_lines(chunk: list[tuple[int, str | None]], precompute: bool = True) -> list[Record]:
    """Parse (line number, text) pairs; ``precompute`` also folds the search text (off the importing process)."""
    records: list[Record] = []
    for number, text in chunk:
        if text is None:
            records.append(Record(number, reason="line is not valid UTF-8"))
        elif text.strip():
            record = _extraction_record(number, text)
            if precompute and record.data is not None:
                record = Record(number, record.data, search_text=record.data.search_text())
            records.append(record)
    return records


def _extraction_values(text: str) -> dict[str, Any]:
    columns = [c.strip() for c in text.split("|")]
    if len(columns) != len(EXTRACTION_HEADER):
        raise InvalidEntry(f"wrong column count: {len(columns)} columns, expected {len(EXTRACTION_HEADER)}")
    if not columns[1]:
        raise InvalidEntry("empty address")
    kind = _EXTRACTION_KINDS.get(columns[0].upper())
    if kind is None:
        raise InvalidEntry(f"unknown mailbox type {columns[0]!r} (expected PER, ORG or APP)")
    values: dict[str, Any] = {f: c or None for f, c in zip(_EXTRACTION_FIELDS, columns, strict=True) if f}
    if columns[2] or columns[3]:
        values["identifier_type"] = _code(_PERSON_ID_TYPES, columns[2], "professional identifier type")
    if columns[5] or columns[6]:
        values["structure_id_type"] = _code(_STRUCTURE_ID_TYPES, columns[5], "structure identifier type")
    values["kind"], values["dematerialisation"] = kind, _flag(columns[17])
    return values


def _code(codes: dict[str, str], code: str, what: str) -> str:
    try:
        return codes[code]
    except KeyError:
        raise InvalidEntry(f"unknown {what} {code!r} (expected {', '.join(codes)})") from None


def _from_mapping(values: dict[str, Any]) -> tuple[EntryData, bool]:
    unknown = set(values) - set(DATA_FIELDS) - _DERIVED_KEYS
    if unknown:
        raise InvalidEntry(f"unknown field {sorted(unknown)[0]!r}")
    kept = {k: v for k, v in values.items() if k in DATA_FIELDS}
    for name in ("address", "kind"):
        if not kept.get(name):
            raise InvalidEntry("empty address" if name == "address" else "missing mailbox kind")
    for name in ("dematerialisation", "unlisted"):
        value = kept.get(name)
        if isinstance(value, str):
            kept[name] = _flag(value) if value.strip() else None
            if kept[name] is None and value.strip():
                raise InvalidEntry(f"{name} must be true or false, not {value!r}")
        elif value is not None and not isinstance(value, bool):
            raise InvalidEntry(f"{name} must be true or false")
    if kept.get("unlisted") is None:
        kept["unlisted"] = False
    for name, value in kept.items():
        if value is not None and name not in ("dematerialisation", "unlisted") and not isinstance(value, str):
            raise InvalidEntry(f"{name} must be text")
    sets_status = bool(kept.get("status"))
    if not sets_status:
        kept.pop("status", None)
    return EntryData(**kept), sets_status


def read_csv(raw: Iterable[bytes]) -> Iterator[Record]:
    def texts() -> Iterator[str]:
        for number, text in _lines(raw):
            if text is None:
                raise ImportFormatError(f"line {number} is not valid UTF-8")
            yield text

    reader = csv.reader(texts(), strict=True)
    try:
        header = next(reader, [])
        unknown = set(header) - set(DATA_FIELDS) - _DERIVED_KEYS
        if "address" not in header or "kind" not in header or unknown:
            raise ImportFormatError(
                "not an mssecure directory CSV: the header must name address and kind"
                + (f", and {sorted(unknown)[0]!r} is not a directory field" if unknown else "")
            )
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                reason = f"wrong column count: {len(row)} columns, expected {len(header)}"
                yield Record(reader.line_num, reason=reason)
                continue
            values = {k: (v if v.strip() else None) for k, v in zip(header, row, strict=True)}
            yield _record_from_mapping(reader.line_num, values)
    except csv.Error as exc:
        raise ImportFormatError(f"line {reader.line_num}: malformed CSV ({exc})") from None


def _record_from_mapping(line: int, values: dict[str, Any]) -> Record:
    try:
        data, sets_status = _from_mapping(values)
        return Record(line, data.validated(), sets_status=sets_status)
    except InvalidEntry as exc:
        return Record(line, reason=str(exc))
    except TypeError:
        return Record(line, reason="malformed entry")


def read_json(raw: Iterable[bytes]) -> Iterator[Record]:
    """A JSON array of entry objects; each rejection names the line its object starts on."""
    try:
        text = b"".join(raw).decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise ImportFormatError("file is not valid UTF-8") from None
    decoder = json.JSONDecoder()
    position = _skip_space(text, 0)
    if not text.startswith("[", position):
        raise ImportFormatError("not an mssecure directory JSON file: expected an array of entries")
    position = _skip_space(text, position + 1)
    line, counted = 1, 0
    first = True
    while not text.startswith("]", position):
        if not first:
            if not text.startswith(",", position):
                raise ImportFormatError(f"line {_line_of(text, position)}: malformed JSON (expected , or ])")
            position = _skip_space(text, position + 1)
        first = False
        line += text.count("\n", counted, position)
        counted = position
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise ImportFormatError(f"line {exc.lineno}: malformed JSON ({exc.msg})") from None
        except RecursionError:
            raise ImportFormatError(f"line {line}: JSON nested too deeply") from None
        except ValueError:  # e.g. an integer longer than Python converts
            raise ImportFormatError(f"line {line}: malformed JSON (a value cannot be read)") from None
        position = _skip_space(text, position)
        if not isinstance(value, dict):
            yield Record(line, reason="expected an object")
        else:
            yield _record_from_mapping(line, value)
    if text[position + 1 :].strip():
        raise ImportFormatError(f"line {_line_of(text, position)}: unexpected data after the array")


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    if position >= len(text):
        raise ImportFormatError("malformed JSON: unexpected end of file")
    return position


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


_READERS = {Format.EXTRACTION: read_extraction, Format.CSV: read_csv, Format.JSON: read_json}


def read_records(fmt: Format, raw: Iterable[bytes], *, workers: int = 0) -> Iterator[Record]:
    """The records of a file in format ``fmt``, read lazily from its raw lines.

    ``workers`` > 0 parses a national extraction in that many processes (the other formats are read in order).
    """
    if fmt is Format.EXTRACTION:
        return read_extraction(raw, workers=workers)
    return _READERS[fmt](raw)


def _export_dict(data: EntryData, local: bool) -> dict[str, Any]:
    values = data.to_dict()
    values["kind"], values["status"] = str(data.kind), str(data.status)
    values["local"] = local
    return values


def write_entries(fmt: Format, entries: Iterable[tuple[EntryData, bool]], out: IO[str]) -> int:
    """Write (entry, is local) pairs as mssecure CSV or JSON (an array, one entry per line); returns the count."""
    count = 0
    if fmt is Format.CSV:
        writer = csv.DictWriter(out, fieldnames=[*DATA_FIELDS, "local"], lineterminator="\n")
        writer.writeheader()
        for data, local in entries:
            row = _export_dict(data, local)
            writer.writerow(
                {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else v) for k, v in row.items()}
            )
            count += 1
    elif fmt is Format.JSON:
        out.write("[")
        for data, local in entries:
            out.write(",\n" if count else "\n")
            out.write(json.dumps(_export_dict(data, local), ensure_ascii=False))
            count += 1
        out.write("\n]\n")
    else:
        raise ImportFormatError(f"cannot export in the {fmt} format (use json or csv)")
    return count
