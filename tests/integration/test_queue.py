"""The durable queue on SQLite and on PostgreSQL, and Maildir delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mssecure.db import make_sessionmaker
from mssecure.errors import QueueError
from mssecure.smtp.maildir import Maildirs
from mssecure.smtp.queue import Outgoing, Queue, Spool


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def item(
    data: bytes = b"Subject: x\r\n\r\nbody\r\n", recipients: tuple[str, ...] = ("a@x.test", "b@x.test")
) -> Outgoing:
    return Outgoing(destination="peer.test", recipients=recipients, data=data, origin="submission", kind="message",
                    sender="dr@chu.test", actor="dr@chu.test", message_id="<1@chu.test>")  # fmt: skip


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(engine: Engine, tmp_path: Path, clock: Clock) -> Queue:
    return Queue(make_sessionmaker(engine), Spool(tmp_path / "spool"), retry_schedule=(60, 300), max_lifetime=3600,
                 clock=clock)  # fmt: skip


def test_enqueue_writes_the_file_and_the_rows(queue: Queue) -> None:
    (queue_id,) = queue.enqueue([item()])
    assert queue.spool.read(queue_id) == b"Subject: x\r\n\r\nbody\r\n"
    message = queue.get(queue_id.lower())
    assert [r.state for r in message.recipients] == ["queued", "queued"]
    assert message.size == len(b"Subject: x\r\n\r\nbody\r\n")
    assert len(message.sha256) == 64


def test_accept_queues_and_claims_in_one_transaction_and_a_crash_leaves_them_to_the_next_claim(
    queue: Queue, clock: Clock
) -> None:
    other = Outgoing(destination="local", recipients=("c@chu.test",), data=b"Subject: y\r\n\r\nz\r\n",
                     origin="inbound", kind="mdn", sender="", actor="peer.test", message_id=None)  # fmt: skip
    ids, claims = queue.accept([item(), other], lease=60)
    assert [c.queue_id for c in claims] == ids
    first, second = claims
    assert [address for _, address in first.recipients] == ["a@x.test", "b@x.test"]
    assert (first.destination, first.attempts, first.sha256) == ("peer.test", 1, queue.get(ids[0].lower()).sha256)
    assert (second.destination, second.kind, second.recipients[0][1]) == ("local", "mdn", "c@chu.test")
    message = queue.get(ids[0].lower())
    assert {(r.id, r.state, r.attempts) for r in message.recipients} == {(rid, "delivering", 1)
                                                                          for rid, _ in first.recipients}  # fmt: skip
    assert queue.claim() == []  # claimed already: no second delivery
    clock.now += timedelta(seconds=61)  # the process that accepted them died: the lease runs out
    again = {c.queue_id: c for c in queue.claim()}
    assert set(again) == set(ids)
    assert again[ids[0]].attempts == 2
    queue.delivered([rid for rid, _ in again[ids[0]].recipients])
    assert ids[0] not in set(queue.spool.names())  # delivered: the message and its file are gone
    assert ids[1] in set(queue.spool.names())


def test_nothing_to_queue_still_records_the_acceptance(queue: Queue) -> None:
    """A suppressed duplicate notice gives no item: the queue writes no row, and the acceptance is still archived
    (the events factory is called) — never a database error, which the peer would see as 451 and retry forever."""
    seen: list[list[str]] = []
    assert queue.enqueue([], lambda ids: seen.append(ids) or []) == []
    assert queue.accept([], lambda ids: seen.append(ids) or []) == ([], [])
    assert seen == [[], []]
    assert queue.claim() == []


def test_claim_leases_then_retry_schedule_then_delivery_removes_everything(queue: Queue, clock: Clock) -> None:
    (queue_id,) = queue.enqueue([item()])
    (claim,) = queue.claim()
    assert claim.queue_id == queue_id
    assert len(claim.recipients) == 2
    assert claim.attempts == 1
    assert queue.claim() == []  # leased
    first, second = (rid for rid, _ in claim.recipients)
    when = queue.deferred([first], "421 busy", attempts=claim.attempts)
    assert when == clock.now + timedelta(seconds=60)
    queue.delivered([second])
    assert queue.claim() == []
    clock.now += timedelta(seconds=61)
    (again,) = queue.claim()
    assert again.recipients == ((first, "a@x.test"),)
    assert again.attempts == 2
    assert queue.deferred([first], "421 busy", attempts=again.attempts) == clock.now + timedelta(seconds=300)
    clock.now += timedelta(seconds=301)
    (third,) = queue.claim()
    assert queue.deferred([first], "x", attempts=third.attempts + 5) == clock.now + timedelta(seconds=300)
    queue.bounced([first], "550 no")
    assert queue.messages() == []
    with pytest.raises(QueueError):
        queue.spool.read(queue_id)


def test_a_dead_worker_lease_expires(queue: Queue, clock: Clock) -> None:
    queue.enqueue([item()])
    queue.claim(lease=300)
    clock.now += timedelta(seconds=301)
    assert len(queue.claim()) == 1


def test_a_renewed_lease_holds_and_a_finished_recipient_is_not_renewed(queue: Queue, clock: Clock) -> None:
    queue.enqueue([item()])
    (claim,) = queue.claim(lease=60)
    ids = [rid for rid, _ in claim.recipients]
    clock.now += timedelta(seconds=50)
    queue.renew(ids, lease=60)
    clock.now += timedelta(seconds=50)  # 100 s after the claim: still held, thanks to the renewal
    assert queue.claim() == []
    clock.now += timedelta(seconds=11)
    (again,) = queue.claim()  # not renewed any more: another worker takes it
    queue.delivered([rid for rid, _ in again.recipients])
    queue.renew(ids, lease=60)  # a late renewal does not resurrect a finished recipient
    clock.now += timedelta(seconds=3600)
    assert queue.claim() == []


def test_retry_delete_and_unknown_ids(queue: Queue, clock: Clock) -> None:
    (queue_id,) = queue.enqueue([item()])
    (claim,) = queue.claim()
    queue.deferred([rid for rid, _ in claim.recipients], "down", attempts=1)
    assert queue.claim() == []
    assert queue.retry(queue_id) == 2
    assert len(queue.claim()) == 1
    deleted = queue.delete(queue_id)
    assert deleted.id == queue_id
    assert queue.messages() == []
    with pytest.raises(QueueError, match="no queued message"):
        queue.get(queue_id)
    with pytest.raises(QueueError):
        queue.retry("NOPE")


def test_orphan_spool_files_are_removed(queue: Queue) -> None:
    (kept,) = queue.enqueue([item()])
    queue.spool.write("ORPHAN", b"half")
    assert queue.remove_orphans() == ["ORPHAN"]
    assert queue.spool.read(kept)


def test_a_failed_commit_leaves_no_file(queue: Queue) -> None:
    bad = Outgoing(destination="peer.test", recipients=(None,), data=b"d", origin="submission",  # type: ignore[arg-type]
                   kind="message", sender="s@x.test", actor="s@x.test")  # fmt: skip
    with pytest.raises(sa.exc.IntegrityError):
        queue.enqueue([item(), bad])
    assert list(queue.spool.names()) == []


def test_maildir_delivery_is_idempotent(tmp_path: Path) -> None:
    boxes = Maildirs(tmp_path / "mail")
    path, written = boxes.deliver("Pharmacie@pharma.test", b"message", "Q1.1")
    assert written
    assert path.parent.name == "new"
    assert path.read_bytes() == b"message"
    assert path.parent.parent == tmp_path / "mail" / "pharma.test" / "pharmacie"
    assert boxes.deliver("pharmacie@pharma.test", b"message", "Q1.1") == (path, False)
    seen = path.parent.parent / "cur" / (path.name + ":2,S")  # an IMAP server moved it
    path.rename(seen)
    assert boxes.deliver("pharmacie@pharma.test", b"message", "Q1.1") == (seen, False)
    assert list((path.parent.parent / "tmp").iterdir()) == []


@pytest.mark.parametrize("address", ["../x@pharma.test", "a@../etc", "a/b@pharma.test", ".x@pharma.test", "nodomain"])
def test_maildir_refuses_paths_outside_the_root(tmp_path: Path, address: str) -> None:
    with pytest.raises(ValueError, match="cannot make a mailbox path"):
        Maildirs(tmp_path).path(address)


def test_concurrent_claimers_never_claim_the_same_recipient(
    engine: Engine, database_url: str, tmp_path: Path, clock: Clock
) -> None:
    """Relay workers claim from one queue at once (each its own connection): every recipient is claimed once."""
    import threading

    from mssecure.db import make_engine

    spool = Spool(tmp_path / "spool")
    Queue(make_sessionmaker(engine), spool, retry_schedule=(60,), max_lifetime=3600, clock=clock).enqueue(
        [item(recipients=tuple(f"r{i}-{j}@x.test" for j in range(3))) for i in range(120)]
    )
    claimed: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker() -> None:
        own = make_engine(database_url)
        queue = Queue(make_sessionmaker(own), spool, retry_schedule=(60,), max_lifetime=3600, clock=clock)
        try:
            start.wait()
            while batch := queue.claim(limit=5):
                claimed.extend(rid for claim in batch for rid, _ in claim.recipients)
        except BaseException as error:
            errors.append(error)
        finally:
            own.dispose()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert len(claimed) == 360
    assert len(set(claimed)) == 360  # no recipient twice
