"""The durable queue: message bytes in spool files, envelopes and per-recipient state in the database.

Discipline (Postfix's): a message is written to a spool file, fsynced, renamed into place and its directory
fsynced, and only then are its rows committed — and only after that commit does the server answer 250. A crash
before the commit leaves an orphan file (removed at start-up) and no row: nothing half-delivered. A crash after it
loses nothing: the rows are found at restart. Delivery claims due recipients with a lease (``delivering`` until
``next_attempt_at``), so a worker that dies leaves them to be claimed again once the lease expires; on PostgreSQL
several relay processes claim with ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload, sessionmaker

from mssecure.db import utcnow
from mssecure.errors import QueueError
from mssecure.smtp.events import Event, Journal, digest
from mssecure.smtp.models import PENDING_STATES, QueuedMessage, QueuedRecipient

_INSERT_MESSAGE = sa.insert(QueuedMessage)  # executed on the connection: plain Core inserts
_INSERT_RECIPIENT = sa.insert(QueuedRecipient)
_INSERT_RECIPIENT_RETURNING = _INSERT_RECIPIENT.returning(QueuedRecipient.id, sort_by_parameter_order=True)
# The statements of every delivery, built once (building and caching a statement cost more than running it).
_RECIPIENT_IDS: sa.BindParameter[int] = sa.bindparam("ids", expanding=True)
_DONE: sa.BindParameter[str] = sa.bindparam("done", expanding=True)
_FINISH = (
    sa.update(QueuedRecipient)
    .where(QueuedRecipient.id.in_(_RECIPIENT_IDS))
    .values(
        state=sa.bindparam("new_state", type_=sa.String()),
        last_error=sa.bindparam("error", type_=sa.Text()),
        updated_at=sa.bindparam("at", type_=QueuedRecipient.updated_at.type),
    )
)
_TOUCHED = sa.select(QueuedRecipient.queue_id).where(QueuedRecipient.id.in_(_RECIPIENT_IDS)).distinct()
_FINISHED_MESSAGES = sa.select(QueuedMessage.id).where(
    QueuedMessage.id.in_(_TOUCHED),
    QueuedMessage.id.not_in(
        sa.select(QueuedRecipient.queue_id).where(
            QueuedRecipient.queue_id.in_(_TOUCHED), QueuedRecipient.state.in_(PENDING_STATES)
        )
    ),
)
_DELETE_RECIPIENTS = sa.delete(QueuedRecipient).where(QueuedRecipient.queue_id.in_(_DONE))
_DELETE_MESSAGES = sa.delete(QueuedMessage).where(QueuedMessage.id.in_(_DONE))

__all__ = ["Claim", "Outgoing", "Queue", "Spool", "new_queue_id"]


LEASE = 60  # seconds a claim is held without renewal (the worker renews it every LEASE / 3 while delivering)


def new_queue_id() -> str:
    return secrets.token_hex(10).upper()


class Spool:
    """Message files, one per queue id, written durably."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def ensure(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path(self, queue_id: str) -> Path:
        if not queue_id.isalnum():
            raise QueueError(f"invalid queue id {queue_id!r}")
        return self.directory / queue_id

    def write(self, queue_id: str, data: bytes) -> None:
        final = self.path(queue_id)
        temporary = final.with_name(f".{queue_id}.tmp")
        write_synced(temporary, data, os.O_EXCL)
        os.replace(temporary, final)
        sync_directory(self.directory)

    def read(self, queue_id: str) -> bytes:
        try:
            return self.path(queue_id).read_bytes()
        except FileNotFoundError:
            raise QueueError(f"the spool file of {queue_id} is missing") from None

    def remove(self, queue_id: str) -> None:
        self.path(queue_id).unlink(missing_ok=True)

    def names(self) -> Iterator[str]:
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                yield path.name


def write_synced(path: Path, data: bytes, flags: int = 0) -> None:
    """Write ``data`` to a new file (mode 0600) and fsync it before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_directory(directory: Path) -> None:
    """fsync a directory, so that a rename in it survives a crash (POSIX leaves that to the caller)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Outgoing:
    """A message to queue for one destination (``local``, or a peer operator's main domain)."""

    destination: str
    recipients: tuple[str, ...]
    data: bytes
    origin: str  # submission, inbound, notification
    kind: str  # message, mdn, dsn
    sender: str
    actor: str
    message_id: str | None = None
    disposition_to: str | None = None
    final_delivery: bool = False
    sha256: str | None = None  # of ``data``, when the caller computed it already (else the queue does)


@dataclass(frozen=True)
class Claim:
    """What one delivery attempt works on: a message and the recipients claimed for it."""

    queue_id: str
    destination: str
    sender: str
    kind: str
    origin: str
    message_id: str | None
    disposition_to: str | None
    final_delivery: bool
    created_at: datetime
    expires_at: datetime
    recipients: tuple[tuple[int, str], ...]  # (recipient row id, address)
    attempts: int
    sha256: str  # of the spooled bytes, computed when they were queued


class Queue:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        spool: Spool,
        *,
        retry_schedule: Sequence[int],
        max_lifetime: int,
        clock: Callable[[], datetime] = utcnow,
        journal: Journal | None = None,
    ) -> None:
        self.sessions = sessions
        self.spool = spool
        self.retry_schedule = tuple(retry_schedule)
        self.max_lifetime = max_lifetime
        self.clock = clock
        self.journal = journal

    def _record(self, session: Session, events: Sequence[Event]) -> None:
        """Archive ``events`` in the transaction of ``session``: they commit with the queue change they describe."""
        if events and self.journal is not None:
            self.journal.within(session.connection(), events)

    def _logged(self, events: Sequence[Event]) -> None:
        if events and self.journal is not None:
            self.journal.logged(events)

    def enqueue(
        self, items: Sequence[Outgoing], events: Callable[[list[str]], Sequence[Event]] | None = None
    ) -> list[str]:
        """Write every item's file durably, then commit every row in one transaction; return the queue ids.

        ``events``, given the new queue ids, returns the events archived in that same transaction (the acceptance
        of the message). All or nothing: when the commit fails, the files are removed and the caller answers 4xx.
        """
        return self._enqueue(items, events, lease=None)[0]

    def accept(
        self,
        items: Sequence[Outgoing],
        events: Callable[[list[str]], Sequence[Event]] | None = None,
        *,
        lease: int = LEASE,
    ) -> tuple[list[str], list[Claim]]:
        """``enqueue``, the new recipients claimed in the same transaction: the relay hands the claims to its own
        delivery worker, which starts at once instead of claiming them in a transaction of its own (one commit,
        one fsync less per message). A crash leaves them to the next claim once the lease ends, as any claim."""
        return self._enqueue(items, events, lease=lease)

    def _enqueue(
        self, items: Sequence[Outgoing], events: Callable[[list[str]], Sequence[Event]] | None, *, lease: int | None
    ) -> tuple[list[str], list[Claim]]:
        now = self.clock()
        ids = [new_queue_id() for _ in items]
        recorded: Sequence[Event] = ()
        claims: list[Claim] = []
        self.spool.ensure()
        try:
            for queue_id, item in zip(ids, items, strict=True):
                self.spool.write(queue_id, item.data)
            with self.sessions.begin() as session:
                messages, recipients = self._rows(ids, items, now, lease)
                connection = session.connection()
                if messages:  # nothing to queue (a suppressed duplicate notice) is still an acceptance to archive
                    connection.execute(_INSERT_MESSAGE, messages)
                if recipients and lease is None:
                    connection.execute(_INSERT_RECIPIENT, recipients)
                elif recipients:
                    rows = connection.execute(_INSERT_RECIPIENT_RETURNING, recipients).all()
                    claims = self._claims(messages, recipients, [row.id for row in rows])
                if events is not None:
                    recorded = events(ids)
                    self._record(session, recorded)
        except BaseException:
            for queue_id in ids:
                self.spool.remove(queue_id)
            raise
        self._logged(recorded)
        return ids, claims

    def _rows(
        self, ids: Sequence[str], items: Sequence[Outgoing], now: datetime, lease: int | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The queue rows of new items, for two plain inserts (the ORM's unit of work cost more than both); with
        ``lease``, the recipients are claimed already (the first attempt under way)."""
        expires = now + timedelta(seconds=self.max_lifetime)
        messages = [
            {"id": queue_id, "origin": item.origin, "kind": item.kind, "destination": item.destination,
             "sender": item.sender, "actor": item.actor, "message_id": item.message_id,
             "sha256": item.sha256 or digest(item.data), "size": len(item.data),
             "disposition_to": item.disposition_to, "final_delivery": item.final_delivery, "created_at": now,
             "expires_at": expires}
            for queue_id, item in zip(ids, items, strict=True)
        ]  # fmt: skip
        state, attempts, due = (
            ("queued", 0, now) if lease is None else ("delivering", 1, now + timedelta(seconds=lease))
        )
        recipients = [
            {"queue_id": queue_id, "address": address, "state": state, "attempts": attempts, "next_attempt_at": due,
             "last_error": None, "updated_at": now}
            for queue_id, item in zip(ids, items, strict=True)
            for address in item.recipients
        ]  # fmt: skip
        return messages, recipients

    @staticmethod
    def _claims(messages: list[dict[str, Any]], recipients: list[dict[str, Any]], ids: list[int]) -> list[Claim]:
        claimed: dict[str, list[tuple[int, str]]] = {}
        for row, recipient_id in zip(recipients, ids, strict=True):
            claimed.setdefault(row["queue_id"], []).append((recipient_id, row["address"]))
        return [
            Claim(queue_id=m["id"], destination=m["destination"], sender=m["sender"], kind=m["kind"],
                  origin=m["origin"], message_id=m["message_id"], disposition_to=m["disposition_to"],
                  final_delivery=m["final_delivery"], created_at=m["created_at"], expires_at=m["expires_at"],
                  recipients=tuple(claimed.get(m["id"], ())), attempts=1, sha256=m["sha256"])
            for m in messages
            if m["id"] in claimed
        ]  # fmt: skip

    def claim(self, *, limit: int = 50, lease: int = LEASE, destinations: set[str] | None = None) -> list[Claim]:
        """Claim the recipients due now (at most ``limit`` messages), leasing them for ``lease`` seconds (the worker
        renews the lease while it delivers: see ``renew``)."""
        now = self.clock()
        with self.sessions.begin() as session:
            query = (
                sa.select(QueuedRecipient)
                .where(QueuedRecipient.state.in_(PENDING_STATES), QueuedRecipient.next_attempt_at <= now)
                .order_by(QueuedRecipient.next_attempt_at, QueuedRecipient.id)
                .limit(limit * 10)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            else:
                # SQLite: take the database's write lock before reading (a write statement, even one that matches
                # nothing, begins the transaction as a writer), so that two workers never read the same due rows.
                session.execute(sa.update(QueuedRecipient).where(sa.false()).values(state=QueuedRecipient.state))
            rows = list(session.scalars(query))
            by_message: dict[str, list[QueuedRecipient]] = {}
            for row in rows:
                if len(by_message) >= limit and row.queue_id not in by_message:
                    continue
                by_message.setdefault(row.queue_id, []).append(row)
            claims = []
            for queue_id, recipients in by_message.items():
                message = session.get(QueuedMessage, queue_id)
                if message is None:
                    continue
                if destinations is not None and message.destination not in destinations:
                    continue
                for row in recipients:
                    row.state = "delivering"
                    row.attempts += 1
                    row.next_attempt_at = now + timedelta(seconds=lease)
                    row.updated_at = now
                claims.append(
                    Claim(
                        queue_id=message.id,
                        destination=message.destination,
                        sender=message.sender,
                        kind=message.kind,
                        origin=message.origin,
                        message_id=message.message_id,
                        disposition_to=message.disposition_to,
                        final_delivery=message.final_delivery,
                        created_at=message.created_at,
                        expires_at=message.expires_at,
                        recipients=tuple((row.id, row.address) for row in recipients),
                        attempts=max(row.attempts for row in recipients),
                        sha256=message.sha256,
                    )
                )
        return claims

    def renew(self, recipient_ids: Sequence[int], lease: int = LEASE) -> None:
        """Extend the lease of recipients still being delivered: a short lease, renewed while the work goes on, lets
        another worker (or this one restarted) take over soon after a crash, however long a delivery may take."""
        if not recipient_ids:
            return
        now = self.clock()
        with self.sessions.begin() as session:
            session.execute(
                sa.update(QueuedRecipient)
                .where(QueuedRecipient.id.in_(recipient_ids), QueuedRecipient.state == "delivering")
                .values(next_attempt_at=now + timedelta(seconds=lease))
            )

    def next_due(self) -> datetime | None:
        with self.sessions() as session:
            return session.scalar(
                sa.select(sa.func.min(QueuedRecipient.next_attempt_at)).where(QueuedRecipient.state.in_(PENDING_STATES))
            )

    def delivered(self, recipient_ids: Sequence[int], events: Sequence[Event] = ()) -> None:
        self._finish(recipient_ids, "delivered", None, events)

    def bounced(self, recipient_ids: Sequence[int], error: str, events: Sequence[Event] = ()) -> None:
        self._finish(recipient_ids, "bounced", error, events)

    def _finish(self, recipient_ids: Sequence[int], state: str, error: str | None, events: Sequence[Event]) -> None:
        if not recipient_ids:
            return
        now = self.clock()
        with self.sessions.begin() as session:
            connection = session.connection()
            connection.execute(_FINISH, {"ids": list(recipient_ids), "new_state": state, "error": error, "at": now})
            self._drop_finished(connection, recipient_ids)
            self._record(session, events)
        self._logged(events)

    def retry_delay(self, attempts: int) -> int:
        """Seconds before the next attempt after ``attempts`` failed ones (the schedule's last delay repeats)."""
        return self.retry_schedule[min(max(attempts, 1), len(self.retry_schedule)) - 1]

    def deferred(
        self, recipient_ids: Sequence[int], error: str, *, attempts: int, events: Sequence[Event] = ()
    ) -> datetime:
        """Put the recipients back for a later attempt (the schedule's delay for this attempt)."""
        now = self.clock()
        when = now + timedelta(seconds=self.retry_delay(attempts))
        with self.sessions.begin() as session:
            session.execute(
                sa.update(QueuedRecipient)
                .where(QueuedRecipient.id.in_(recipient_ids))
                .values(state="deferred", last_error=error, next_attempt_at=when, updated_at=now)
            )
            self._record(session, events)
        self._logged(events)
        return when

    def _drop_finished(self, connection: sa.Connection, recipient_ids: Sequence[int]) -> None:
        """Remove the messages of these recipients whose every recipient is finished (their spool files too): the
        messages concerned only, not the whole queue (which grows with the load)."""
        done = list(connection.scalars(_FINISHED_MESSAGES, {"ids": list(recipient_ids)}))
        if done:
            connection.execute(_DELETE_RECIPIENTS, {"done": done})
            connection.execute(_DELETE_MESSAGES, {"done": done})
            for queue_id in done:
                self.spool.remove(queue_id)

    def remove_orphans(self) -> list[str]:
        """Spool files without a row (a crash between writing and committing): removed; their ids returned."""
        with self.sessions() as session:
            known = set(session.scalars(sa.select(QueuedMessage.id)))
        removed = []
        for name in list(self.spool.names()):
            if name not in known:
                (self.spool.directory / name).unlink(missing_ok=True)
                removed.append(name)
        return removed

    # Operator commands

    def messages(self, *, state: str | None = None) -> list[QueuedMessage]:
        with self.sessions() as session:
            query = sa.select(QueuedMessage).options(selectinload(QueuedMessage.recipients))
            query = query.order_by(QueuedMessage.created_at, QueuedMessage.id)
            if state:
                query = query.where(QueuedMessage.recipients.any(QueuedRecipient.state == state))
            found = list(session.scalars(query))
            session.expunge_all()
            return found

    def get(self, queue_id: str) -> QueuedMessage:
        with self.sessions() as session:
            message = session.scalars(
                sa.select(QueuedMessage)
                .options(selectinload(QueuedMessage.recipients))
                .where(QueuedMessage.id == queue_id.strip().upper())
            ).one_or_none()
            if message is None:
                raise QueueError(f"no queued message {queue_id}")
            session.expunge_all()
            return message

    def retry(self, queue_id: str | None, events: Callable[[int], Sequence[Event]] | None = None) -> int:
        """Make the deferred recipients of one message (or of all, ``None``) due now; the count made due.
        ``events``, given that count, returns the events archived with the change."""
        now = self.clock()
        recorded: Sequence[Event] = ()
        with self.sessions.begin() as session:
            query = sa.update(QueuedRecipient).where(QueuedRecipient.state.in_(("deferred", "queued")))
            if queue_id is not None:
                self.get(queue_id)
                query = query.where(QueuedRecipient.queue_id == queue_id.strip().upper())
            result = session.execute(query.values(next_attempt_at=now, updated_at=now))
            count = int(result.rowcount)  # type: ignore[attr-defined]
            if events is not None:
                recorded = events(count)
                self._record(session, recorded)
        self._logged(recorded)
        return count

    def delete(self, queue_id: str, events: Callable[[QueuedMessage], Sequence[Event]] | None = None) -> QueuedMessage:
        """Remove a message from the queue; ``events``, given it, returns the events archived with the removal."""
        message = self.get(queue_id)
        recorded: Sequence[Event] = ()
        with self.sessions.begin() as session:
            session.execute(sa.delete(QueuedRecipient).where(QueuedRecipient.queue_id == message.id))
            session.execute(sa.delete(QueuedMessage).where(QueuedMessage.id == message.id))
            if events is not None:
                recorded = events(message)
                self._record(session, recorded)
        self._logged(recorded)
        self.spool.remove(message.id)
        return message
