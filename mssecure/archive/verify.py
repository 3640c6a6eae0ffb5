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

Speed (docs/performance.md): rows are read as the driver's plain tuples, and an archive of more than one range
(``range_size`` events, 32,768 by default) is hashed by worker processes, one range each at a time, side by side. A
worker checks its own rows (their hashes, their links, their sequence numbers) and returns the Merkle frontier of its
range and the chain hash and frontier at each checkpoint size within it; ranges are aligned on a power of two, so
that a range's frontier is the right end of the archive's. This process takes the ranges in order, each only if it
begins exactly where the previous one ended, matches the checkpoints and stops where one pass would have stopped:
the findings and the report are the same as those of one pass (``_combine``).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import re
import threading
import time as _time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence, Set
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing import util as mp_util
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.engine import Engine

from mssecure.archive.checkpoint import Checkpoint
from mssecure.archive.log import checkpoint_from_row, event_from_row
from mssecure.archive.merkle import EMPTY_ROOT, MerkleFrontier
from mssecure.archive.models import ArchiveCheckpointRecord, ArchiveEventRecord, ArchiveHead
from mssecure.archive.records import GENESIS_HASH, ArchivedEvent, ArchiveError, canonical_event, format_time

__all__ = ["Finding", "VerifyReport", "verify_archive"]

_events = cast(sa.Table, ArchiveEventRecord.__table__)
_head = cast(sa.Table, ArchiveHead.__table__)
_checkpoints = cast(sa.Table, ArchiveCheckpointRecord.__table__)

_BATCH = 20_000  # rows fetched at a time
_RANGE = 1 << 15  # events per range of a worker process (a power of two: ranges are Merkle subtrees)
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f]+(-[0-9A-Fa-f]+)+")  # what pg_export_snapshot() returns
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


def _select_sql(dialect: sa.Dialect, after: int | None, until: int | None) -> str:
    """The SQL text, for the driver's own cursor, of the events ``after`` < sequence <= ``until`` (None: no bound) in
    sequence order, their columns in the table's order, the time as canonical text (SQLite and PostgreSQL only)."""
    time_text = _time_text(dialect.name)
    assert time_text is not None
    columns: list[sa.ColumnElement[Any]] = list(_events.c)  # sequence, time, type, …, prev_hash, hash
    columns[1] = time_text
    query = sa.select(*columns).order_by(_events.c.sequence)
    if after is not None:
        query = query.where(_events.c.sequence > sa.literal(after, sa.BigInteger))
    if until is not None:
        query = query.where(_events.c.sequence <= sa.literal(until, sa.BigInteger))
    return str(query.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _fetch(cursor: Any, sql: str, batch: int) -> Generator[Sequence[Any], None, None]:
    """The rows of ``sql``, ``batch`` at a time, as the driver's plain tuples; closes the cursor when done or closed."""
    try:
        cursor.execute(sql)
        while partition := cursor.fetchmany(batch):
            yield partition
    finally:
        cursor.close()


def _rows(connection: sa.Connection, batch: int, until: int | None) -> Generator[Sequence[Any], None, None]:
    """The events up to ``until`` as plain tuples in sequence order, ``batch`` at a time, the time as canonical text.

    Read with the driver's own cursor (a named, server-side one on PostgreSQL): SQLAlchemy's rows would cost about
    as much as the hashing."""
    if _time_text(connection.dialect.name) is None:  # another database: SQLAlchemy's rows, the time formatted here
        query = sa.select(_events).order_by(_events.c.sequence)
        if until is not None:
            query = query.where(_events.c.sequence <= until)
        with connection.execution_options(stream_results=True, yield_per=batch).execute(query) as result:
            for partition in result.partitions():
                yield [(r[0], format_time(r[1]), *r[2:]) for r in partition]
        return
    driver = connection.connection.driver_connection
    assert driver is not None
    if connection.dialect.name == "postgresql":
        cursor = driver.cursor(name="mssecure_archive_verify")  # server-side: rows arrive as they are fetched
        cursor.itersize = batch
    else:
        cursor = driver.cursor()
    yield from _fetch(cursor, _select_sql(connection.dialect, None, until), batch)


def verify_archive(
    engine: Engine,
    public_key: ed25519.Ed25519PublicKey,
    *,
    progress: Callable[[int], None] | None = None,
    batch: int = _BATCH,
    kept: Sequence[Checkpoint] = (),
    workers: int | None = None,
    range_size: int = _RANGE,
) -> VerifyReport:
    """Verify everything; ``progress`` is called with the number of events done since its last call.

    ``kept``: checkpoints an auditor kept outside the database (``archive checkpoint --json``). Each must be validly
    signed, still be in the database, and be matched by the events like the stored ones: whoever can rewrite the
    database can also delete its checkpoints, not the copies kept elsewhere.

    ``workers``: processes that hash ranges of ``range_size`` events (a power of two) side by side, on SQLite and
    PostgreSQL, for an archive of more than one range (None: one per core, up to four; 0 or 1: none, everything in
    this process). The findings are the same either way: see ``_combine``."""
    if range_size < 1 or range_size & (range_size - 1):
        raise ValueError(f"range_size must be a power of two, not {range_size}")
    started = _time.perf_counter()
    report = VerifyReport()
    options: dict[str, Any] = {}
    if engine.dialect.name == "postgresql":
        options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    with (
        _workers(engine, workers, range_size) as pool,  # forked before this process holds any database lock
        engine.connect().execution_options(**options) as connection,
        connection.begin(),
    ):
        _verify(connection, report, public_key, kept, progress, batch, pool)
    report.seconds = _time.perf_counter() - started
    return report


def _verify(
    connection: sa.Connection,
    report: VerifyReport,
    public_key: ed25519.Ed25519PublicKey,
    kept: Sequence[Checkpoint],
    progress: Callable[[int], None] | None,
    batch: int,
    pool: _Workers | None,
) -> None:
    """The checkpoints' signatures, then the chain pass and the end of the chain, in one read-only transaction."""
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
    _walk(connection, report, at_size, progress, batch, None if head is None else head.sequence, pool)
    if len(report.findings) == before:  # the pass went to the end
        _check_end(connection, report, at_size, head)


def _walk(
    connection: sa.Connection,
    report: VerifyReport,
    at_size: dict[int, list[Checkpoint]],
    progress: Callable[[int], None] | None,
    batch: int,
    until: int | None,
    pool: _Workers | None,
) -> None:
    """The chain pass: stops at the first event that does not verify and records the diagnosis."""
    if 0 in at_size:  # checkpoints of the empty archive
        _match_checkpoints(report, at_size[0], GENESIS_HASH, EMPTY_ROOT.hex(), 0)
    if pool is not None and until is not None and until > pool.range_size:
        broken = _walk_ranges(connection, report, at_size, progress, batch, until, pool)
    else:

        def reached(size: int, chain: str, stack: list[bytes]) -> bool:
            return _match_checkpoints(report, at_size[size], chain, MerkleFrontier(size, stack).root().hex(), size)

        with closing(_rows(connection, batch, until)) as partitions:
            scanned = _scan(partitions, 1, GENESIS_HASH, set(at_size), progress, reached)
        broken = _combine(report, at_size, [scanned], None)
    if broken is not None:  # diagnosed once the stream is closed: the queries need the connection
        seq, expected, prev = broken
        report.findings.append(_diagnose(connection, seq, expected, prev))


@dataclass
class _Pass:
    """What one pass over consecutive events found: the run of events that verify, from its first row on.

    A pass of a worker begins at an aligned position (a multiple of the range size): its ``stack`` is then the
    rightmost part of the archive's Merkle frontier, once grafted onto the frontier of the events before it."""

    first: tuple[Any, Any] | None = None  # the first row's sequence and prev_hash, as stored (None: no rows)
    count: int = 0  # events that verify, from the first row on
    last_hash: str = ""  # the hash of the last of them
    stack: list[bytes] = field(default_factory=list)  # their Merkle frontier (MerkleFrontier), largest subtree first
    sizes: list[tuple[int, str, list[bytes]]] = field(default_factory=list)  # at a checkpoint's size: hash, stack
    stop: tuple[str, Any] | None = None  # why it stopped early: ("link" | "edited" | "checkpoint", sequence)


def _scan(
    partitions: Iterator[Sequence[Any]],
    expected: int,
    prev: str | None,
    sizes: Set[int],
    progress: Callable[[int], None] | None,
    reached: Callable[[int, str, list[bytes]], bool],
) -> _Pass:
    """The loop of the chain pass, over rows in sequence order that should begin with event ``expected``, whose
    ``prev_hash`` should be ``prev`` (None: whatever the first row says, checked by ``_combine``).

    Each event's hash is recomputed from its fields; its sequence must be the next and its ``prev_hash`` the hash
    before it; its leaf hash is pushed on the Merkle frontier. At each of ``sizes`` (positions in the archive),
    ``reached`` is given the chain hash and the frontier so far, and stops the pass by returning False. Stops at
    the first event that does not verify."""
    sha256 = hashlib.sha256
    canonical = canonical_event
    base = expected - 1
    result = _Pass()
    stack = result.stack
    for partition in partitions:
        if result.first is None and partition:
            result.first = (partition[0][0], partition[0][13])
            if prev is None:
                prev = partition[0][13]
        for row in partition:
            seq, time, type_, outcome, actor, peer, qid, message_id, digest, sender, rcpt, reason, reply, p, h = row
            if seq != expected or p != prev:
                result.stop = ("link", seq)
                break
            try:
                text = canonical(seq, time, type_, outcome, actor, peer, qid, message_id, digest, sender, rcpt,
                                 reason, reply, p)  # fmt: skip
            except (TypeError, ValueError):  # a number stored in a text column (SQLite keeps what it is given)
                text = ""
            leaf = sha256(b"\x00" + text.encode()).digest()
            if leaf.hex() != h:
                result.stop = ("edited", seq)
                break
            prev = h
            size = expected - 1 - base
            while size & 1:
                leaf = sha256(b"\x01" + stack.pop() + leaf).digest()
                size >>= 1
            stack.append(leaf)
            if expected in sizes and not reached(expected, h, stack):
                expected += 1
                result.stop = ("checkpoint", seq)
                break
            expected += 1
        else:  # the whole partition verified: on to the next
            if progress is not None:
                progress(len(partition))
            continue
        break  # result.stop says why
    result.count = expected - 1 - base
    result.last_hash = prev or ""
    return result


def _combine(
    report: VerifyReport,
    at_size: dict[int, list[Checkpoint]],
    passes: Iterable[_Pass],
    progress: Callable[[int], None] | None,
) -> tuple[int, int, str] | None:
    """The outcome of the passes over consecutive ranges of the archive (in order; one pass: the whole of it), as if
    one pass had gone through all their rows: it stops where that pass would, with the same report and findings.

    A range is taken only if it begins where the events before it end (its first event is the next one, chained to
    the hash before it), so the positions its worker assumed are the true ones; each checkpoint within it is then
    matched, in order. Returns (sequence found, sequence expected, verified hash before it) at a break of the chain,
    to be diagnosed; None otherwise (the report is finished, an edited event or a checkpoint recorded)."""
    expected, prev = 1, GENESIS_HASH
    stack: list[bytes] = []
    for scanned in passes:
        if scanned.first is None:  # no rows in this range: the next ones follow
            continue
        seq, first_prev = scanned.first
        if seq != expected or first_prev != prev:
            _finish(report, expected - 1, prev, stack)
            return seq, expected, prev
        base = expected - 1
        for size, chain, local in scanned.sizes:
            frontier = _graft(stack, base, local, size - base)
            if not _match_checkpoints(report, at_size[size], chain, MerkleFrontier(size, frontier).root().hex(), size):
                _finish(report, size, chain, frontier)
                return None
        stack = _graft(stack, base, scanned.stack, scanned.count)
        expected += scanned.count
        if scanned.count:
            prev = scanned.last_hash
        if scanned.stop is not None:
            kind, seq = scanned.stop
            _finish(report, expected - 1, prev, stack)
            if kind == "link":
                return seq, expected, prev
            if kind == "edited":
                report.findings.append(
                    Finding(seq, "edited", f"event {seq}'s fields do not give its hash (a field was changed)")
                )
            return None  # "checkpoint": recorded by the pass
        if progress is not None:
            progress(scanned.count)
    _finish(report, expected - 1, prev, stack)
    return None


def _graft(stack: list[bytes], size: int, local: list[bytes], count: int) -> list[bytes]:
    """The Merkle frontier of ``size`` leaves (frontier ``stack``) followed by ``count`` leaves (frontier ``local``).

    ``size`` must be a multiple of the largest power of two in ``count`` (ranges are aligned): each subtree of
    ``local`` is then appended as a leaf is (``MerkleFrontier.append_leaf_hash``), one level up."""
    merged = list(stack)
    widths = [1 << bit for bit in reversed(range(count.bit_length())) if count >> bit & 1]
    for subtree, width in zip(local, widths, strict=True):
        current, carry = subtree, size // width
        while carry & 1:
            current = hashlib.sha256(b"\x01" + merged.pop() + current).digest()
            carry >>= 1
        merged.append(current)
        size += width
    return merged


def _finish(report: VerifyReport, last: int, last_hash: str, stack: list[bytes]) -> None:
    report.events = report.last_sequence = last
    report.last_hash = last_hash
    report.root = MerkleFrontier(last, stack).root().hex()


# -- ranges verified side by side, in worker processes


class _Task(NamedTuple):
    """A range for a worker: the SQL of its rows, where it begins, the checkpoint sizes within it."""

    sql: str
    batch: int
    first: int  # the sequence its first row should have
    sizes: frozenset[int]
    snapshot: str | None  # PostgreSQL: the snapshot of the verification's transaction, exported


@dataclass
class _Workers:
    pool: ProcessPoolExecutor
    range_size: int


@contextmanager
def _workers(engine: Engine, workers: int | None, range_size: int) -> Iterator[_Workers | None]:
    """Worker processes, if they are to be used: several of them, an archive of more than one range, SQLite (a
    file) or PostgreSQL (psycopg), and ``fork`` (a worker starts in milliseconds, with everything imported).

    They are forked before this process opens its transaction: a SQLite connection must not be open across a fork
    (the child would believe it holds its parent's file locks). Each opens its own connection."""
    if workers is None:
        workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4)
    dialect = engine.dialect
    eligible = (dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")) or (
        dialect.name == "postgresql" and dialect.driver == "psycopg"
    )
    if workers < 2 or not eligible or "fork" not in mp.get_all_start_methods() or threading.active_count() > 1:
        yield None
        return
    with engine.connect() as connection:
        size = connection.execute(sa.select(_head.c.sequence).where(_head.c.id == 1)).scalar_one_or_none()
    if size is None or size <= range_size:
        yield None
        return
    cargs, cparams = dialect.create_connect_args(engine.url)
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("fork"),
        initializer=_open_worker,
        initargs=(dialect.name, dialect.loaded_dbapi.connect, cargs, cparams),
    )
    try:
        pool.submit(int).result()  # the processes are forked now, before any transaction of this one
        yield _Workers(pool, range_size)
    except BrokenProcessPool as exc:
        raise ArchiveError(f"a verification worker process died ({exc}): the archive was not verified") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _walk_ranges(
    connection: sa.Connection,
    report: VerifyReport,
    at_size: dict[int, list[Checkpoint]],
    progress: Callable[[int], None] | None,
    batch: int,
    until: int,
    workers: _Workers,
) -> tuple[int, int, str] | None:
    """The chain pass, its ranges scanned by the workers and combined here in order (``_combine``). The first range
    has no lower bound, so that rows numbered below 1 come first, as in one pass; a range's rows are those after
    the previous range's end: together they are exactly the rows of one pass, in its order.

    On PostgreSQL the workers read in this transaction's snapshot (exported); on SQLite, what they read is committed
    before the head this transaction read (appends only add events after it)."""
    snapshot = None
    if connection.dialect.name == "postgresql":
        snapshot = str(connection.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one())
    step = workers.range_size
    tasks = [
        _Task(
            _select_sql(connection.dialect, after or None, min(after + step, until)),
            batch,
            after + 1,
            frozenset(size for size in at_size if after < size <= after + step),
            snapshot,
        )
        for after in range(0, until, step)
    ]
    return _combine(report, at_size, workers.pool.map(_scan_range, tasks), progress)


_connection: Any = None  # in a worker process: its own connection to the database
_server_side = False  # a named (server-side) cursor: PostgreSQL
_snapshot: str | None = None  # the snapshot its transaction reads in


def _open_worker(dialect: str, connect: Callable[..., Any], cargs: Sequence[Any], cparams: Mapping[str, Any]) -> None:
    """In a worker process: its connection, read-only, closed when the pool shuts the worker down."""
    global _connection, _server_side
    connection = connect(*cargs, **cparams)
    if dialect == "sqlite":
        connection.execute("PRAGMA query_only = ON")
        connection.execute("PRAGMA busy_timeout = 10000")
        connection.execute("PRAGMA mmap_size = 1073741824")  # pages read in place, not copied: ~10 % less CPU
    else:
        import psycopg

        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        connection.read_only = True
        _server_side = True
    _connection = connection
    mp_util.Finalize(None, connection.close, exitpriority=10)


def _scan_range(task: _Task) -> _Pass:
    """In a worker process: the pass over one range (``_scan``), the frontier kept at each checkpoint size."""
    global _snapshot
    if task.snapshot is not None and _snapshot is None:
        import psycopg.sql

        if not _SNAPSHOT_ID.fullmatch(task.snapshot):
            raise ArchiveError(f"unexpected PostgreSQL snapshot identifier {task.snapshot!r}")
        statement = psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(psycopg.sql.Literal(task.snapshot))
        _connection.execute(statement)  # first in its transaction: before any row is read
        _snapshot = task.snapshot
    if _server_side:
        cursor = _connection.cursor(name="mssecure_archive_verify_range")
        cursor.itersize = task.batch
    else:
        cursor = _connection.cursor()
    found: list[tuple[int, str, list[bytes]]] = []

    def reached(size: int, chain: str, stack: list[bytes]) -> bool:
        found.append((size, chain, list(stack)))
        return True

    with closing(_fetch(cursor, task.sql, task.batch)) as partitions:
        scanned = _scan(partitions, task.first, None, task.sizes, None, reached)
    scanned.sizes = found
    return scanned


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
