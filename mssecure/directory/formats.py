"""Directory file formats: the national extraction (read), and mssecure's own CSV and JSON (read and write).

Readers take the raw lines of a file (bytes, so that one badly encoded line is one rejected line) and yield one
``Record`` per entry: its line number and either a validated ``EntryData`` or the reason it was rejected.
A file that cannot be read at all (wrong header, not JSON) raises ``ImportFormatError``.

The importer reads ``Chunk``s instead (``read_chunks``): runs of lines already in the form it writes, plain tuples,
which a national extraction's parsing workers make and send it for less than Records would cost to unpickle.

The national extraction ("Extraction Correspondance MSSanté", published by the ANS): UTF-8, ``|``-separated, one
header line, 31 columns, mailbox types PER/ORG/APP, professional identifier type 8 (RPPS) or 0 (ADELI).
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import operator
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import IO, Any

from mssecure.directory.records import DATA_FIELDS, MAX_TEXT, EntryData, Kind, entry_row, validated_values
from mssecure.errors import ImportFormatError, InvalidEntry

__all__ = [
    "EXTRACTION_HEADER",
    "Chunk",
    "Format",
    "Record",
    "address_digest",
    "chunked",
    "read_chunks",
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


# A line the importer takes: (line number, digest of the address, the entry's row, whether the file sets its status).
Accepted = tuple[int, int, tuple[Any, ...], bool]


@dataclass(frozen=True, slots=True)
class Chunk:
    """A run of lines of a file, read: the rejected ones (line number, reason) and the accepted ones, in file order.

    An accepted line is (line number, ``address_digest`` of its address, the entry as a row of plain values in
    ``ROW_FIELDS`` order: ``entry_row``, whether the file sets its status).
    """

    rejected: list[tuple[int, str]]
    accepted: list[Accepted]


def address_digest(address: str) -> int:
    """8 bytes of BLAKE2b of an address, as an int: what the importer keeps of each address to spot duplicates."""
    return int.from_bytes(hashlib.blake2b(address.encode(), digest_size=8).digest(), "big")


def chunked(records: Iterable[Record], size: int = 1000) -> Iterator[Chunk]:
    """``records`` as chunks of at most ``size`` lines: how the importer takes CSV, JSON and hand-made records."""
    iterator = iter(records)
    while group := list(islice(iterator, size)):
        rejected = [(r.line, r.reason or "rejected") for r in group if r.data is None]
        accepted = [
            (r.line, address_digest(r.data.address), r.data.row(), r.sets_status) for r in group if r.data is not None
        ]
        yield Chunk(rejected, accepted)


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
_KEPT_FIELDS = tuple(f for f in _EXTRACTION_FIELDS if f)
_kept_columns = operator.itemgetter(*(i for i, f in enumerate(_EXTRACTION_FIELDS) if f))
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


def _check_extraction_header(lines: Iterator[bytes]) -> None:
    """Read the first line and refuse the file unless it is the extraction's header."""
    header = next(_lines(islice(lines, 1)), (1, ""))[1]
    if header is None:
        raise ImportFormatError("not a national directory extraction: the first line is not valid UTF-8")
    if tuple(c.strip() for c in header.split("|")) != EXTRACTION_HEADER:
        raise ImportFormatError(
            "not a national directory extraction: the first line is not the 31-column header "
            f"starting with {EXTRACTION_HEADER[0]!r}|{EXTRACTION_HEADER[1]!r}"
        )


def read_extraction(raw: Iterable[bytes]) -> Iterator[Record]:
    """The records of a national extraction, in file order (the importer reads ``read_chunks`` instead)."""
    lines = iter(raw)
    _check_extraction_header(lines)
    for number, line in enumerate(lines, 2):
        text = _decoded(line)
        if text is None:
            yield Record(number, reason="line is not valid UTF-8")
        elif text.strip():
            try:
                values, plain = _extraction_values(text)
                yield Record(number, EntryData(**validated_values(values, plain_text=plain)))
            except InvalidEntry as exc:
                yield Record(number, reason=str(exc))


def _extraction_chunks(raw: Iterable[bytes], workers: int) -> Iterator[Chunk]:
    """The chunks of a national extraction; with ``workers`` > 0, lines are parsed by that many processes.

    Either way the chunks come out in file order, and at most a few chunks of lines are in flight.
    """
    lines = iter(raw)
    _check_extraction_header(lines)
    number = 2
    if workers <= 0:
        while block := list(islice(lines, _CHUNK)):
            yield _extraction_chunk(number, block)
            number += len(block)
        return
    context = multiprocessing.get_context(
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    )
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: deque[Future[Chunk]] = deque()
        while block := list(islice(lines, _CHUNK)):
            pending.append(pool.submit(_extraction_chunk, number, block))
            number += len(block)
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_CHUNK = 2000


def _extraction_chunk(first: int, lines: list[bytes]) -> Chunk:
    """Parse raw extraction lines, the first being line number ``first``: everything the importer needs of them.

    Runs in the parsing workers: decoding, validation, the search text and the digest all happen here.
    """
    rejected: list[tuple[int, str]] = []
    accepted: list[Accepted] = []
    # One object per distinct value in a chunk: pickle then sends each repeated value (a label, a country) once, and
    # the importing process, which unpickles, builds it once.
    seen: dict[Any, Any] = {}
    shared = seen.setdefault
    for number, line in enumerate(lines, first):
        text = _decoded(line)
        if text is None:
            rejected.append((number, "line is not valid UTF-8"))
        elif text.strip():
            try:
                values, plain = _extraction_values(text)
                row = entry_row(validated_values(values, plain_text=plain))
            except InvalidEntry as exc:
                rejected.append((number, str(exc)))
                continue
            accepted.append((number, address_digest(row[0]), tuple(map(shared, row, row)), False))
    return Chunk(rejected, accepted)


def _decoded(line: bytes) -> str | None:
    """A line after the first without its line end, or None if it is not UTF-8."""
    try:
        return line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None


def _extraction_values(text: str) -> tuple[dict[str, Any], bool]:
    """The field values of an extraction line, and whether their text is plain (see ``validated_values``)."""
    cells = text.split("|")
    if len(cells) != len(EXTRACTION_HEADER):
        raise InvalidEntry(f"wrong column count: {len(cells)} columns, expected {len(EXTRACTION_HEADER)}")
    # If the whole line is printable, without doubled spaces, and no column is too long, every text value already
    # is what validation would make of it once stripped, and its only white space is the space.
    plain = text.isprintable() and "  " not in text and max(map(len, cells)) <= MAX_TEXT
    if plain and "| " not in text and " |" not in text and text[:1] != " " and text[-1:] != " ":
        columns = cells  # nothing to strip
    else:
        columns = [c.strip() for c in cells]
    if not columns[1]:
        raise InvalidEntry("empty address")
    kind = _EXTRACTION_KINDS.get(columns[0].upper())
    if kind is None:
        raise InvalidEntry(f"unknown mailbox type {columns[0]!r} (expected PER, ORG or APP)")
    values: dict[str, Any] = dict(zip(_KEPT_FIELDS, [c or None for c in _kept_columns(columns)], strict=True))
    if columns[2] or columns[3]:
        values["identifier_type"] = _code(_PERSON_ID_TYPES, columns[2], "professional identifier type")
    if columns[5] or columns[6]:
        values["structure_id_type"] = _code(_STRUCTURE_ID_TYPES, columns[5], "structure identifier type")
    values["kind"], values["dematerialisation"] = kind, _flag(columns[17])
    return values, plain


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


def read_records(fmt: Format, raw: Iterable[bytes]) -> Iterator[Record]:
    """The records of a file in format ``fmt``, read lazily from its raw lines."""
    return _READERS[fmt](raw)


def read_chunks(fmt: Format, raw: Iterable[bytes], *, workers: int = 0) -> Iterator[Chunk]:
    """The lines of a file in format ``fmt`` as the importer takes them, read lazily from its raw lines.

    ``workers`` > 0 parses a national extraction in that many processes (the other formats are read in order).
    """
    if fmt is Format.EXTRACTION:
        return _extraction_chunks(raw, workers)
    return chunked(read_records(fmt, raw))


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
