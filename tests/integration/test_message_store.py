"""The message store on SQLite and on PostgreSQL: storing in the caller's transaction, concurrent writers of the
same bytes, a purge racing a new copy, large messages, and a purge that leaves the archive verifiable while the
bodies are really gone."""

from __future__ import annotations

import hashlib
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from sqlalchemy.engine import Engine

from mssecure.archive import Archive, ArchiveError, MessageStore, verify_archive
from mssecure.smtp.events import Event

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
KEY = x25519.X25519PrivateKey.generate()
ARCHIVE_KEY = ed25519.Ed25519PrivateKey.generate()


def message(i: int) -> bytes:
    return (
        f"From: camille.lefevre@chu-nord.mssante.test\r\nTo: pharmacie.centrale@officine.mssante.test\r\n"
        f"Message-ID: <rx-{i}@chu-nord.mssante.test>\r\n\r\nOrdonnance {i}.\r\n"
    ).encode()


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        bodies = connection.execute(sa.text("SELECT count(*) FROM archive_bodies")).scalar_one()
        copies = connection.execute(sa.text("SELECT count(*) FROM archive_copies")).scalar_one()
    return int(bodies), int(copies)


def test_storing_in_the_callers_transaction_commits_and_rolls_back_with_it(engine: Engine) -> None:
    store = MessageStore(engine, public_key=KEY.public_key())

    with engine.connect() as connection:
        transaction = connection.begin()
        store.put(message(1), kind="received", queue_id="Q1", message_id="<rx-1@x>", connection=connection)
        store.put(message(1), kind="delivered", queue_id="Q1", message_id="<rx-1@x>", recipient="a@x",
                  connection=connection)  # fmt: skip
        assert connection.execute(sa.text("SELECT count(*) FROM archive_copies")).scalar_one() == 2
        transaction.rollback()  # the relay failed to queue the message: nothing of it may stay
    assert counts(engine) == (0, 0)

    with engine.begin() as connection:
        sha256 = store.put(message(1), kind="received", queue_id="Q1", message_id="<rx-1@x>", connection=connection)
    assert counts(engine) == (1, 1)
    assert MessageStore(engine, private_key=KEY).get(sha256) == message(1)


def test_a_failed_insert_of_the_same_bytes_does_not_break_the_callers_transaction(engine: Engine) -> None:
    """Two relay transactions storing the same message at once: the second finds the body inserted by the first
    (ON CONFLICT DO NOTHING, no unique-key error that would abort its transaction on PostgreSQL)."""
    store = MessageStore(engine, public_key=KEY.public_key())
    barrier = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            with engine.begin() as connection:
                barrier.wait()
                store.put(message(7), kind="delivered", queue_id=f"Q{i}", message_id="<rx-7@x>",
                          recipient=f"r{i}@x", connection=connection)  # fmt: skip
                connection.execute(sa.text("SELECT 1"))  # the transaction is still usable
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert counts(engine) == (1, 2)
    assert MessageStore(engine, private_key=KEY).get(hashlib.sha256(message(7)).hexdigest()) == message(7)


def test_a_purge_never_deletes_a_body_a_concurrent_writer_just_referenced(engine: Engine) -> None:
    """The relay stores a new copy of old bytes while a purge runs: the purge waits for the relay's transaction
    and then sees the new copy (its time is on the body row it has to update)."""
    clock_now = [NOW - timedelta(days=400)]
    store = MessageStore(engine, private_key=KEY, clock=lambda: clock_now[0])
    sha256 = store.put(message(3), kind="received", queue_id="Q1", message_id=None)
    clock_now[0] = NOW
    purged: list[tuple[str, ...]] = []
    with engine.begin() as connection:
        store.put(message(3), kind="received", queue_id="Q2", message_id=None, connection=connection)
        purge = threading.Thread(target=lambda: purged.append(store.purge(NOW - timedelta(days=30)).sha256s))
        purge.start()
        purge.join(1)  # blocked on the body row (PostgreSQL) or the write lock (SQLite)
        assert purge.is_alive()
    purge.join(60)
    assert purged == [()]
    assert store.get(sha256) == message(3)


def test_a_large_message_round_trips(engine: Engine) -> None:
    data = os.urandom(25 * 1024 * 1024)
    store = MessageStore(engine, private_key=KEY)
    sha256 = store.put(data, kind="received", queue_id="Q1", message_id=None)
    assert store.get(sha256) == data
    assert store.purge(datetime.now(UTC) + timedelta(seconds=1)).bytes == len(data)


def test_purge_keeps_the_archive_verifiable_and_the_bodies_are_gone(engine: Engine, database_url: str) -> None:
    store = MessageStore(engine, private_key=KEY, clock=lambda: NOW - timedelta(days=400))
    archive = Archive(engine, key=ARCHIVE_KEY, origin="chu-nord.mssante.test", clock=lambda: NOW)
    sealed: dict[str, bytes] = {}
    for i in range(1, 6):
        data = message(i)
        sha256 = store.put(data, kind="received", queue_id=f"Q{i}", message_id=f"<rx-{i}@chu-nord.mssante.test>")
        archive.append_many([
            Event("submission.accepted", "ok", queue_id=f"Q{i}", message_id=f"<rx-{i}@chu-nord.mssante.test>",
                  sha256=sha256, time=NOW - timedelta(days=400, seconds=-i)),
            Event("delivered", "ok", queue_id=f"Q{i}", sha256=sha256, time=NOW - timedelta(days=400, seconds=-i)),
        ])  # fmt: skip
        with engine.connect() as connection:
            sealed[sha256] = connection.execute(
                sa.text("SELECT ciphertext FROM archive_bodies WHERE sha256 = :s"), {"s": sha256}
            ).scalar_one()
    before = archive.checkpoint()
    assert verify_archive(engine, ARCHIVE_KEY.public_key()).ok

    report = store.purge(NOW - timedelta(days=365))
    assert set(report.sha256s) == set(sealed)
    archive.append(Event("archive.purge", "ok", actor="test-operator", reason=f"{report.bodies} bodies", time=NOW))
    archive.checkpoint()

    verified = verify_archive(engine, ARCHIVE_KEY.public_key())
    assert verified.ok, verified.findings
    assert (verified.events, verified.checkpoints) == (11, 2)
    # The events still name the hashes of the purged bodies, under the checkpoint signed before the purge.
    assert {e.sha256 for e in archive.search(type="submission.accepted")} == set(sealed)
    assert archive.checkpoints()[0].root == before.root
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT ciphertext, nonce, wrapped_key, ephemeral_key, purged_at FROM archive_bodies")
        ).all()
    assert len(rows) == 5
    assert all(row[:4] == (None, None, None, None) and row[4] is not None for row in rows)
    for sha256 in sealed:
        with pytest.raises(ArchiveError, match="was purged on"):
            store.get(sha256)
    if database_url.startswith("sqlite"):
        # Not in the database file nor in its WAL: secure_delete zeroed the pages, the checkpoint emptied the WAL.
        path = Path(database_url.removeprefix("sqlite:///"))
        on_disk = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        for ciphertext in sealed.values():
            assert ciphertext[:32] not in on_disk


def test_a_hostile_message_id_does_not_fail_the_callers_transaction(engine: Engine) -> None:
    store = MessageStore(engine, private_key=KEY)
    with engine.begin() as connection:
        sha256 = store.put(message(9), kind="received", queue_id="Q9", message_id="<a\x00b@x>", connection=connection)
    assert [c.message_id for c in store.copies("Q9")] == ["<a\ufffdb@x>"]
    assert store.get(sha256) == message(9)
