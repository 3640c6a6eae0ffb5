"""The append-only event log: appends serialised on the chain head, signed checkpoints, lookups.

Appends take the one row of ``archive_head`` first, with ``UPDATE … SET sequence = sequence + n … RETURNING``:
on PostgreSQL that row lock makes every other appender (any process, any node) wait until this transaction commits,
then read the new head; on SQLite the UPDATE takes the database's single write lock before anything is read (so a
concurrent writer can never invalidate what we read). The events, their hashes and the new head are written in the
same transaction: a failed append leaves no trace and no gap, and sequences stay 1, 2, 3, … without holes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.engine import Engine

from mssecure.archive.checkpoint import Checkpoint, sign_checkpoint
from mssecure.archive.merkle import MerkleFrontier
from mssecure.archive.models import ArchiveCheckpointRecord, ArchiveEventRecord, ArchiveHead
from mssecure.archive.records import (
    ArchivedEvent,
    ArchiveError,
    canonical_event,
    canonical_json,
    event_hash,
    format_time,
)
from mssecure.db import utcnow
from mssecure.smtp.events import Event

__all__ = ["MAX_FIELD", "Archive", "Head"]

MAX_FIELD = 4000  # characters kept of a free-text field (a reason, a reply); longer values are clipped before hashing
_MAX_SHORT = 998  # addresses, identifiers, Message-IDs (RFC 5322 §2.1.1: a line is at most 998 characters)

_events = cast(sa.Table, ArchiveEventRecord.__table__)
_head = cast(sa.Table, ArchiveHead.__table__)
# The three statements of every append, built once (the relay appends for every message).
_TAKE = (
    sa.update(_head)
    .where(_head.c.id == 1)
    .values(sequence=_head.c.sequence + sa.bindparam("count", type_=sa.Integer()))
    .returning(_head.c.sequence, _head.c.hash, _head.c.frontier)
)
_INSERT_EVENTS = sa.insert(_events)
_ADVANCE = (
    sa.update(_head)
    .where(_head.c.id == 1)
    .values(hash=sa.bindparam("new_hash", type_=_head.c.hash.type),
            frontier=sa.bindparam("new_frontier", type_=_head.c.frontier.type))
)  # fmt: skip
_checkpoints = cast(sa.Table, ArchiveCheckpointRecord.__table__)


def _clean(value: str | None, limit: int = _MAX_SHORT) -> str | None:
    """A value the archive can store and hash as is: no NUL (PostgreSQL refuses it in text), valid UTF-8 (no lone
    surrogate), at most ``limit`` characters. Applied before hashing, so the stored value is the hashed value."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value


@dataclass(frozen=True)
class Head:
    """The end of the chain: the last sequence (0: empty), its hash, and the Merkle root of the events so far."""

    sequence: int
    hash: str
    root: str


class Archive:
    """The archive of one operator, on its database.

    ``key``: the operator's Ed25519 archive key (``KeyStore.load("archive")``), needed by ``checkpoint`` only;
    ``origin``: the operator's main domain, named in every checkpoint.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        key: ed25519.Ed25519PrivateKey | None = None,
        origin: str = "",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.key = key
        self.origin = origin
        self.clock = clock

    # -- writing

    def __call__(self, event: Event) -> None:
        """The archive as an ``EventSink``: ``LogSink(forward=archive)``."""
        self.append(event)

    def append(self, event: Event) -> int:
        """Archive one event; returns its sequence number."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[Event], *, connection: sa.Connection | None = None) -> list[int]:
        """Archive events in one transaction, in the order given; returns their sequence numbers.

        With ``connection``, the events are written in the caller's open transaction (the relay's queue writes its
        rows and the events about them together: both commit, or neither does); else in a transaction of their own.
        """
        batch = list(events)
        if not batch:
            return []
        if connection is not None:
            return self._append(connection, batch)
        with self.engine.begin() as own:
            return self._append(own, batch)

    def _append(self, connection: sa.Connection, batch: list[Event]) -> list[int]:
        taken = connection.execute(_TAKE, {"count": len(batch)}).one_or_none()
        if taken is None:
            raise ArchiveError("the archive has no chain head (was the database created by `mssecure db upgrade`?)")
        first = taken.sequence - len(batch) + 1
        prev = taken.hash
        try:
            frontier = MerkleFrontier.from_bytes(first - 1, taken.frontier)
        except ValueError:
            raise ArchiveError("the archive's chain head is damaged (run `mssecure archive verify`)") from None
        rows = []
        for sequence, event in enumerate(batch, start=first):
            row = self._row(sequence, event, prev)
            prev = row["hash"]
            frontier.append_leaf_hash(bytes.fromhex(prev))
            rows.append(row)
        connection.execute(_INSERT_EVENTS, rows)
        connection.execute(_ADVANCE, {"new_hash": prev, "new_frontier": frontier.to_bytes()})
        return list(range(first, first + len(batch)))

    @staticmethod
    def _row(sequence: int, event: Event, prev: str) -> dict[str, Any]:
        time = event.time
        if time.tzinfo is None:
            raise ValueError("naive datetime given to the archive")  # a bug of the caller, not an operator error
        recipients = [_clean(r) or "" for r in event.recipients]
        row: dict[str, Any] = {
            "sequence": sequence,
            "time": time,
            "type": _clean(event.type) or "",
            "outcome": _clean(event.outcome) or "",
            "actor": _clean(event.actor),
            "peer": _clean(event.peer),
            "queue_id": _clean(event.queue_id),
            "message_id": _clean(event.message_id),
            "sha256": _clean(event.sha256, 64),
            "sender": _clean(event.sender),
            "recipients": canonical_json(recipients),
            "reason": _clean(event.reason, MAX_FIELD),
            "reply": _clean(event.reply, MAX_FIELD),
            "prev_hash": prev,
        }
        row["hash"] = event_hash(
            canonical_event(
                sequence,
                format_time(time),
                row["type"],
                row["outcome"],
                row["actor"],
                row["peer"],
                row["queue_id"],
                row["message_id"],
                row["sha256"],
                row["sender"],
                row["recipients"],
                row["reason"],
                row["reply"],
                prev,
            )
        )
        return row

    def checkpoint(self) -> Checkpoint:
        """Sign and store a checkpoint of the archive as it is now (an empty archive too)."""
        if self.key is None:
            raise ArchiveError("no archive key to sign a checkpoint with")
        with self.engine.begin() as connection:
            head = self._read_head(connection)
            if head.sequence:
                last = connection.execute(
                    sa.select(_events.c.hash).where(_events.c.sequence == head.sequence)
                ).scalar_one_or_none()
                if last != head.hash:
                    raise ArchiveError(
                        f"the chain head does not match event {head.sequence}: refusing to sign a checkpoint "
                        "(run `mssecure archive verify`)"
                    )
            checkpoint = sign_checkpoint(
                self.key, sequence=head.sequence, hash=head.hash, root=head.root, time=self.clock(), origin=self.origin
            )
            values = checkpoint.to_json()
            values.pop("id")
            values["time"] = checkpoint.time
            stored = connection.execute(
                sa.insert(_checkpoints).values(values).returning(_checkpoints.c.id)
            ).scalar_one()
        return replace(checkpoint, id=stored)

    # -- reading

    @staticmethod
    def _read_head(connection: sa.Connection) -> Head:
        row = connection.execute(sa.select(_head).where(_head.c.id == 1)).one_or_none()
        if row is None:
            raise ArchiveError("the archive has no chain head (was the database created by `mssecure db upgrade`?)")
        try:
            root = MerkleFrontier.from_bytes(row.sequence, row.frontier).root().hex()
        except ValueError:
            raise ArchiveError("the archive's chain head is damaged (run `mssecure archive verify`)") from None
        return Head(row.sequence, row.hash, root)

    def head(self) -> Head:
        with self.engine.connect() as connection:
            return self._read_head(connection)

    def size(self) -> int:
        """The number of events archived (the chain head's sequence)."""
        with self.engine.connect() as connection:
            found = connection.execute(sa.select(_head.c.sequence).where(_head.c.id == 1)).scalar_one_or_none()
        return int(found or 0)

    def get(self, sequence: int) -> ArchivedEvent | None:
        found = list(self._select(sa.select(_events).where(_events.c.sequence == sequence)))
        return found[0] if found else None

    def history(self, message_id: str) -> list[ArchivedEvent]:
        """Every event about a message: those naming its Message-ID (with or without angle brackets), and those
        naming the queue ids these events name (a delivery, a deferral of the same queued message)."""
        wanted = {message_id, message_id.strip("<>"), f"<{message_id.strip('<>')}>"}
        queue_ids = (
            sa.select(_events.c.queue_id)
            .where(_events.c.message_id.in_(wanted), _events.c.queue_id.is_not(None))
            .scalar_subquery()
        )
        query = (
            sa.select(_events)
            .where(sa.or_(_events.c.message_id.in_(wanted), _events.c.queue_id.in_(queue_ids)))
            .order_by(_events.c.sequence)
        )
        return list(self._select(query))

    def search(
        self,
        *,
        address: str | None = None,
        message_id: str | None = None,
        type: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[ArchivedEvent]:
        """Events in sequence order matching every criterion given. ``address``: as sender, recipient or actor
        (case-insensitive); ``type``: exact, or a prefix ending in ``.`` (``submission.``); ``since`` inclusive,
        ``until`` exclusive."""
        query = sa.select(_events).order_by(_events.c.sequence)
        if address:
            needle = address.strip().lower()
            quoted = json.dumps(needle, ensure_ascii=False)
            query = query.where(
                sa.or_(
                    sa.func.lower(_events.c.sender) == needle,
                    sa.func.lower(_events.c.actor) == needle,
                    sa.func.lower(_events.c.recipients).contains(quoted, autoescape=True),
                )
            )
        if message_id:
            query = query.where(_events.c.message_id.in_({message_id, f"<{message_id.strip('<>')}>"}))
        if type:
            if type.endswith("."):
                query = query.where(_events.c.type.startswith(type, autoescape=True))
            else:
                query = query.where(_events.c.type == type)
        if since is not None:
            query = query.where(_events.c.time >= since)
        if until is not None:
            query = query.where(_events.c.time < until)
        if limit is not None:
            query = query.limit(limit)
        yield from self._select(query)

    def checkpoints(self) -> list[Checkpoint]:
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(_checkpoints).order_by(_checkpoints.c.tree_size, _checkpoints.c.id))
            return [checkpoint_from_row(row._mapping) for row in rows]

    def _select(self, query: sa.Select[Any]) -> Iterator[ArchivedEvent]:
        with self.engine.connect() as connection:
            for row in connection.execute(query.execution_options(yield_per=1000)):
                yield event_from_row(row._mapping)


def event_from_row(row: Any) -> ArchivedEvent:
    recipients: Sequence[str]
    try:
        recipients = json.loads(row["recipients"])
    except ValueError:
        recipients = [row["recipients"]]  # edited into something else: shown as it is (verify reports it)
    return ArchivedEvent(
        sequence=row["sequence"],
        time=row["time"],
        type=row["type"],
        outcome=row["outcome"],
        actor=row["actor"],
        peer=row["peer"],
        queue_id=row["queue_id"],
        message_id=row["message_id"],
        sha256=row["sha256"],
        sender=row["sender"],
        recipients=tuple(str(r) for r in recipients) if isinstance(recipients, list) else (str(recipients),),
        reason=row["reason"],
        reply=row["reply"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


def checkpoint_from_row(row: Any) -> Checkpoint:
    return Checkpoint(
        sequence=row["sequence"],
        tree_size=row["tree_size"],
        hash=row["hash"],
        root=row["root"],
        time=row["time"],
        origin=row["origin"],
        key_id=row["key_id"],
        signature=row["signature"],
        id=row["id"],
    )
