"""Decisions of the relay as events: one structured line each in the log, and one narrow hook for the archive.

An event names what was decided, by whom, about which message (queue id, Message-ID, SHA-256 of the bytes) and
envelope, with the outcome, the reason and the reply sent. Never a body, a subject, a password or a key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime

import sqlalchemy as sa

from mssecure.db import utcnow

__all__ = ["Event", "EventSink", "Journal", "LogSink", "digest"]


def digest(data: bytes) -> str:
    """The SHA-256 (hex) by which events name the bytes of a message."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Event:
    type: str  # submission.accepted, submission.refused, auth.failed, inbound.refused, delivered, deferred, ...
    outcome: str  # ok, refused, failed, deferred, suppressed
    actor: str | None = None  # authenticated address, peer operator domain, operator account, "relay"
    peer: str | None = None  # client IP
    queue_id: str | None = None
    message_id: str | None = None
    sha256: str | None = None
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    reason: str | None = None
    reply: str | None = None
    time: datetime = field(default_factory=utcnow)
    # The bytes the event is about, to keep in the archive's encrypted message store as a copy of this kind
    # ("received", "delivered"). Never part of the event itself: not logged, not hashed, not shown.
    body: bytes | None = field(default=None, repr=False, compare=False)
    copy: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, object]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_IN_EVENT}
        data["time"] = self.time.isoformat()
        data["recipients"] = list(self.recipients) if self.recipients else None
        return {k: v for k, v in data.items() if v not in (None, ())}


_NOT_IN_EVENT = frozenset({"body", "copy"})


EventSink = Callable[[Event], None]


class LogSink:
    """Writes each event as one JSON line to the ``mssecure.events`` logger (and on to ``forward``, if any)."""

    def __init__(self, forward: EventSink | None = None) -> None:
        self.log = logging.getLogger("mssecure.events")
        self.forward = forward

    def __call__(self, event: Event) -> None:
        self.log.info(json.dumps(event.to_json(), ensure_ascii=False, sort_keys=True))
        if self.forward is not None:
            self.forward(event)


class Journal:
    """The relay's one interface for recording decisions: every event goes to the log, and to the archive.

    ``journal(event)``: an event that changes no queue state (a refusal, a login), handed to ``archive`` (the
    background ``ArchiveWriter``: it returns at once). ``journal.within(connection, events)``: events that go with
    a change of the queue (accepted, delivered, deferred, bounced…), written by ``transactional`` in the queue's
    own transaction, so the queue and the archive never disagree; the queue calls ``journal.logged(events)`` once
    that transaction committed.
    """

    def __init__(
        self,
        *,
        archive: EventSink | None = None,
        transactional: Callable[[sa.Connection, Sequence[Event]], object] | None = None,
        keep: Callable[[sa.Connection, Event], object] | None = None,
        log: LogSink | None = None,
    ) -> None:
        self.archive = archive
        self.transactional = transactional
        self.keep = keep  # stores an event's body in the message store, in the same transaction
        self.log = log or LogSink()

    def __call__(self, event: Event) -> None:
        self.log(event)
        if self.archive is not None:
            self.archive(event)

    def within(self, connection: sa.Connection, events: Sequence[Event]) -> None:
        if events and self.transactional is not None:
            self.transactional(connection, events)
        if self.keep is not None:
            for event in events:
                if event.body is not None and event.copy is not None:
                    self.keep(connection, event)

    def logged(self, events: Sequence[Event]) -> None:
        for event in events:
            self.log(event)
