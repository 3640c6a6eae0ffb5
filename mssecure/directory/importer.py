"""Import of directory files: an idempotent upsert keyed on the lowercased address.

The file is streamed and written in batches inside one transaction (all or nothing; ``dry_run`` rolls it back), so
the file is never held in memory: what is kept across batches is an 8-byte digest per address seen (about 67 bytes
each in a Python set, 35 MiB for the 540,000-line national file), to count duplicate lines (the first occurrence of
an address wins).

Each line ends up in exactly one bucket of the ``ImportReport``: created, updated, unchanged, duplicate or rejected
(with its line number and reason). Every created or updated entry gets a history row naming the import.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import islice
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mssecure.db import utcnow
from mssecure.directory.formats import Record
from mssecure.directory.models import Entry, EntryChange
from mssecure.directory.records import DATA_FIELDS, Status
from mssecure.directory.service import check_transition, jsonable_diff, row_values
from mssecure.errors import InvalidTransition

__all__ = ["ImportReport", "Rejection", "import_records"]

BATCH_SIZE = 1000
_ENTRIES = cast(sa.Table, Entry.__table__)
_CHANGES = cast(sa.Table, EntryChange.__table__)
_COMPARED = tuple(f for f in DATA_FIELDS if f not in ("address", "status"))
_compared = operator.attrgetter(*_COMPARED)


@dataclass(frozen=True)
class Rejection:
    line: int
    reason: str


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "rejected": [{"line": r.line, "reason": r.reason} for r in self.rejected],
        }


def _digest(address: str) -> int:
    return int.from_bytes(hashlib.blake2b(address.encode(), digest_size=8).digest(), "big")


def import_records(
    connection: Connection,
    records: Iterable[Record],
    *,
    actor: str,
    source: str,
    clock: Callable[[], datetime] = utcnow,
    progress: Callable[[int], None] | None = None,
    on_status_change: Callable[[str, Status], None] | None = None,
) -> ImportReport:
    """Upsert ``records`` through ``connection`` (inside the caller's transaction) and report what happened.

    ``progress`` is called with the number of records handled after each batch; ``on_status_change`` with
    (address, new status) for each status a file changes, after it is written.
    """
    report = ImportReport()
    seen: set[int] = set()
    if connection.dialect.name == "postgresql":
        # The rows this transaction inserts have no statistics yet, so the planner would take the address lookups
        # for scans of a tiny table and scan a growing one for every batch; they are all unique-key lookups.
        connection.execute(sa.text("SET LOCAL enable_seqscan = off"))

    def accepted() -> Iterator[Record]:
        for record in records:
            if record.data is None:
                report.rejected.append(Rejection(record.line, record.reason or "rejected"))
                continue
            digest = _digest(record.data.address)
            if digest in seen:
                report.duplicates += 1
                continue
            seen.add(digest)
            yield record

    stream = accepted()
    while batch := list(islice(stream, BATCH_SIZE)):
        changed = _import_batch(connection, batch, report, actor=actor, source=source, now=clock())
        if on_status_change is not None:
            for address, status in changed:
                on_status_change(address, status)
        if progress is not None:
            progress(len(batch))
    return report


def _import_batch(
    connection: Connection,
    batch: list[Record],
    report: ImportReport,
    *,
    actor: str,
    source: str,
    now: datetime,
) -> list[tuple[str, Status]]:
    addresses = [r.data.address for r in batch if r.data is not None]
    existing = {
        row.address: row for row in connection.execute(sa.select(_ENTRIES).where(_ENTRIES.c.address.in_(addresses)))
    }
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    status_changes: list[tuple[str, Status]] = []
    for record in batch:
        data = record.data
        assert data is not None
        row = existing.get(data.address)
        if row is None:
            inserts.append({**row_values(data, now, record.search_text), "created_at": now})
            continue
        if _compared(row) == _compared(data):  # one C call each: the common case of a re-import
            diff = {}
        else:
            diff = {f: [getattr(row, f), getattr(data, f)] for f in _COMPARED if getattr(row, f) != getattr(data, f)}
        action = "updated"
        status = Status(row.status)
        if record.sets_status and data.status is not status:
            try:
                action = check_transition(data.address, status, data.status)
            except InvalidTransition as exc:
                report.rejected.append(Rejection(record.line, str(exc)))
                continue
            diff["status"] = [str(status), str(data.status)]
            status_changes.append((data.address, data.status))
        elif data.status is not status:
            data = replace(data, status=status)  # the file says nothing of the status: ours stands
        if not diff:
            report.unchanged += 1
            continue
        updates.append({**row_values(data, now, record.search_text), "_id": row.id})
        history.append(_change(row.id, now, actor, action, source, jsonable_diff(diff)))
    if inserts:
        # A plain executemany, then the new ids by address: RETURNING over a batch makes the drivers build one huge
        # statement, several times slower on PostgreSQL.
        _insert_many(connection, _ENTRIES, inserts)
        created = [row["address"] for row in inserts]
        found = connection.execute(sa.select(_ENTRIES.c.address, _ENTRIES.c.id).where(_ENTRIES.c.address.in_(created)))
        ids = {address: entry_id for address, entry_id in found}
        history.extend(_change(ids[address], now, actor, "created", source, None) for address in created)
        report.created += len(inserts)
    if updates:
        columns: dict[str, Any] = {name: sa.bindparam(name) for name in updates[0] if name != "_id"}
        update = sa.update(_ENTRIES).where(_ENTRIES.c.id == sa.bindparam("_id")).values(columns)
        connection.execute(update, updates)
        report.updated += len(updates)
    if history:
        _insert_many(connection, _CHANGES, history)
    return status_changes


def _insert_many(connection: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """``INSERT`` many rows of the same keys through the driver's executemany.

    Only the columns whose type converts values (timestamps, JSON, booleans on some databases) go through
    SQLAlchemy's converters; going through ``Connection.execute`` costs more than SQLite's own work per row.
    """
    keys = list(rows[0])
    dialect = connection.dialect
    compiled = sa.insert(table).inline().compile(dialect=dialect, column_keys=keys)  # inline: no RETURNING
    converters = [(k, f) for k in keys if (f := _converter(table.c[k].type, dialect)) is not None]
    if converters:
        rows = [{**row, **{k: f(row[k]) for k, f in converters}} for row in rows]
    if compiled.positional:
        names = compiled.positiontup or []
        connection.exec_driver_sql(str(compiled), [tuple(row[n] for n in names) for row in rows])
    else:
        connection.exec_driver_sql(str(compiled), rows)


def _change(
    entry_id: int, now: datetime, actor: str, action: str, source: str, changes: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "entry_id": entry_id,
        "at": now,
        "actor": actor,
        "action": action,
        "source": source,
        "reason": None,
        "changes": changes,
    }


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _converter(column_type: Any, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
    if isinstance(column_type, sa.JSON):  # drivers differ on JSON parameters; JSON text works on all of them
        return _json_text
    processor: Callable[[Any], Any] | None = column_type.bind_processor(dialect)
    return processor
