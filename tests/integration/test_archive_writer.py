"""How the relay writes to the archive: in the queue's transaction (all or nothing with the queue change), and
through the background writer (batched, checkpointed, flushed at close) — on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.engine import Engine

from mssecure.archive import Archive, verify_archive
from mssecure.archive.writer import ArchiveWriter
from mssecure.db import make_sessionmaker
from mssecure.smtp.events import Event, Journal
from mssecure.smtp.queue import Outgoing, Queue, Spool

KEY = ed25519.Ed25519PrivateKey.generate()
START = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def refused(i: int) -> Event:
    return Event("submission.refused", "refused", actor="dr@chu-nord.mssante.test", reason=f"test {i}",
                 recipients=(f"r{i}@x.test",), time=START + timedelta(seconds=i))  # fmt: skip


@pytest.fixture
def archive(engine: Engine) -> Archive:
    return Archive(engine, key=KEY, origin="chu-nord.mssante.test")


def journal_for(archive: Archive) -> Journal:
    def within(connection: sa.Connection, events: Sequence[Event]) -> None:
        archive.append_many(events, connection=connection)

    return Journal(archive=archive, transactional=within)


def item(data: bytes = b"Subject: x\r\n\r\nbody\r\n") -> Outgoing:
    return Outgoing(destination="local", recipients=("pharmacie@pharma-sud.mssante.test",), data=data,
                    origin="submission", kind="message", sender="dr@chu-nord.mssante.test",
                    actor="dr@chu-nord.mssante.test", message_id="<m1@chu-nord.mssante.test>")  # fmt: skip


def test_writer_archives_in_order_and_checkpoints_at_close(archive: Archive, engine: Engine) -> None:
    writer = ArchiveWriter(archive, checkpoint_interval=0)
    for i in range(1, 1201):  # more than one batch
        writer(refused(i))
    writer.flush(timeout=60)
    assert archive.size() == 1200
    assert archive.checkpoints() == []  # interval 0: only at close
    writer.close()
    assert [e.reason for e in archive.search(limit=3)] == ["test 1", "test 2", "test 3"]
    (checkpoint,) = archive.checkpoints()
    assert checkpoint.tree_size == 1200
    report = verify_archive(engine, KEY.public_key())
    assert report.ok
    assert report.checkpoints == 1


def test_writer_signs_checkpoints_at_its_interval(archive: Archive) -> None:
    now = [0.0]
    writer = ArchiveWriter(archive, checkpoint_interval=10, clock=lambda: now[0])
    writer(refused(1))
    writer.flush(timeout=30)
    assert archive.checkpoints() == []
    now[0] = 11.0
    writer(refused(2))  # wakes the thread, which finds the checkpoint due
    writer.flush(timeout=30)
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    while not archive.checkpoints() and datetime.now(UTC) < deadline:
        writer.flush(timeout=1)
    assert [c.tree_size for c in archive.checkpoints()] == [2]
    writer.close()
    assert [c.tree_size for c in archive.checkpoints()] == [2]  # nothing new since: no second checkpoint


def test_writer_keeps_events_while_the_archive_refuses_them(archive: Archive, engine: Engine) -> None:
    with engine.begin() as connection:  # the chain head missing: every append fails
        connection.execute(sa.text("DELETE FROM archive_head"))
    writer = ArchiveWriter(archive, checkpoint_interval=0)
    writer(refused(1))
    writer.flush(timeout=1)  # not written, and not lost
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO archive_head (id, sequence, hash, frontier) VALUES (1, 0, :h, :f)"),
                           {"h": "0" * 64, "f": b""})  # fmt: skip
    writer.flush(timeout=30)
    writer.close()
    assert [e.reason for e in archive.search()] == ["test 1"]


def test_accepted_event_commits_with_the_queue_rows(archive: Archive, engine: Engine, tmp_path: Path) -> None:
    queue = Queue(make_sessionmaker(engine), Spool(tmp_path / "spool"), retry_schedule=[60], max_lifetime=3600,
                  journal=journal_for(archive))  # fmt: skip

    def accepted(ids: list[str]) -> list[Event]:
        return [Event("submission.accepted", "ok", queue_id=",".join(ids), message_id="<m1@chu-nord.mssante.test>")]

    (queue_id,) = queue.enqueue([item()], accepted)
    (event,) = archive.search()
    assert event.queue_id == queue_id
    assert event.type == "submission.accepted"
    claim = queue.claim()[0]
    queue.delivered([claim.recipients[0][0]], [Event("delivered", "ok", queue_id=queue_id)])
    assert [e.type for e in archive.search()] == ["submission.accepted", "delivered"]
    assert queue.messages() == []


def test_a_failed_enqueue_archives_nothing(archive: Archive, engine: Engine, tmp_path: Path) -> None:
    queue = Queue(make_sessionmaker(engine), Spool(tmp_path / "spool"), retry_schedule=[60], max_lifetime=3600,
                  journal=journal_for(archive))  # fmt: skip

    def broken(ids: list[str]) -> list[Event]:
        raise RuntimeError("processing failed after the rows were added")

    with pytest.raises(RuntimeError):
        queue.enqueue([item()], broken)
    assert queue.messages() == []
    assert archive.size() == 0
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_failed_archive_append_leaves_nothing_queued(archive: Archive, engine: Engine, tmp_path: Path) -> None:
    """The other way round: the archive refuses (its chain head is gone), so the message is not queued either and
    the client gets a temporary failure — a message is never accepted without its record."""
    queue = Queue(make_sessionmaker(engine), Spool(tmp_path / "spool"), retry_schedule=[60], max_lifetime=3600,
                  journal=journal_for(archive))  # fmt: skip
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM archive_head"))
    with pytest.raises(Exception, match="chain head"):
        queue.enqueue([item()], lambda ids: [Event("submission.accepted", "ok", queue_id=ids[0])])
    assert queue.messages() == []
    assert list((tmp_path / "spool").iterdir()) == []
