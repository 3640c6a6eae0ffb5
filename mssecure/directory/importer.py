"""Import of directory files: an idempotent upsert keyed on the lowercased address.

The file is streamed and written in batches inside one transaction (all or nothing; ``dry_run`` rolls it back), so
the national extraction (~540,000 lines) imports in bounded memory: what is kept across batches is one 8-byte digest
per address seen, to count duplicate lines (the first occurrence of an address wins).

Each line ends up in exactly one bucket of the ``ImportReport``: created, updated, unchanged, duplicate or rejected
(with its line number and reason). Every created or updated entry gets a history row naming the import.
"""

from __future__ import annotations

import hashlib
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
) -> ImportReport:
    """Upsert ``records`` through ``connection`` (inside the caller's transaction) and report what happened.

    ``progress`` is called with the number of records handled after each batch.
    """
    report = ImportReport()
    seen: set[int] = set()

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
        _import_batch(connection, batch, report, actor=actor, source=source, now=clock())
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
) -> None:
    addresses = [r.data.address for r in batch if r.data is not None]
    existing = {
        row.address: row for row in connection.execute(sa.select(_ENTRIES).where(_ENTRIES.c.address.in_(addresses)))
    }
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    for record in batch:
        data = record.data
        assert data is not None
        row = existing.get(data.address)
        if row is None:
            inserts.append({**row_values(data, now), "created_at": now})
            continue
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
        elif data.status is not status:
            data = replace(data, status=status)  # the file says nothing of the status: ours stands
        if not diff:
            report.unchanged += 1
            continue
        updates.append({**row_values(data, now), "_id": row.id})
        history.append(_change(row.id, now, actor, action, source, jsonable_diff(diff)))
    if inserts:
        statement = sa.insert(_ENTRIES).returning(_ENTRIES.c.id, sort_by_parameter_order=True)
        created = connection.execute(statement, inserts)
        for (entry_id,) in created:
            history.append(_change(entry_id, now, actor, "created", source, None))
        report.created += len(inserts)
    if updates:
        columns: dict[str, Any] = {name: sa.bindparam(name) for name in updates[0] if name != "_id"}
        update = sa.update(_ENTRIES).where(_ENTRIES.c.id == sa.bindparam("_id")).values(columns)
        connection.execute(update, updates)
        report.updated += len(updates)
    if history:
        connection.execute(sa.insert(_CHANGES), history)


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
