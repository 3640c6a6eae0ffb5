"""Signed evidence of what happened to one message: a JSON document anyone can check with the operator's public key
and nothing else — no database, no configuration, no trust in the operator's software.

The document (``type`` ``mssecure.archive.evidence``, ``v`` 1)::

    {"type": "mssecure.archive.evidence", "v": 1, "origin": "chu-nord.mssante.test", "key_id": "…", "created": "…",
     "statement": {…},                          what the events say, in plain fields (below)
     "events": [{…canonical event…}, …],        the archived events it is drawn from, exactly as hashed
     "proofs": [{"sequence": N, "path": […]}],  one RFC 9162 inclusion proof per event …
     "checkpoint": {…},                          … against this one signed checkpoint (signature included)
     "signature": "…"}                           Ed25519 by the archive key over the canonical JSON of all the rest

The statement is a pure function of the events (``statement_from_events``): the verifier recomputes it, so a
statement that says anything the events do not is refused even before its signature is looked at. Each event's leaf
hash is recomputed from its canonical form and proven to be in the tree whose root the checkpoint signs; the
checkpoint and the document are both checked against the key the auditor pins.

What the statement says of the message: its Message-ID; the SHA-256, envelope sender, authenticated actor and time of
its acceptance (``submission.accepted`` from a professional's client, ``inbound.accepted`` from a peer operator);
then for each recipient the outcome (``delivered``, ``relayed``, ``bounced``, ``deferred`` or ``accepted``, the
last meaning no outcome yet) and the times of relay, delivery, bounce, and the MDNs and DSNs received or sent about it.
An MDN event (``mdn.received`` / ``mdn.sent``) has the original Message-ID, the final recipient as its recipient,
and the disposition (``processed``, ``displayed``, ``dispatched``…) as its outcome; a DSN event likewise with the
action (``failed``, ``delayed``…).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from mssecure.archive.checkpoint import Checkpoint, key_id
from mssecure.archive.log import Archive
from mssecure.archive.proofs import (
    anchor_checkpoint,
    canonical_text,
    event_from_canonical,
    prove_events,
    verify_inclusion,
)
from mssecure.archive.records import FORMAT_VERSION, ArchivedEvent, ArchiveError, canonical_json, format_time

__all__ = [
    "EVIDENCE_TYPE",
    "Check",
    "EvidenceReport",
    "build_evidence",
    "load_evidence",
    "statement_from_events",
    "summary_lines",
    "verify_evidence",
]

EVIDENCE_TYPE = "mssecure.archive.evidence"
MAX_EVIDENCE_BYTES = 16 * 1024 * 1024  # a message's history is a few kilobytes; refuse to parse anything absurd
_ACCEPTED = ("submission.accepted", "inbound.accepted")
_NOTICES = ("mdn.received", "mdn.sent", "dsn.received", "dsn.sent")


def _message_ids(message_id: str) -> set[str]:
    bare = message_id.strip().strip("<>")
    return {message_id.strip(), bare, f"<{bare}>"}


def _recipients_in_order(events: Sequence[ArchivedEvent]) -> list[str]:
    seen: dict[str, str] = {}
    for event in sorted(events, key=lambda e: e.type not in _ACCEPTED):  # the accepted envelope's order first
        for recipient in event.recipients:
            seen.setdefault(recipient.lower(), recipient)
    return list(seen.values())


def _concerns(event: ArchivedEvent, recipient: str) -> bool:
    return not event.recipients or recipient.lower() in (r.lower() for r in event.recipients)


def statement_from_events(events: Sequence[ArchivedEvent], recipient: str | None = None) -> dict[str, Any]:
    """What ``events`` (about one message, in sequence order) say, as the evidence states it; narrowed to one
    recipient when ``recipient`` is given. Deterministic: the verifier computes it again from the events."""
    if not events:
        raise ArchiveError("no events: nothing to state")
    ordered = sorted(events, key=lambda e: e.sequence)
    accepted = [e for e in ordered if e.type in _ACCEPTED]
    first = accepted[0] if accepted else None
    message_id = next((e.message_id for e in ordered if e.message_id), None)
    sender = first.sender if first else next((e.sender for e in ordered if e.sender), None)
    everyone = _recipients_in_order(ordered)
    if recipient is not None:
        chosen = [r for r in everyone if r.lower() == recipient.lower()]
        if not chosen:
            raise ArchiveError(f"{recipient} is not a recipient of {message_id}")
        everyone = chosen
    return {
        "message_id": message_id,
        "sha256": first.sha256 if first else None,
        "sender": sender,
        "authenticated_as": first.actor if first else None,
        "accepted_via": first.type.partition(".")[0] if first else None,
        "submitted": format_time(first.time) if first else None,
        "accepted_again": [e.sequence for e in accepted[1:]],
        "recipient": recipient.lower() if recipient is not None else None,
        "recipients": [_recipient_statement(ordered, r) for r in everyone],
        "events": [e.sequence for e in ordered],
    }


def _recipient_statement(events: Sequence[ArchivedEvent], recipient: str) -> dict[str, Any]:
    mine = [e for e in events if e.recipients and _concerns(e, recipient)]

    def first_of(type_: str) -> ArchivedEvent | None:
        return next((e for e in mine if e.type == type_), None)

    relayed, delivered, bounced = first_of("relayed"), first_of("delivered"), first_of("bounced")
    deferrals = [e for e in mine if e.type == "deferred"]
    if bounced:
        outcome = "bounced"
    elif delivered:
        outcome = "delivered"
    elif relayed:
        outcome = "relayed"
    elif deferrals:
        outcome = "deferred"
    else:
        outcome = "accepted"
    return {
        "address": recipient,
        "outcome": outcome,
        "relayed": format_time(relayed.time) if relayed else None,
        "relay_reply": relayed.reply if relayed else None,
        "delivered": format_time(delivered.time) if delivered else None,
        "bounced": format_time(bounced.time) if bounced else None,
        "bounce_reason": bounced.reason if bounced else None,
        "deferrals": len(deferrals),
        "notifications": [
            {
                "kind": e.type.partition(".")[0],
                "direction": e.type.partition(".")[2],
                "outcome": e.outcome,
                "time": format_time(e.time),
                "by": e.actor,
            }
            for e in mine
            if e.type in _NOTICES
        ],
    }


def _signed_bytes(document: dict[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in document.items() if k != "signature"}).encode("utf-8")


def _message_events(archive: Archive, message_id: str, recipient: str | None) -> list[ArchivedEvent]:
    """The events about the message: those naming its Message-ID, and those naming none but one of its queue ids
    (the events of another message found through a shared queue id, such as the MDN it caused, are left out)."""
    wanted = _message_ids(message_id)
    history = archive.history(message_id)
    queue_ids = {q for e in history if e.message_id in wanted and e.queue_id for q in e.queue_id.split(",")}
    events = [
        e
        for e in history
        if e.message_id in wanted or (e.message_id is None and e.queue_id and set(e.queue_id.split(",")) & queue_ids)
    ]
    if recipient is not None:
        events = [e for e in events if e.type in _ACCEPTED or _concerns(e, recipient)]
    return events


def build_evidence(archive: Archive, public_key: ed25519.Ed25519PublicKey, message_id: str,
                   recipient: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The signed evidence document of a message (see the module). Needs the archive key (``archive.key``): it signs
    the document, and a checkpoint when none covers the message's last event yet."""
    if archive.key is None:
        raise ArchiveError("no archive key to sign the evidence with")
    if key_id(archive.key.public_key()) != key_id(public_key):
        raise ArchiveError("the archive key does not match the archive's public key")
    events = _message_events(archive, message_id, recipient)
    if not events:
        raise ArchiveError(f"no archived event for Message-ID {message_id}")
    statement = statement_from_events(events, recipient)
    checkpoint = anchor_checkpoint(archive, public_key, max(e.sequence for e in events))
    proofs = prove_events(archive, checkpoint, events)
    anchor = checkpoint.to_json()
    anchor.pop("id")
    document: dict[str, Any] = {
        "type": EVIDENCE_TYPE,
        "v": FORMAT_VERSION,
        "origin": archive.origin,
        "key_id": key_id(public_key),
        "created": format_time(archive.clock()),
        "statement": statement,
        "events": [json.loads(canonical_text(e)) for e in events],
        "proofs": [{"sequence": p.sequence, "path": list(p.path)} for p in proofs],
        "checkpoint": anchor,
    }
    document["signature"] = base64.b64encode(archive.key.sign(_signed_bytes(document))).decode("ascii")
    return document


# -- verification


@dataclass(frozen=True)
class Check:
    """One thing the verifier checked: its name, whether it holds, and what it found."""

    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class EvidenceReport:
    checks: list[Check] = field(default_factory=list)
    statement: dict[str, Any] | None = None  # as stated, once it is known to be the events'
    origin: str | None = None
    checkpoint: Checkpoint | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "origin": self.origin,
            "checks": [c.to_json() for c in self.checks],
            "statement": self.statement if self.ok else None,
            "checkpoint": self.checkpoint.to_json() if self.checkpoint else None,
        }


def load_evidence(path: Path) -> Any:
    """The JSON of an evidence file; a clear refusal when it is unreadable, too large or not JSON."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_EVIDENCE_BYTES + 1)
    except OSError as exc:
        raise ArchiveError(f"cannot read evidence file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_EVIDENCE_BYTES:
        raise ArchiveError(f"{path} is larger than {MAX_EVIDENCE_BYTES // (1024 * 1024)} MiB: not an evidence file")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArchiveError(f"{path} is not JSON: {exc}") from None
    except RecursionError:
        raise ArchiveError(f"{path} is nested too deeply to be an evidence document") from None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def verify_evidence(document: Any, public_key: ed25519.Ed25519PublicKey) -> EvidenceReport:
    """Check an evidence document against the operator's public key; every check is reported (``ok`` only when all
    hold). Never raises on a malformed document: what is wrong with it is a failed check."""
    try:
        return _verify(document, public_key)
    except RecursionError:  # a value nested thousands deep, which no evidence has: refused, not a crash
        report = EvidenceReport()
        report.add("format", False, "nested too deeply to be an evidence document")
        return report


def _verify(document: Any, public_key: ed25519.Ed25519PublicKey) -> EvidenceReport:
    report = EvidenceReport()
    if not isinstance(document, dict) or document.get("type") != EVIDENCE_TYPE:
        report.add("format", False, f'not an mssecure evidence document (no "type": "{EVIDENCE_TYPE}")')
        return report
    missing = [k for k in ("v", "origin", "key_id", "statement", "events", "proofs", "checkpoint", "signature")
               if k not in document]  # fmt: skip
    if missing:
        report.add("format", False, f"the document lacks {', '.join(missing)}")
        return report
    if document["v"] != FORMAT_VERSION:
        report.add("format", False, f"evidence version {document['v']!r} is not {FORMAT_VERSION}: unknown format")
        return report
    report.origin = str(document["origin"])
    expected = key_id(public_key)
    if document["key_id"] != expected:
        report.add("key", False, f"signed by another key ({str(document['key_id'])[:16]}…), not the operator key "
                                 f"given ({expected[:16]}…)")  # fmt: skip
    else:
        report.add("key", True, f"the operator key given ({expected[:16]}…)")
    try:
        signature = base64.b64decode(str(document["signature"]), validate=True)
        public_key.verify(signature, _signed_bytes(document))
        report.add("signature", True, "the document is signed by the operator key")
    except (binascii.Error, ValueError, InvalidSignature):
        report.add("signature", False, "the document's signature is not the operator key's over its contents: "
                                       "it was modified after signing, or signed by another key")  # fmt: skip
    checkpoint = _check_checkpoint(report, document, public_key)
    events = _check_events(report, document, checkpoint)
    if events is not None:
        _check_statement(report, document["statement"], events)
    return report


def _check_checkpoint(report: EvidenceReport, document: dict[str, Any],
                      public_key: ed25519.Ed25519PublicKey) -> Checkpoint | None:  # fmt: skip
    try:
        checkpoint = Checkpoint.from_json(document["checkpoint"])
    except ArchiveError as exc:
        report.add("checkpoint", False, str(exc))
        return None
    problem = checkpoint.signature_problem(public_key)
    if problem is None and checkpoint.tree_size != checkpoint.sequence:
        problem = f"tree size {checkpoint.tree_size} is not its sequence {checkpoint.sequence}"
    if problem is None and checkpoint.origin != document["origin"]:
        problem = f"it is the checkpoint of {checkpoint.origin}, not of {document['origin']}"
    if problem is not None:
        report.add("checkpoint", False, f"the checkpoint: {problem}")
        return None
    report.checkpoint = checkpoint
    report.add("checkpoint", True, f"signed checkpoint of {checkpoint.tree_size} events at "
                                   f"{format_time(checkpoint.time)}, root {checkpoint.root}")  # fmt: skip
    return checkpoint


def _check_events(report: EvidenceReport, document: dict[str, Any],
                  checkpoint: Checkpoint | None) -> list[ArchivedEvent] | None:  # fmt: skip
    raw_events, raw_proofs = document["events"], document["proofs"]
    if not isinstance(raw_events, list) or not raw_events or not isinstance(raw_proofs, list):
        report.add("events", False, "no events, or no list of proofs")
        return None
    proofs: dict[int, list[bytes]] = {}
    for proof in raw_proofs:
        try:
            sequence = proof["sequence"]
            if not isinstance(sequence, int) or isinstance(sequence, bool) or not _strings(proof["path"]):
                raise ValueError
            proofs[sequence] = [bytes.fromhex(h) for h in proof["path"]]
        except (KeyError, TypeError, ValueError):
            report.add("proofs", False, 'a proof is not {"sequence": N, "path": [hex, …]}')
            return None
    events: list[ArchivedEvent] = []
    for number, raw in enumerate(raw_events, start=1):
        try:
            event = event_from_canonical(raw)
        except ValueError as exc:
            report.add("events", False, f"event #{number} is not an archived event: {exc}")
            return None
        events.append(event)
    sequences = [e.sequence for e in events]
    if len(set(sequences)) != len(sequences) or sorted(sequences) != sequences:
        report.add("events", False, "the events are not in sequence order, or one is repeated")
        return None
    if set(proofs) != set(sequences) or len(raw_proofs) != len(proofs):
        report.add("proofs", False, "there is not exactly one proof per event")
        return None
    if checkpoint is None:
        report.add("proofs", False, "no valid checkpoint to check the inclusion proofs against")
        return events
    try:
        root = bytes.fromhex(checkpoint.root)
    except ValueError:
        report.add("proofs", False, "the checkpoint's root is not hexadecimal")
        return events
    for event in events:
        if not verify_inclusion(bytes.fromhex(event.hash), event.sequence - 1, checkpoint.tree_size,
                                proofs[event.sequence], root):  # fmt: skip
            report.add("proofs", False, f"event {event.sequence} is not in the signed checkpoint's tree: the event "
                                        "or its proof was modified")  # fmt: skip
            return events
    report.add("proofs", True, f"all {len(events)} events are in the signed tree (sequences "
                               f"{', '.join(str(s) for s in sequences)})")  # fmt: skip
    return events


def _check_statement(report: EvidenceReport, stated: Any, events: list[ArchivedEvent]) -> None:
    recipient = stated.get("recipient") if isinstance(stated, dict) else None
    try:
        computed = statement_from_events(events, recipient if isinstance(recipient, str) else None)
    except ArchiveError as exc:
        report.add("statement", False, f"the events do not give a statement: {exc}")
        return
    if computed != stated:
        differing = sorted(k for k in computed if not isinstance(stated, dict) or stated.get(k) != computed[k])
        what = ", ".join(differing) if differing else "its fields"
        report.add("statement", False, f"the statement is not what the events say ({what} differ)")
        return
    report.statement = computed
    report.add("statement", True, "the statement is exactly what the events say")


def summary_lines(statement: dict[str, Any]) -> list[str]:
    """The statement for a human reader, one fact per line."""
    lines = [f"Message {statement['message_id']}"]
    if statement["submitted"]:
        lines.append(f"  accepted ({statement['accepted_via']}) {statement['submitted']} from {statement['sender']}"
                     f", authenticated as {statement['authenticated_as']}")  # fmt: skip
    lines.append(f"  SHA-256 {statement['sha256'] or 'not recorded'}")
    for r in statement["recipients"]:
        lines.append(f"  to {r['address']}: {r['outcome']}")
        for name in ("relayed", "delivered", "bounced"):
            if r[name]:
                extra = f" ({r['bounce_reason']})" if name == "bounced" and r["bounce_reason"] else ""
                lines.append(f"    {name} {r[name]}{extra}")
        if r["deferrals"]:
            lines.append(f"    deferred {r['deferrals']} time(s)")
        for n in r["notifications"]:
            lines.append(f"    {n['kind'].upper()} {n['outcome']} {n['direction']} {n['time']} (by {n['by']})")
    return lines
