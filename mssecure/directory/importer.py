"""Import of directory files: an idempotent upsert keyed on the lowercased address.

The file is streamed and written in batches inside one transaction (all or nothing; ``dry_run`` rolls it back), so
the file is never held in memory: what is kept across batches is an 8-byte digest per address seen (about 67 bytes
each in a Python set, 35 MiB for the 540,000-line national file), to count duplicate lines (the first occurrence of
an address wins).

Each line ends up in exactly one bucket of the ``ImportReport``: created, updated, unchanged, duplicate or rejected
(with its line number and reason). Every created or updated entry gets a history row naming the import.

The lines come as ``Chunk``s (``formats.read_chunks``): each accepted entry already a row of plain values, made by
the parsing workers for a national extraction. New entries are written with one ``COPY`` per batch on PostgreSQL
and one ``executemany`` on SQLite, and their history rows by one ``INSERT … SELECT`` per batch; a re-import fetches
the stored rows and compares each with the file's as one tuple.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from mssecure.db import utcnow
from mssecure.directory.formats import Accepted, Chunk, Record, chunked
from mssecure.directory.models import Entry, EntryChange
from mssecure.directory.records import DATA_FIELDS, ROW_FIELDS, Status
from mssecure.directory.service import check_transition, jsonable_diff
from mssecure.errors import InvalidTransition

if TYPE_CHECKING:
    import psycopg

__all__ = ["ImportReport", "Rejection", "import_chunks", "import_records"]

BATCH_SIZE = 1000
_ENTRIES = cast(sa.Table, Entry.__table__)
_CHANGES = cast(sa.Table, EntryChange.__table__)
_INSERTED = (*ROW_FIELDS, "created_at", "updated_at")  # the columns a new entry is written with, in this order
_STORED = len(ROW_FIELDS) - 1  # a row without its search text: what a re-import compares with the stored one
_STATUS = ROW_FIELDS.index("status")
# The fields whose changes a history row records (the status apart), with their place in a row.
_COMPARED = tuple((i, f) for i, f in enumerate(DATA_FIELDS) if f not in ("address", "status"))
_TARGET = f"{_ENTRIES.name} ({', '.join(_INSERTED)})"  # names from the model: SQL text made of constants only
_COPY_SQL = f"COPY {_TARGET} FROM STDIN"
_UPDATE = (
    sa.update(_ENTRIES)
    .where(_ENTRIES.c.id == sa.bindparam("_id"))
    .values({name: sa.bindparam(name) for name in (*ROW_FIELDS, "updated_at")})
)


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
    rejected: list[Rejection] = field(default_factory=list)  # by line number

    def to_json(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "rejected": [{"line": r.line, "reason": r.reason} for r in self.rejected],
        }


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
    """``import_chunks`` of ``records`` (the ``EntryData`` of a file read with ``read_records``, or made by hand)."""
    return import_chunks(
        connection,
        chunked(records),
        actor=actor,
        source=source,
        clock=clock,
        progress=progress,
        on_status_change=on_status_change,
    )


def import_chunks(
    connection: Connection,
    chunks: Iterable[Chunk],
    *,
    actor: str,
    source: str,
    clock: Callable[[], datetime] = utcnow,
    progress: Callable[[int], None] | None = None,
    on_status_change: Callable[[str, Status], None] | None = None,
) -> ImportReport:
    """Upsert the lines of ``chunks`` through ``connection`` (inside the caller's transaction); what happened.

    ``progress`` is called with the number of entries handled after each batch; ``on_status_change`` with
    (address, new status) for each status a file changes, after it is written.
    """
    report = ImportReport()
    writer = _Writer(connection, report, actor=actor, source=source)
    for batch in _batches(chunks, report):
        changed = writer.write(batch, clock())
        if on_status_change is not None:
            for address, status in changed:
                on_status_change(address, status)
        if progress is not None:
            progress(len(batch))
    report.rejected.sort(key=attrgetter("line"))
    return report


def _batches(chunks: Iterable[Chunk], report: ImportReport) -> Iterator[list[Accepted]]:
    """The accepted lines in batches of ``BATCH_SIZE``, without the duplicates; rejections go to ``report``."""
    seen: set[int] = set()
    batch: list[Accepted] = []
    for chunk in chunks:
        report.rejected.extend(Rejection(line, reason) for line, reason in chunk.rejected)
        for accepted in chunk.accepted:
            digest = accepted[1]
            if digest in seen:
                report.duplicates += 1
                continue
            seen.add(digest)
            batch.append(accepted)
            if len(batch) == BATCH_SIZE:
                yield batch
                batch = []
    if batch:
        yield batch


def _addresses_in(postgresql: bool) -> sa.ColumnElement[bool]:
    """Entries whose address is in the list bound as ``addresses``: one parameter, not one per address."""
    if postgresql:
        return _ENTRIES.c.address == sa.any_(sa.bindparam("addresses", type_=sa.ARRAY(sa.String)))
    addresses = sa.func.json_each(sa.bindparam("addresses", type_=sa.JSON)).table_valued("value")
    return _ENTRIES.c.address.in_(sa.select(addresses.c.value))


class _Writer:
    """Writes batches of accepted lines through one connection: the statements, made once per import."""

    def __init__(self, connection: Connection, report: ImportReport, *, actor: str, source: str) -> None:
        self.connection = connection
        self.report = report
        self.actor = actor
        self.source = source
        dialect = connection.dialect
        self.postgresql = dialect.name == "postgresql"
        if self.postgresql:
            # The rows this transaction inserts have no statistics yet, so the planner would take the address
            # lookups for scans of a tiny table and scan a growing one for every batch; they are all unique-key
            # lookups.
            connection.execute(sa.text("SET LOCAL enable_seqscan = off"))
        else:  # SQLite, the only other database mssecure runs on: its driver's executemany, rows as they come
            self.insert_sql = f"INSERT INTO {_TARGET} VALUES ({', '.join('?' * len(_INSERTED))})"  # noqa: S608
        in_batch = _addresses_in(self.postgresql)
        self.select_stored = sa.select(_ENTRIES.c.id, *(_ENTRIES.c[f] for f in ROW_FIELDS[:_STORED])).where(in_batch)
        # The "created" history rows of a batch of new entries, written by the database from the entries.
        self.created_history = sa.insert(_CHANGES).from_select(
            ["entry_id", "at", "actor", "action", "source", "reason", "changes"],
            sa.select(
                _ENTRIES.c.id,
                sa.bindparam("at", type_=_CHANGES.c.at.type),
                sa.bindparam("actor", type_=_CHANGES.c.actor.type),
                sa.literal("created", _CHANGES.c.action.type),
                sa.bindparam("source", type_=_CHANGES.c.source.type),
                sa.null(),
                sa.null(),
            ).where(in_batch),  # no ORDER BY: PostgreSQL would walk the whole primary key to avoid a sort
        )
        # Into an empty directory every entry is new: no batch needs to look for stored ones. (Another writer adding
        # one of the file's addresses meanwhile makes the import fail on the unique address, as it would anyway.)
        self.empty = connection.execute(sa.select(_ENTRIES.c.id).limit(1)).first() is None
        # Timestamps are converted for the driver once per batch, as the column type converts them for the ORM.
        stamp_type = _ENTRIES.c.updated_at.type.dialect_impl(dialect)
        self.stamp: Callable[[datetime], Any] = stamp_type.bind_processor(dialect) or _same

    def write(self, batch: list[Accepted], now: datetime) -> list[tuple[str, Status]]:
        """Write one batch, stamped ``now``; the status changes it made, as (address, new status)."""
        report = self.report
        addresses = [accepted[2][0] for accepted in batch]
        if self.empty:
            stored = {}
        else:
            found = self.connection.execute(self.select_stored, {"addresses": addresses}).all()
            stored = {row[1]: row for row in found}
        if not stored:  # every entry of the batch is new
            self._insert([accepted[2] for accepted in batch], addresses, now)
            return []
        new: list[tuple[Any, ...]] = []
        updates: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        status_changes: list[tuple[str, Status]] = []
        for line, _digest, row, sets_status in batch:
            current = stored.get(row[0])
            if current is None:
                new.append(row)
                continue
            before = tuple(current[1:])
            if before == row[:_STORED]:  # one comparison: the common case of a re-import
                report.unchanged += 1
                continue
            diff = {name: [before[i], row[i]] for i, name in _COMPARED if before[i] != row[i]}
            action = "updated"
            status = Status(before[_STATUS])
            if sets_status and row[_STATUS] != status:
                try:
                    action = check_transition(row[0], status, Status(row[_STATUS]))
                except InvalidTransition as exc:
                    report.rejected.append(Rejection(line, str(exc)))
                    continue
                diff["status"] = [str(status), row[_STATUS]]
                status_changes.append((row[0], Status(row[_STATUS])))
            elif row[_STATUS] != status:
                row = (*row[:_STATUS], str(status), *row[_STATUS + 1 :])  # the file says nothing of it: ours stands
            if not diff:
                report.unchanged += 1
                continue
            updates.append({**dict(zip(ROW_FIELDS, row, strict=True)), "updated_at": now, "_id": current.id})
            history.append(self._change(current.id, now, action, jsonable_diff(diff)))
        if new:
            self._insert(new, [row[0] for row in new], now)
        if updates:
            self.connection.execute(_UPDATE, updates)
            report.updated += len(updates)
        if history:
            self.connection.execute(sa.insert(_CHANGES), history)
        return status_changes

    def _insert(self, rows: list[tuple[Any, ...]], addresses: list[str], now: datetime) -> None:
        """Insert new entries (rows in ``ROW_FIELDS`` order) and their "created" history rows."""
        stamp = self.stamp(now)
        if self.postgresql:
            self._copy(rows, (stamp, stamp))
        else:
            stamps = (stamp, stamp)
            self.connection.exec_driver_sql(self.insert_sql, [row + stamps for row in rows])
        history = {"at": now, "actor": self.actor, "source": self.source, "addresses": addresses}
        self.connection.execute(self.created_history, history)
        self.report.created += len(rows)

    def _copy(self, rows: list[tuple[Any, ...]], stamps: tuple[Any, Any]) -> None:
        """PostgreSQL: ``COPY`` the rows in, through the transaction's own connection."""
        driver = cast("psycopg.Connection[Any]", self.connection.connection.driver_connection)
        with driver.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
            for row in rows:
                copy.write_row(row + stamps)

    def _change(self, entry_id: int, now: datetime, action: str, changes: dict[str, Any]) -> dict[str, Any]:
        return {
            "entry_id": entry_id,
            "at": now,
            "actor": self.actor,
            "action": action,
            "source": self.source,
            "reason": None,
            "changes": changes,
        }


def _same(value: Any) -> Any:
    return value
