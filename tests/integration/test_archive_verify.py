"""``verify_archive`` with worker processes: ranges verified side by side give exactly the report of one pass.

Every kind of tampering, at range boundaries and inside ranges, on SQLite and PostgreSQL: the parallel verification
(ranges of 8 events, so that a 40-event archive has five) and the single pass must agree on every finding, the
events verified, the chain hash and the Merkle root.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.engine import Engine

import mssecure.archive.verify as verify_module
from mssecure.archive import Archive, MerkleFrontier, VerifyReport, verify_archive
from mssecure.archive.models import ArchiveEventRecord
from mssecure.archive.records import canonical_event, event_hash, format_time
from mssecure.archive.verify import _graft
from mssecure.smtp.events import Event
from tests.integration.test_archive import execute, stored_hash

KEY = ed25519.Ed25519PrivateKey.generate()
START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
RANGE = 8
EVENTS = 40  # five ranges; checkpoints at 12 and 29 (inside ranges) and 32 (at the end of one)


def event(i: int) -> Event:
    return Event("delivered" if i % 3 else "submission.accepted", "ok", actor="dr.martin@chu-nord.mssante.test",
                 queue_id=f"Q{i:04d}", message_id=f"<{i}@chu-nord.mssante.test>", sha256=f"{i:064x}",
                 sender="dr.martin@chu-nord.mssante.test", recipients=(f"r{i}@officine.mssante.test",),
                 reply="250 2.0.0 Ok", time=START + timedelta(seconds=i, microseconds=i))  # fmt: skip


@pytest.fixture
def archive(engine: Engine) -> Archive:
    archive = Archive(engine, key=KEY, origin="chu-nord.mssante.test", clock=lambda: START + timedelta(days=1))
    archive.append_many(event(i) for i in range(1, 13))
    archive.checkpoint()
    archive.append_many(event(i) for i in range(13, 30))
    archive.checkpoint()
    archive.append_many(event(i) for i in range(30, 33))
    archive.checkpoint()
    archive.append_many(event(i) for i in range(33, EVENTS + 1))
    return archive


def forge(engine: Engine, sequence: int, prev: str) -> None:
    """A forged event at ``sequence`` whose hash is right for its fields and ``prev``."""
    time = START + timedelta(hours=1)
    digest = event_hash(canonical_event(sequence, format_time(time), "delivered", "ok", "relay", None, None,
                                        "<forged@x>", None, "a@x.test", '["b@x.test"]', None, None, prev))  # fmt: skip
    with engine.begin() as connection:
        connection.execute(sa.insert(ArchiveEventRecord), {"sequence": sequence, "time": time, "type": "delivered",
                           "outcome": "ok", "actor": "relay", "message_id": "<forged@x>", "sender": "a@x.test",
                           "recipients": '["b@x.test"]', "prev_hash": prev, "hash": digest})  # fmt: skip


def renumber_from(engine: Engine, first: int, shift: int) -> None:
    execute(engine, "UPDATE archive_events SET sequence = -(sequence + :d) WHERE sequence >= :f", d=shift, f=first)
    execute(engine, "UPDATE archive_events SET sequence = -sequence WHERE sequence < 0")


def swap(engine: Engine, one: int, other: int) -> None:
    execute(engine, "UPDATE archive_events SET sequence = -1000 WHERE sequence = :s", s=one)
    execute(engine, "UPDATE archive_events SET sequence = :s WHERE sequence = :o", s=one, o=other)
    execute(engine, "UPDATE archive_events SET sequence = :o WHERE sequence = -1000", o=other)


def rewrite_from(engine: Engine, archive: Archive, start: int) -> None:
    """Edit event ``start`` and recompute every hash after it, and the chain head's hash."""
    execute(engine, "UPDATE archive_events SET reply = '550 5.7.1 refused' WHERE sequence = :s", s=start)
    prev = stored_hash(engine, start - 1)
    for sequence in range(start, EVENTS + 1):
        stored = archive.get(sequence)
        assert stored is not None
        digest = stored.__class__(**{**stored.__dict__, "prev_hash": prev}).computed_hash()
        execute(engine, "UPDATE archive_events SET prev_hash = :p, hash = :h WHERE sequence = :s",
                p=prev, h=digest, s=sequence)  # fmt: skip
        prev = digest
    execute(engine, "UPDATE archive_head SET hash = :h", h=prev)


Tampering = Callable[[Engine, Archive], None]

# (name, tampering, expected first finding: (sequence, kind), or None for a clean archive)
SCENARIOS: list[tuple[str, Tampering, tuple[int, str] | None]] = [
    ("untouched", lambda e, a: None, None),
    ("edited inside a range", lambda e, a: execute(e, "UPDATE archive_events SET reply = 'x' WHERE sequence = 10"),
     (10, "edited")),
    ("edited at a range's end", lambda e, a: execute(e, "UPDATE archive_events SET outcome = 'x' WHERE sequence = 16"),
     (16, "edited")),
    ("edited at a range's start", lambda e, a: execute(e, "UPDATE archive_events SET peer = 'x' WHERE sequence = 17"),
     (17, "edited")),
    ("edited first event", lambda e, a: execute(e, "UPDATE archive_events SET sender = 'x' WHERE sequence = 1"),
     (1, "edited")),
    ("edited last event", lambda e, a: execute(e, "UPDATE archive_events SET sender = 'x' WHERE sequence = 40"),
     (40, "edited")),
    ("edited prev_hash at a range's start",
     lambda e, a: execute(e, "UPDATE archive_events SET prev_hash = :h WHERE sequence = 9", h="f" * 64), (9, "edited")),
    ("edited hash at a range's end",
     lambda e, a: execute(e, "UPDATE archive_events SET hash = :h WHERE sequence = 24", h="f" * 64), (24, "edited")),
    ("deleted across a boundary", lambda e, a: execute(e, "DELETE FROM archive_events WHERE sequence IN (8, 9)"),
     (8, "missing")),
    ("deleted a whole range", lambda e, a: execute(e, "DELETE FROM archive_events WHERE sequence BETWEEN 17 AND 24"),
     (17, "missing")),
    ("deleted a range's last events",
     lambda e, a: execute(e, "DELETE FROM archive_events WHERE sequence IN (23, 24)"), (23, "missing")),
    ("deleted and renumbered", lambda e, a: (execute(e, "DELETE FROM archive_events WHERE sequence IN (15, 16)"),
                                             renumber_from(e, 17, -2)), (15, "missing")),
    ("swapped in a range", lambda e, a: swap(e, 5, 6), (5, "reordered")),
    ("swapped across a boundary", lambda e, a: swap(e, 8, 9), (8, "reordered")),
    ("swapped far apart", lambda e, a: swap(e, 3, 20), (3, "reordered")),
    ("forged in the middle", lambda e, a: (renumber_from(e, 17, 1), forge(e, 17, stored_hash(e, 16))),
     (17, "inserted")),
    ("forged at the end", lambda e, a: forge(e, 41, stored_hash(e, 40)), (41, "inserted")),
    ("forged before the first", lambda e, a: forge(e, 0, "0" * 64), (1, "missing")),
    ("truncated after a checkpoint", lambda e, a: (
        execute(e, "DELETE FROM archive_events WHERE sequence > 26"),
        execute(e, "UPDATE archive_head SET sequence = 26, hash = :h", h=stored_hash(e, 26))), (27, "truncated")),
    ("truncated tail", lambda e, a: execute(e, "DELETE FROM archive_events WHERE sequence > 35"), (36, "truncated")),
    ("rewritten with hashes recomputed", lambda e, a: rewrite_from(e, a, 20), (13, "checkpoint")),
    ("checkpoint replaced", lambda e, a: execute(e, "UPDATE archive_checkpoints SET root = :r WHERE sequence = 29",
                                                  r="0" * 64), (29, "checkpoint")),
]  # fmt: skip


def comparable(report: VerifyReport) -> dict[str, Any]:
    found = report.to_json()
    del found["seconds"], found["events_per_second"]
    return found


@pytest.mark.parametrize(("tampering", "expected"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_ranges_in_workers_report_what_one_pass_reports(
    archive: Archive,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    tampering: Tampering,
    expected: tuple[int, str] | None,
) -> None:
    tampering(engine, archive)
    one_pass = verify_archive(engine, KEY.public_key(), workers=0, batch=3)
    in_workers: list[int] = []
    walk = verify_module._walk_ranges

    def walk_ranges(*args: Any) -> Any:
        in_workers.append(args[5])  # until
        return walk(*args)

    monkeypatch.setattr("mssecure.archive.verify._walk_ranges", walk_ranges)
    done: list[int] = []
    in_ranges = verify_archive(engine, KEY.public_key(), workers=2, range_size=RANGE, batch=3, progress=done.append)
    assert in_workers  # the ranges were verified by worker processes
    assert comparable(in_ranges) == comparable(one_pass)
    first = in_ranges.first
    assert (None if first is None else (first.sequence, first.kind)) == expected
    if expected is None:
        assert (in_ranges.events, in_ranges.checkpoints_matched) == (EVENTS, 3)
        assert done == [RANGE] * (EVENTS // RANGE)  # one call per range


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL keeps text in text columns
def test_a_blob_in_a_text_column_is_an_edit_in_a_worker_too(archive: Archive, engine: Engine) -> None:
    execute(engine, "UPDATE archive_events SET outcome = x'6f6b' WHERE sequence = 19")
    report = verify_archive(engine, KEY.public_key(), workers=2, range_size=RANGE)
    assert report.first is not None
    assert (report.first.sequence, report.first.kind) == (19, "edited")
    assert comparable(report) == comparable(verify_archive(engine, KEY.public_key(), workers=0))


def test_an_archive_of_one_range_is_verified_in_this_process(archive: Archive, engine: Engine) -> None:
    done: list[int] = []
    report = verify_archive(engine, KEY.public_key(), workers=2, range_size=64, batch=7, progress=done.append)
    assert report.ok
    assert done == [7] * 5 + [5]  # per batch of rows: no workers


def test_range_size_is_a_power_of_two(engine: Engine) -> None:
    with pytest.raises(ValueError, match="power of two"):
        verify_archive(engine, KEY.public_key(), range_size=12)


@pytest.mark.parametrize("seed", range(5))
def test_grafted_frontiers_are_those_of_the_leaves_appended_one_by_one(seed: int) -> None:
    rng = random.Random(seed)
    leaves = [hashlib.sha256(bytes([i % 256, i // 256])).digest() for i in range(300)]
    for width in (1, 2, 8, 32):
        size = width * rng.randrange(0, 300 // width)
        count = rng.randrange(0, min(width, 300 - size) + 1)
        before, after, local = MerkleFrontier(), MerkleFrontier(), MerkleFrontier()
        for leaf in leaves[:size]:
            before.append_leaf_hash(leaf)
            after.append_leaf_hash(leaf)
        for leaf in leaves[size : size + count]:
            after.append_leaf_hash(leaf)
            local.append_leaf_hash(leaf)
        grafted = _graft(list(before._hashes), size, list(local._hashes), count)
        assert MerkleFrontier(size + count, grafted).root() == after.root(), (width, size, count)
