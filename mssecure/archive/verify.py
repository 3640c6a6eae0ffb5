"""Verification of the whole archive: the hash chain, the Merkle tree, the signed checkpoints, the chain head.

One pass over the events in sequence order, streamed (a server-side cursor on PostgreSQL) inside one read-only
snapshot, so that appends going on meanwhile neither disturb nor escape it. Each event's hash is recomputed from
its fields and its ``prev_hash``; its ``prev_hash`` must be the previous event's hash and its sequence the next
integer; the Merkle tree grows by one leaf (keeping only its O(log n) subtree roots); at each checkpoint's tree size,
the chain hash and the Merkle root must be the signed ones.

The first discrepancy stops the pass and is diagnosed (queries by hash locate where a row came from) as one of:

    edited      an event's fields do not give its hash (or the hash an event after it chains to, when the hash was
                recomputed too)
    missing     sequence numbers are missing (rows deleted), or rows were deleted and the later ones renumbered
    reordered   an event stands at another event's place (rows swapped)
    inserted    rows that the chain does not go through (forged rows, or rows appended behind mssecure's back)
    truncated   a checkpoint or the chain head vouches for events that are no longer there
    broken      the chain breaks and none of the above explains it
    checkpoint  a checkpoint's signature is not the archive key's, or the events do not give its signed hash/root
    head        the chain head does not match the last event

Findings name the first bad sequence number; checkpoint signatures are all checked, whatever the chain.
"""

from __future__ import annotations

import hashlib
import time as _time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any, cast

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.engine import Engine

from mssecure.archive.checkpoint import Checkpoint
from mssecure.archive.log import checkpoint_from_row, event_from_row
from mssecure.archive.merkle import EMPTY_ROOT, MerkleFrontier
from mssecure.archive.models import ArchiveCheckpointRecord, ArchiveEventRecord, ArchiveHead
from mssecure.archive.records import GENESIS_HASH, ArchivedEvent, canonical_event, format_time

__all__ = ["Finding", "VerifyReport", "verify_archive"]

_events = cast(sa.Table, ArchiveEventRecord.__table__)
_head = cast(sa.Table, ArchiveHead.__table__)
_checkpoints = cast(sa.Table, ArchiveCheckpointRecord.__table__)

_BATCH = 20_000  # rows fetched at a time
_RENUMBER_WINDOW = 1000  # how far a renumbered row's original sequence is looked for when diagnosing


@dataclass(frozen=True)
class Finding:
    """What is wrong, from which sequence number on."""

    sequence: int
    kind: str  # edited, missing, reordered, inserted, truncated, broken, checkpoint, head
    detail: str
    checkpoint: int | None = None  # the checkpoint concerned (its id)

    def __str__(self) -> str:
        return f"sequence {self.sequence}: {self.kind}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "kind": self.kind, "detail": self.detail, "checkpoint": self.checkpoint}


@dataclass
class VerifyReport:
    events: int = 0  # events verified (in chain order, up to the first finding)
    last_sequence: int = 0
    last_hash: str = GENESIS_HASH
    root: str = EMPTY_ROOT.hex()  # Merkle root of the verified events
    checkpoints: int = 0  # checkpoints stored
    checkpoints_matched: int = 0  # with a valid signature and the hash and root the events give
    latest_checkpoint: Checkpoint | None = None  # the newest of those
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first(self) -> Finding | None:
        return min(self.findings, key=lambda f: f.sequence) if self.findings else None

    def to_json(self) -> dict[str, Any]:
        latest = self.latest_checkpoint
        return {
            "ok": self.ok,
            "events": self.events,
            "last_sequence": self.last_sequence,
            "last_hash": self.last_hash,
            "root": self.root,
            "checkpoints": self.checkpoints,
            "checkpoints_matched": self.checkpoints_matched,
            "latest_checkpoint": latest.to_json() if latest else None,
            "first": self.first.to_json() if self.first else None,
            "findings": [f.to_json() for f in sorted(self.findings, key=lambda f: f.sequence)],
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events / self.seconds) if self.seconds > 0 else None,
        }


def _time_text(dialect: str) -> sa.ColumnElement[Any] | None:
    """The canonical text of the event time, computed by the database (Python's datetime formatting would cost more
    than the rest of the verification); None: format in Python."""
    if dialect == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", _events.c.time), 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
    if dialect == "sqlite":  # stored by SQLAlchemy as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC: see db.UTCDateTime)
        time = sa.type_coerce(_events.c.time, sa.Text)
        return sa.func.substr(time, 1, 10) + "T" + sa.func.substr(time, 12) + "+00:00"
    return None


def _rows(connection: sa.Connection, batch: int, until: int | None) -> Generator[Sequence[Any], None, None]:
    """The events up to ``until`` as plain tuples in sequence order, ``batch`` at a time, the time as canonical text.

    Read with the driver's own cursor (a named, server-side one on PostgreSQL): SQLAlchemy's rows would cost about
    as much as the hashing."""
    columns: list[sa.ColumnElement[Any]] = list(
        _events.c
    )  # sequence, time, type, …, prev_hash, hash: the table's order
    time_text = _time_text(connection.dialect.name)
    if time_text is None:  # another database: SQLAlchemy's rows, the time formatted here
        query = sa.select(*columns).order_by(_events.c.sequence)
        if until is not None:
            query = query.where(_events.c.sequence <= until)
        with connection.execution_options(stream_results=True, yield_per=batch).execute(query) as result:
            for partition in result.partitions():
                yield [(r[0], format_time(r[1]), *r[2:]) for r in partition]
        return
    columns[1] = time_text
    query = sa.select(*columns).order_by(_events.c.sequence)
    if until is not None:
        query = query.where(_events.c.sequence <= sa.literal(until, sa.BigInteger))
    sql = str(query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
    driver = connection.connection.driver_connection
    assert driver is not None
    if connection.dialect.name == "postgresql":
        cursor = driver.cursor(name="mssecure_archive_verify")  # server-side: rows arrive as they are fetched
        cursor.itersize = batch
    else:
        cursor = driver.cursor()
    try:
        cursor.execute(sql)
        while partition := cursor.fetchmany(batch):
            yield partition
    finally:
        cursor.close()


def verify_archive(
    engine: Engine,
    public_key: ed25519.Ed25519PublicKey,
    *,
    progress: Callable[[int], None] | None = None,
    batch: int = _BATCH,
    kept: Sequence[Checkpoint] = (),
) -> VerifyReport:
    """Verify everything; ``progress`` is called with the number of events done since its last call.

    ``kept``: checkpoints an auditor kept outside the database (``archive checkpoint --json``). Each must be validly
    signed, still be in the database, and be matched by the events like the stored ones: whoever can rewrite the
    database can also delete its checkpoints, not the copies kept elsewhere."""
    started = _time.perf_counter()
    report = VerifyReport()
    options: dict[str, Any] = {}
    if engine.dialect.name == "postgresql":
        options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    with engine.connect().execution_options(**options) as connection, connection.begin():
        checkpoints = [
            checkpoint_from_row(row._mapping)
            for row in connection.execute(sa.select(_checkpoints).order_by(_checkpoints.c.tree_size, _checkpoints.c.id))
        ]
        report.checkpoints = len(checkpoints)
        at_size: dict[int, list[Checkpoint]] = {}
        for checkpoint in checkpoints:
            problem = checkpoint.signature_problem(public_key)
            if problem is None and checkpoint.tree_size != checkpoint.sequence:
                problem = f"tree size {checkpoint.tree_size} is not its sequence {checkpoint.sequence}"
            if problem is None:
                at_size.setdefault(checkpoint.tree_size, []).append(checkpoint)
            else:
                report.findings.append(
                    Finding(checkpoint.sequence, "checkpoint", f"checkpoint #{checkpoint.id}: {problem}", checkpoint.id)
                )
        stored = {c.signature for c in checkpoints}
        for checkpoint in kept:
            name = f"the kept checkpoint of sequence {checkpoint.sequence}"
            problem = checkpoint.signature_problem(public_key)
            if problem is not None:
                report.findings.append(Finding(checkpoint.sequence, "checkpoint", f"{name}: {problem}"))
                continue
            if checkpoint.signature not in stored:
                report.findings.append(
                    Finding(
                        checkpoint.sequence,
                        "checkpoint",
                        f"{name} (signed at {format_time(checkpoint.time)}) is no longer in the database: deleted",
                    )
                )
                at_size.setdefault(checkpoint.tree_size, []).append(checkpoint)  # still, the events must match it
        # Read after the checkpoints: every checkpoint is then within the head. Only the events up to the head are
        # walked, so that appends committed meanwhile (SQLite has no snapshot across statements) are left out.
        head = connection.execute(sa.select(_head).where(_head.c.id == 1)).one_or_none()
        before = len(report.findings)
        _walk(connection, report, at_size, progress, batch, None if head is None else head.sequence)
        if len(report.findings) == before:  # the pass went to the end
            _check_end(connection, report, at_size, head)
    report.seconds = _time.perf_counter() - started
    return report


def _walk(
    connection: sa.Connection,
    report: VerifyReport,
    at_size: dict[int, list[Checkpoint]],
    progress: Callable[[int], None] | None,
    batch: int,
    until: int | None,
) -> None:
    """The chain pass: stops at the first event that does not verify and records the diagnosis."""
    if 0 in at_size:  # checkpoints of the empty archive
        _match_checkpoints(report, at_size[0], GENESIS_HASH, EMPTY_ROOT.hex(), 0)
    stack: list[bytes] = []  # the Merkle frontier (see merkle.MerkleFrontier), inlined for speed
    with closing(_rows(connection, batch, until)) as partitions:
        broken = _walk_rows(partitions, report, at_size, progress, stack)
    if broken is not None:  # diagnosed once the stream is closed: the queries need the connection
        seq, expected, prev = broken
        report.findings.append(_diagnose(connection, seq, expected, prev))


def _walk_rows(
    partitions: Iterator[Sequence[Any]],
    report: VerifyReport,
    at_size: dict[int, list[Checkpoint]],
    progress: Callable[[int], None] | None,
    stack: list[bytes],
) -> tuple[int, int, str] | None:
    """The loop of ``_walk``; returns (sequence found, sequence expected, verified hash before it) at a break."""
    sha256 = hashlib.sha256
    canonical = canonical_event
    sizes = set(at_size)
    expected = 1
    prev = GENESIS_HASH
    for partition in partitions:
        for row in partition:
            seq, time, type_, outcome, actor, peer, qid, message_id, digest, sender, rcpt, reason, reply, p, h = row
            if seq != expected or p != prev:
                _finish(report, expected - 1, prev, stack)
                return seq, expected, prev
            try:
                text = canonical(seq, time, type_, outcome, actor, peer, qid, message_id, digest, sender, rcpt,
                                 reason, reply, p)  # fmt: skip
            except (TypeError, ValueError):  # a number stored in a text column (SQLite keeps what it is given)
                text = ""
            leaf = sha256(b"\x00" + text.encode()).digest()
            prev = leaf.hex()
            if prev != h:
                _finish(report, expected - 1, p, stack)
                report.findings.append(
                    Finding(seq, "edited", f"event {seq}'s fields do not give its hash (a field was changed)")
                )
                return None
            size = expected - 1
            while size & 1:
                leaf = sha256(b"\x01" + stack.pop() + leaf).digest()
                size >>= 1
            stack.append(leaf)
            if expected in sizes:
                root = MerkleFrontier(expected, stack).root().hex()
                if not _match_checkpoints(report, at_size[expected], prev, root, expected):
                    _finish(report, expected, prev, stack)
                    return None
            expected += 1
        if progress is not None:
            progress(len(partition))
    _finish(report, expected - 1, prev, stack)
    return None


def _finish(report: VerifyReport, last: int, last_hash: str, stack: list[bytes]) -> None:
    report.events = report.last_sequence = last
    report.last_hash = last_hash
    report.root = MerkleFrontier(last, stack).root().hex()


def _name(checkpoint: Checkpoint) -> str:
    return f"checkpoint #{checkpoint.id}" if checkpoint.id is not None else "the kept checkpoint"


def _match_checkpoints(report: VerifyReport, checkpoints: list[Checkpoint], chain: str, root: str, size: int) -> bool:
    for checkpoint in checkpoints:
        name = _name(checkpoint)
        if checkpoint.hash != chain or checkpoint.root != root:
            verified = report.latest_checkpoint.tree_size if report.latest_checkpoint else 0
            what = "Merkle root" if checkpoint.hash == chain else "chain hash and Merkle root"
            report.findings.append(
                Finding(
                    verified + 1,
                    "checkpoint",
                    f"events {verified + 1}..{size} do not give the {what} {name} signed "
                    f"at {format_time(checkpoint.time)}: they were rewritten (hashes recomputed) after it",
                    checkpoint.id,
                )
            )
            return False
        report.checkpoints_matched += 1
        report.latest_checkpoint = checkpoint
    return True


def _check_end(
    connection: sa.Connection, report: VerifyReport, at_size: dict[int, list[Checkpoint]], head: Any
) -> None:
    """After a clean pass: nothing signed beyond the last event, a chain head that is the last event's, and no event
    beyond the head but those appended since it was read."""
    last = report.last_sequence
    beyond = [c for size, group in at_size.items() if size > last for c in group]
    if beyond:
        furthest = max(beyond, key=lambda c: c.tree_size)
        report.findings.append(
            Finding(
                last + 1,
                "truncated",
                f"the archive ends at event {last} but {_name(furthest)} (signed at "
                f"{format_time(furthest.time)}) vouches for {furthest.tree_size} events: events "
                f"{last + 1}..{furthest.tree_size} are gone",
                furthest.id,
            )
        )
        return
    if head is None:
        report.findings.append(Finding(last + 1, "head", "the chain head row is missing"))
    elif head.sequence > last:
        report.findings.append(
            Finding(
                last + 1,
                "truncated",
                f"the archive ends at event {last} but the chain head records "
                f"{head.sequence} events: events {last + 1}..{head.sequence} are gone",
            )
        )
    elif head.sequence < last:
        report.findings.append(
            Finding(
                head.sequence + 1,
                "inserted",
                f"events {head.sequence + 1}..{last} were added after the chain "
                f"head (event {head.sequence}): not appended by mssecure",
            )
        )
    elif head.hash != report.last_hash:
        report.findings.append(
            Finding(last, "edited", f"event {last} is not the one the chain head records: edited, its hash recomputed")
        )
    elif _frontier_root(head) != report.root:
        report.findings.append(Finding(last, "head", "the chain head's Merkle frontier does not match the events"))
    else:
        beyond_head = connection.execute(sa.select(sa.func.max(_events.c.sequence))).scalar_one_or_none()
        if beyond_head is not None and beyond_head > last:
            now = connection.execute(sa.select(_head.c.sequence).where(_head.c.id == 1)).scalar_one_or_none()
            if now is None or now < beyond_head:  # not appends committed since the head was read
                report.findings.append(
                    Finding(
                        last + 1,
                        "inserted",
                        f"events {last + 1}..{beyond_head} are beyond the chain head (event "
                        f"{last}): not appended by mssecure",
                    )
                )


def _frontier_root(head: Any) -> str | None:
    try:
        return MerkleFrontier.from_bytes(head.sequence, head.frontier).root().hex()
    except ValueError:  # not the shape of a frontier of that size
        return None


def _diagnose(connection: sa.Connection, seq: int, expected: int, prev: str) -> Finding:
    """Why the event at ``seq`` does not follow event ``expected - 1`` (whose verified hash is ``prev``)."""
    if not isinstance(seq, int):  # SQLite keeps whatever it is given, even in an integer column
        return Finding(expected, "edited", f"the event after {expected - 1} has a sequence number that is no number")
    if seq != expected:
        count = seq - expected
        span = f"event {expected} is" if count == 1 else f"events {expected}..{seq - 1} ({count}) are"
        return Finding(expected, "missing", f"{span} missing (deleted)")
    archived = _full_event(connection, seq)
    assert archived is not None  # read in the same snapshot
    stored_prev = archived.prev_hash

    def sequence_of(column: sa.ColumnElement[Any], value: str, *, after: int | None = None) -> int | None:
        query = sa.select(sa.func.min(_events.c.sequence)).where(column == value)
        if after is not None:
            query = query.where(_events.c.sequence > after)
        found = connection.execute(query).scalar_one_or_none()
        return int(found) if found is not None else None

    chained_to = sequence_of(_events.c.hash, stored_prev)
    if chained_to is not None and chained_to > seq:
        return Finding(seq, "reordered", f"event {seq} is out of place: it follows event {chained_to} (rows swapped)")
    if chained_to is not None and chained_to < seq - 1:
        return Finding(
            chained_to + 1,
            "inserted",
            f"events {chained_to + 1}..{seq - 1} are not part of the chain: event {seq} follows event {chained_to} "
            "(rows inserted, the later ones renumbered)",
        )
    successor = sequence_of(_events.c.prev_hash, prev, after=seq)
    if successor is not None:
        return Finding(
            seq, "inserted", f"events {seq}..{successor - 1} are not part of the chain: event {successor} follows "
            f"event {seq - 1}"
        )  # fmt: skip
    if replace(archived, prev_hash=prev).computed_hash() == archived.hash:
        return Finding(seq, "edited", f"event {seq}'s prev_hash was changed")
    if archived.computed_hash() == archived.hash and seq > 1:
        return Finding(
            seq - 1,
            "edited",
            f"event {seq - 1} is not the event {seq} chains to: it was edited and its hash recomputed",
        )
    for original in range(seq + 1, seq + _RENUMBER_WINDOW):
        if archived.computed_hash(original) == archived.hash:
            count = original - seq
            return Finding(
                seq, "missing", f"{count} event(s) from {seq} on were deleted and the later ones renumbered "
                f"(event {seq} was event {original})"
            )  # fmt: skip
    return Finding(seq, "broken", f"event {seq} does not follow event {seq - 1} (its prev_hash is another hash)")


def _full_event(connection: sa.Connection, sequence: int) -> ArchivedEvent | None:
    row = connection.execute(sa.select(_events).where(_events.c.sequence == sequence)).one_or_none()
    return event_from_row(row._mapping) if row is not None else None
