"""Archived events as values, and the canonical form their hashes cover.

Event hash (hex) = SHA-256(0x00 || E), where E is the UTF-8 bytes of this JSON object, keys sorted, no whitespace —
the output of RFC 8785 (JSON Canonicalization Scheme) for the value types used here (strings, integers, null,
arrays)::

    {"actor":…,"message_id":…,"outcome":…,"peer":…,"prev":…,"queue_id":…,"reason":…,"recipients":[…],
     "reply":…,"sender":…,"seq":…,"sha256":…,"time":…,"type":…,"v":1}

``seq`` is the event's sequence number, ``prev`` the hash of event ``seq - 1`` (64 zeros for event 1), ``time`` is
RFC 3339 UTC with microseconds (``2026-11-23T12:00:00.000000+00:00``), absent fields are ``null`` (every key is
always present), ``recipients`` an array of strings (possibly empty). ``v`` is the version of this form.

The 0x00 prefix makes the event hash exactly the RFC 9162 §2.1.1 leaf hash of E: the Merkle tree of the archive has
the events' canonical forms as its leaves, so its leaf hashes are the event hashes, and one SHA-256 per event serves
both the chain (through ``prev``) and the tree.
Checkpoints are signed over the same canonical JSON of their own fields (``checkpoint.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mssecure.errors import MssecureError

__all__ = [
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "ArchiveError",
    "ArchivedEvent",
    "canonical_event",
    "canonical_json",
    "event_hash",
    "format_time",
]

FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64  # the "previous hash" of event 1

_quote = json.encoder.encode_basestring  # a JSON string literal, escaped as JSONEncoder(ensure_ascii=False) does
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
canonical_json = _encoder.encode
"""The canonical JSON text of a value made of dicts, lists, strings, integers and null (see the module)."""


class ArchiveError(MssecureError):
    """An archive operation was refused, or the archive failed verification (the message says where and why)."""


def format_time(value: datetime) -> str:
    """The canonical form of an event time: RFC 3339, UTC, microseconds."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the archive")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_event(
    sequence: int,
    time: str,
    type: str,
    outcome: str,
    actor: str | None,
    peer: str | None,
    queue_id: str | None,
    message_id: str | None,
    sha256: str | None,
    sender: str | None,
    recipients_json: str,
    reason: str | None,
    reply: str | None,
    prev_hash: str,
) -> str:
    """The canonical JSON text of an event (see the module); ``time`` in its canonical text (``format_time``),
    ``recipients_json`` the canonical JSON text of the recipients array (``canonical_json(list)``), as stored.

    Written out key by key, in sorted order, rather than through ``json``'s encoder: ``verify`` calls it for every
    event, and this is about twice as fast; a property test checks it against ``canonical_json``.
    """
    q = _quote
    return (
        f'{{"actor":{"null" if actor is None else q(actor)},'
        f'"message_id":{"null" if message_id is None else q(message_id)},'
        f'"outcome":{q(outcome)},'
        f'"peer":{"null" if peer is None else q(peer)},'
        f'"prev":{q(prev_hash)},'
        f'"queue_id":{"null" if queue_id is None else q(queue_id)},'
        f'"reason":{"null" if reason is None else q(reason)},'
        f'"recipients":{recipients_json},'
        f'"reply":{"null" if reply is None else q(reply)},'
        f'"sender":{"null" if sender is None else q(sender)},'
        f'"seq":{sequence:d},'
        f'"sha256":{"null" if sha256 is None else q(sha256)},'
        f'"time":{q(time)},'
        f'"type":{q(type)},'
        f'"v":{FORMAT_VERSION:d}}}'
    )


def event_hash(canonical: str) -> str:
    """SHA-256(0x00 || canonical), hex: the event hash, which is also its RFC 9162 leaf hash."""
    return hashlib.sha256(b"\x00" + canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ArchivedEvent:
    """One event as the archive holds it: its place in the chain and everything its hash covers."""

    sequence: int
    time: datetime
    type: str
    outcome: str
    actor: str | None
    peer: str | None
    queue_id: str | None
    message_id: str | None
    sha256: str | None
    sender: str | None
    recipients: tuple[str, ...]
    reason: str | None
    reply: str | None
    prev_hash: str
    hash: str

    def computed_hash(self, sequence: int | None = None) -> str:
        """The hash this event's fields give (as if at ``sequence``, by default its own)."""
        return event_hash(
            canonical_event(
                self.sequence if sequence is None else sequence,
                format_time(self.time),
                self.type,
                self.outcome,
                self.actor,
                self.peer,
                self.queue_id,
                self.message_id,
                self.sha256,
                self.sender,
                canonical_json(list(self.recipients)),
                self.reason,
                self.reply,
                self.prev_hash,
            )
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "time": format_time(self.time),
            "type": self.type,
            "outcome": self.outcome,
            "actor": self.actor,
            "peer": self.peer,
            "queue_id": self.queue_id,
            "message_id": self.message_id,
            "sha256": self.sha256,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "reason": self.reason,
            "reply": self.reply,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }
