"""The archive on SQLite and on PostgreSQL: appends, checkpoints, and tampering done directly in SQL, detected and
located by ``verify_archive``; concurrent appenders keep one valid chain."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.engine import Engine

from mssecure.archive import (
    Archive,
    ArchiveError,
    MerkleFrontier,
    VerifyReport,
    merkle_root,
    sign_checkpoint,
    verify_archive,
)
from mssecure.archive.models import ArchiveEventRecord
from mssecure.archive.records import canonical_event, event_hash, format_time
from mssecure.smtp.events import Event, LogSink

START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
KEY = ed25519.Ed25519PrivateKey.generate()


def event(i: int) -> Event:
    return Event("delivered" if i % 3 else "submission.accepted", "ok", actor="dr.martin@chu-nord.mssante.test",
                 peer="127.0.0.1", queue_id=f"Q{i:04d}", message_id=f"<{i}@chu-nord.mssante.test>", sha256=f"{i:064x}",
                 sender="dr.martin@chu-nord.mssante.test", recipients=("pharma@officine.mssante.test", f"r{i}@x.test"),
                 reply="250 2.0.0 Ok", time=START + timedelta(seconds=i, microseconds=i))  # fmt: skip


def fill(archive: Archive, count: int, *, first: int = 1) -> None:
    archive.append_many(event(i) for i in range(first, first + count))


@pytest.fixture
def archive(engine: Engine) -> Archive:
    return Archive(engine, key=KEY, origin="chu-nord.mssante.test", clock=lambda: START + timedelta(days=1))


def verify(engine: Engine) -> VerifyReport:
    return verify_archive(engine, KEY.public_key(), batch=7)  # small batches: partitions are crossed


def first(engine: Engine) -> tuple[int, str]:
    report = verify(engine)
    assert not report.ok
    assert report.first is not None
    return report.first.sequence, report.first.kind


def execute(engine: Engine, sql: str, **params: object) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text(sql), params)


def stored_hash(engine: Engine, sequence: int) -> str:
    with engine.connect() as connection:
        return str(connection.execute(sa.text("SELECT hash FROM archive_events WHERE sequence = :s"),
                                      {"s": sequence}).scalar_one())  # fmt: skip


# -- what is written


def test_appends_number_without_gaps_and_chain_the_hashes(archive: Archive, engine: Engine) -> None:
    assert archive.append(event(1)) == 1
    assert archive.append_many([event(2), event(3)]) == [2, 3]
    assert archive.append_many([]) == []
    events = [archive.get(i) for i in (1, 2, 3)]
    assert all(e is not None for e in events)
    one, two, three = (e for e in events if e is not None)
    assert one.prev_hash == "0" * 64
    assert two.prev_hash == one.hash
    assert three.prev_hash == two.hash
    assert one.computed_hash() == one.hash
    assert one.recipients == ("pharma@officine.mssante.test", "r1@x.test")
    assert one.time == START + timedelta(seconds=1, microseconds=1)
    head = archive.head()
    assert (head.sequence, head.hash) == (3, three.hash)
    assert head.root == _root_of_leaf_hashes([one.hash, two.hash, three.hash])
    assert verify(engine).ok


def _root_of_leaf_hashes(hashes: list[str]) -> str:
    """The RFC 9162 root over leaves whose leaf hashes are given (the event hashes), computed recursively."""

    def mth(items: list[bytes]) -> bytes:
        if len(items) == 1:
            return items[0]
        k = 1 << ((len(items) - 1).bit_length() - 1)
        return hashlib.sha256(b"\x01" + mth(items[:k]) + mth(items[k:])).digest()

    return mth([bytes.fromhex(h) for h in hashes]).hex()


def test_values_the_database_cannot_hold_are_cleaned_before_hashing(archive: Archive, engine: Engine) -> None:
    sequence = archive.append(Event("submission.refused", "refused", sender="a\x00b@x.test", reason="x" * 10_000,
                                    message_id="<\udcff@x>", recipients=("é@x.test",)))  # fmt: skip
    stored = archive.get(sequence)
    assert stored is not None
    assert stored.sender == "a\ufffdb@x.test"
    assert stored.reason is not None
    assert len(stored.reason) == 4000
    assert stored.reason.endswith("…")
    assert stored.message_id == "<?@x>"
    assert stored.recipients == ("é@x.test",)
    assert verify(engine).ok


def test_a_naive_time_is_refused(archive: Archive) -> None:
    with pytest.raises(ValueError, match="naive"):
        archive.append(Event("delivered", "ok", time=datetime(2026, 1, 1)))


def test_checkpoints_sign_the_head_and_verify(archive: Archive, engine: Engine) -> None:
    empty = archive.checkpoint()
    assert (empty.sequence, empty.root) == (0, merkle_root([]).hex())
    fill(archive, 20)
    checkpoint = archive.checkpoint()
    assert checkpoint.id is not None
    assert checkpoint.sequence == checkpoint.tree_size == 20
    assert checkpoint.hash == stored_hash(engine, 20)
    assert checkpoint.signature_problem(KEY.public_key()) is None
    fill(archive, 5, first=21)
    report = verify(engine)
    assert report.ok, report.findings
    assert (report.events, report.checkpoints, report.checkpoints_matched) == (25, 2, 2)
    assert report.latest_checkpoint == checkpoint
    assert [c.sequence for c in archive.checkpoints()] == [0, 20]


def test_a_checkpoint_needs_the_key(engine: Engine) -> None:
    with pytest.raises(ArchiveError, match="no archive key"):
        Archive(engine).checkpoint()


def test_search_and_history(archive: Archive) -> None:
    fill(archive, 9)
    archive.append(Event("delivered", "ok", queue_id="Q0004", recipients=("pharma@officine.mssante.test",)))
    assert [e.sequence for e in archive.search(type="submission.accepted")] == [3, 6, 9]
    assert [e.sequence for e in archive.search(type="submission.")] == [3, 6, 9]
    assert [e.sequence for e in archive.search(address="R2@X.TEST")] == [2]
    assert len(list(archive.search(address="pharma@officine.mssante.test"))) == 10
    assert [e.sequence for e in archive.search(address="Dr.Martin@chu-nord.mssante.test", limit=2)] == [1, 2]
    assert [e.sequence for e in archive.search(message_id="4@chu-nord.mssante.test")] == [4]
    since, until = START + timedelta(seconds=2), START + timedelta(seconds=4)
    assert [e.sequence for e in archive.search(since=since, until=until)] == [2, 3]
    assert [e.sequence for e in archive.history("4@chu-nord.mssante.test")] == [4, 10]
    assert archive.history("<nothing@x>") == []
    assert archive.get(99) is None


# -- tampering, in SQL


@pytest.fixture
def tampered(archive: Archive, engine: Engine) -> Engine:
    """An archive of 30 events with a checkpoint at 20."""
    fill(archive, 20)
    archive.checkpoint()
    fill(archive, 10, first=21)
    assert verify(engine).ok
    return engine


def test_an_edited_field_is_found(tampered: Engine) -> None:
    execute(tampered, "UPDATE archive_events SET recipients = '[\"intrus@x.test\"]' WHERE sequence = 12")
    assert first(tampered) == (12, "edited")


def test_an_edited_time_is_found(tampered: Engine) -> None:
    execute(tampered, "UPDATE archive_events SET reply = '550 5.7.1 no' WHERE sequence = 25")
    assert first(tampered) == (25, "edited")
    execute(tampered, "UPDATE archive_events SET reply = '250 2.0.0 Ok' WHERE sequence = 25")
    assert verify(tampered).ok


def test_an_edited_hash_is_found(tampered: Engine) -> None:
    execute(tampered, "UPDATE archive_events SET hash = :h WHERE sequence = 7", h="f" * 64)
    assert first(tampered) == (7, "edited")


def test_an_edited_prev_hash_is_found(tampered: Engine) -> None:
    execute(tampered, "UPDATE archive_events SET prev_hash = :h WHERE sequence = 7", h="f" * 64)
    assert first(tampered) == (7, "edited")


def test_a_deleted_row_is_found(tampered: Engine) -> None:
    execute(tampered, "DELETE FROM archive_events WHERE sequence IN (8, 9)")
    report = verify(tampered)
    assert report.first is not None
    assert (report.first.sequence, report.first.kind) == (8, "missing")
    assert "events 8..9 (2) are missing" in report.first.detail
    assert report.events == 7


def test_deleted_rows_with_the_rest_renumbered_are_found(tampered: Engine) -> None:
    execute(tampered, "DELETE FROM archive_events WHERE sequence IN (8, 9)")
    execute(tampered, "UPDATE archive_events SET sequence = -(sequence - 2) WHERE sequence > 9")
    execute(tampered, "UPDATE archive_events SET sequence = -sequence WHERE sequence < 0")
    assert first(tampered) == (8, "missing")


def test_swapped_rows_are_found(tampered: Engine) -> None:
    execute(tampered, "UPDATE archive_events SET sequence = -5 WHERE sequence = 5")
    execute(tampered, "UPDATE archive_events SET sequence = 5 WHERE sequence = 6")
    execute(tampered, "UPDATE archive_events SET sequence = 6 WHERE sequence = -5")
    assert first(tampered) == (5, "reordered")


def test_distant_swapped_rows_are_found(tampered: Engine) -> None:
    execute(tampered, "UPDATE archive_events SET sequence = -3 WHERE sequence = 3")
    execute(tampered, "UPDATE archive_events SET sequence = 3 WHERE sequence = 17")
    execute(tampered, "UPDATE archive_events SET sequence = 17 WHERE sequence = -3")
    assert first(tampered) == (3, "reordered")


def _forge(engine: Engine, sequence: int, prev: str) -> None:
    """Insert at ``sequence`` a forged event whose hash is right for its fields and ``prev``: a forger who knows the
    format."""
    time = START + timedelta(hours=1)
    digest = event_hash(canonical_event(sequence, format_time(time), "delivered", "ok", "relay", None, None,
                                        "<forged@x>", None, "a@x.test", '["b@x.test"]', None, None, prev))  # fmt: skip
    with engine.begin() as connection:  # through the table's types, so that the time is stored as mssecure does
        connection.execute(sa.insert(ArchiveEventRecord), {"sequence": sequence, "time": time, "type": "delivered",
                           "outcome": "ok", "actor": "relay", "message_id": "<forged@x>", "sender": "a@x.test",
                           "recipients": '["b@x.test"]', "prev_hash": prev, "hash": digest})  # fmt: skip


def test_a_row_forged_in_the_middle_is_found(tampered: Engine) -> None:
    execute(tampered, "UPDATE archive_events SET sequence = -(sequence + 1) WHERE sequence > 10")
    execute(tampered, "UPDATE archive_events SET sequence = -sequence WHERE sequence < 0")
    _forge(tampered, 11, stored_hash(tampered, 10))
    assert first(tampered) == (11, "inserted")


def test_a_careless_forged_row_is_found(tampered: Engine) -> None:
    execute(tampered, "UPDATE archive_events SET sequence = -(sequence + 1) WHERE sequence > 10")
    execute(tampered, "UPDATE archive_events SET sequence = -sequence WHERE sequence < 0")
    _forge(tampered, 11, "e" * 64)
    assert first(tampered) == (11, "inserted")


def test_a_row_forged_at_the_end_is_found(tampered: Engine) -> None:
    _forge(tampered, 31, stored_hash(tampered, 30))
    assert first(tampered) == (31, "inserted")


def test_a_truncated_tail_after_a_checkpoint_is_found(tampered: Engine) -> None:
    execute(tampered, "DELETE FROM archive_events WHERE sequence > 15")
    # the forger also winds the chain head back: the signed checkpoint still vouches for 20 events
    execute(tampered, "UPDATE archive_head SET sequence = 15, hash = :h", h=stored_hash(tampered, 15))
    report = verify(tampered)
    assert report.first is not None
    assert (report.first.sequence, report.first.kind) == (16, "truncated")
    assert "vouches for 20 events" in report.first.detail


def test_a_truncated_tail_after_the_last_checkpoint_is_found_by_the_head(tampered: Engine) -> None:
    execute(tampered, "DELETE FROM archive_events WHERE sequence > 25")
    assert first(tampered) == (26, "truncated")


def test_a_replaced_checkpoint_is_found(tampered: Engine) -> None:
    execute(tampered, "UPDATE archive_checkpoints SET root = :r", r="0" * 64)
    report = verify(tampered)
    assert report.first is not None
    assert (report.first.sequence, report.first.kind) == (20, "checkpoint")
    assert "signature invalid" in report.first.detail


def test_a_checkpoint_signed_by_another_key_is_found(tampered: Engine) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    forged = sign_checkpoint(other, sequence=20, hash=stored_hash(tampered, 20), root="0" * 64, time=START,
                             origin="chu-nord.mssante.test")  # fmt: skip
    execute(tampered, "UPDATE archive_checkpoints SET key_id = :k, signature = :s, root = :r",
            k=forged.key_id, s=forged.signature, r=forged.root)  # fmt: skip
    report = verify(tampered)
    assert report.first is not None
    assert report.first.kind == "checkpoint"
    assert "another key" in report.first.detail


def test_a_history_rewritten_with_recomputed_hashes_is_found_by_the_checkpoint(
    tampered: Engine, archive: Archive
) -> None:
    """A forger who edits event 12 and recomputes every hash after it (and the head): only the signature is out of
    reach. The events before the last matching checkpoint (none here) are all that is still proven."""
    execute(tampered, "UPDATE archive_events SET reply = '550 5.7.1 refused' WHERE sequence = 12")
    prev = stored_hash(tampered, 11)
    for sequence in range(12, 31):
        stored = archive.get(sequence)
        assert stored is not None
        digest = replace(stored, prev_hash=prev).computed_hash()
        execute(tampered, "UPDATE archive_events SET prev_hash = :p, hash = :h WHERE sequence = :s",
                p=prev, h=digest, s=sequence)  # fmt: skip
        prev = digest
    execute(tampered, "UPDATE archive_head SET hash = :h", h=prev)
    report = verify(tampered)
    assert report.first is not None
    assert (report.first.sequence, report.first.kind) == (1, "checkpoint")
    assert "events 1..20 do not give" in report.first.detail


def test_an_edited_last_event_with_its_hash_recomputed_is_found_by_the_head(tampered: Engine, archive: Archive) -> None:
    stored = archive.get(30)
    assert stored is not None
    edited = replace(stored, outcome="failed")
    execute(tampered, "UPDATE archive_events SET outcome = 'failed', hash = :h WHERE sequence = 30",
            h=edited.computed_hash())  # fmt: skip
    assert first(tampered) == (30, "edited")


# -- concurrency


def test_concurrent_appenders_keep_one_chain(archive: Archive, engine: Engine) -> None:
    """Four threads, each with its own connections, append one by one and in batches at the same time."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(25):
                if i % 5 == 0:
                    archive.append_many(event(worker * 1000 + i * 10 + j) for j in range(3))
                else:
                    archive.append(event(worker * 1000 + i))
                if i == 12:
                    archive.checkpoint()
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    total = 4 * (20 + 5 * 3)
    report = verify(engine)
    assert report.ok, report.findings
    assert report.events == total == archive.head().sequence
    assert report.checkpoints_matched == 4


def _rewrite_from(engine: Engine, archive: Archive, start: int, reply: str) -> None:
    """Edit event ``start`` and recompute every hash from it on, and the chain head: all a database administrator
    can do."""
    execute(engine, "UPDATE archive_events SET reply = :r WHERE sequence = :s", r=reply, s=start)
    prev = stored_hash(engine, start - 1)
    last = archive.head().sequence
    for sequence in range(start, last + 1):
        stored = archive.get(sequence)
        assert stored is not None
        digest = replace(stored, prev_hash=prev).computed_hash()
        execute(engine, "UPDATE archive_events SET prev_hash = :p, hash = :h WHERE sequence = :s",
                p=prev, h=digest, s=sequence)  # fmt: skip
        prev = digest
    frontier = MerkleFrontier()
    for sequence in range(1, last + 1):
        frontier.append_leaf_hash(bytes.fromhex(stored_hash(engine, sequence)))
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE archive_head SET hash = :h, frontier = :f"),
                           {"h": prev, "f": frontier.to_bytes()})  # fmt: skip


def test_checkpoints_kept_outside_catch_a_rewrite_with_the_checkpoints_deleted(
    tampered: Engine, archive: Archive
) -> None:
    (kept,) = [c for c in archive.checkpoints() if c.sequence == 20]
    _rewrite_from(tampered, archive, 12, "550 5.7.1 refused")
    execute(tampered, "DELETE FROM archive_checkpoints")
    assert verify(tampered).ok  # what the database alone can no longer show: hence checkpoints kept elsewhere
    report = verify_archive(tampered, KEY.public_key(), kept=[kept])
    rewritten, deleted = sorted(report.findings, key=lambda f: f.sequence)
    assert (rewritten.sequence, rewritten.kind) == (1, "checkpoint")
    assert "events 1..20 do not give the chain hash and Merkle root checkpoint #1" in rewritten.detail
    assert (deleted.sequence, deleted.kind) == (20, "checkpoint")
    assert "the kept checkpoint of sequence 20 (signed at 2026-11-24T12:00:00.000000+00:00) is no longer" in (
        deleted.detail
    )


def test_a_kept_checkpoint_still_in_the_database_is_matched_once(tampered: Engine, archive: Archive) -> None:
    kept = archive.checkpoints()
    report = verify_archive(tampered, KEY.public_key(), kept=kept)
    assert report.ok
    assert report.checkpoints_matched == 1
    forged = replace(kept[0], root="0" * 64)
    report = verify_archive(tampered, KEY.public_key(), kept=[forged])
    assert report.first is not None
    assert "the kept checkpoint of sequence 20: signature invalid" in report.first.detail


def test_a_damaged_chain_head_is_reported_not_a_crash(tampered: Engine, archive: Archive) -> None:
    with tampered.begin() as connection:
        connection.execute(sa.text("UPDATE archive_head SET frontier = :f"), {"f": b"\x00" * 5})
    assert first(tampered) == (30, "head")
    with pytest.raises(ArchiveError, match="chain head is damaged"):
        archive.append(event(31))
    with pytest.raises(ArchiveError, match="chain head is damaged"):
        archive.checkpoint()


def test_values_of_the_wrong_type_are_edits_not_crashes(tampered: Engine) -> None:
    if tampered.dialect.name == "sqlite":  # SQLite keeps a blob in a text column: "ok" as bytes
        execute(tampered, "UPDATE archive_events SET outcome = x'6f6b' WHERE sequence = 9")
        with tampered.connect() as connection:
            kind = connection.execute(sa.text("SELECT typeof(outcome) FROM archive_events WHERE sequence = 9"))
            assert kind.scalar() == "blob"
    else:  # PostgreSQL casts to text: a plain edit
        execute(tampered, "UPDATE archive_events SET outcome = 5 WHERE sequence = 9")
    assert first(tampered) == (9, "edited")


def test_the_archive_is_an_event_sink(archive: Archive) -> None:
    LogSink(forward=archive)(event(1))
    assert archive.size() == 1
