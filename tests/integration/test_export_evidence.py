"""Export bundles and evidence documents made from a real archive (SQLite and PostgreSQL), checked offline: they
verify as written, and every kind of tampering with the files fails, naming what is wrong and where."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import shutil
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from mssecure.archive import Archive, ArchiveError, Checkpoint, MessageStore, sign_checkpoint, verify_archive
from mssecure.archive.evidence import build_evidence, statement_from_events, verify_evidence
from mssecure.archive.export import ExportReport, ExportSummary, export_range, verify_export
from mssecure.archive.records import canonical_json
from mssecure.smtp.events import Event

START = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
KEY = ed25519.Ed25519PrivateKey.generate()
OTHER = ed25519.Ed25519PrivateKey.generate()  # another operator's archive key
ORIGIN = "chu-nord.mssante.test"
DOCTOR = "camille.lefevre@chu-nord.mssante.test"
PHARMACY = "pharmacie.centrale@officine.mssante.test"
NURSE = "infirmiere.dupont@chu-nord.mssante.test"
LAB = "labo@chu-sud.mssante.test"
RX = "<rx-1@chu-nord.mssante.test>"
SHA = "5a" * 32


def at(seconds: int) -> datetime:
    return START + timedelta(seconds=seconds)


def relay_trail() -> list[Event]:
    """What the relay archives for a prescription to a pharmacy (relayed to its operator, MDN displayed), a nurse
    (delivered locally) and a lab (deferred, then bounced), among other traffic."""
    relay: dict[str, Any] = {"actor": "relay", "message_id": RX, "sender": DOCTOR}
    return [
        Event("auth.ok", "ok", actor=DOCTOR, peer="192.0.2.7", time=at(0)),
        Event("submission.refused", "refused", actor=DOCTOR, sender=DOCTOR, recipients=("x@gmail.com",),
              reason="outside the trust space", reply="550 5.7.1 no", time=at(1)),
        Event("signed", "ok", queue_id="Q1,Q2,Q3", recipients=(PHARMACY, NURSE, LAB), time=at(2), **relay),
        Event("submission.accepted", "ok", actor=DOCTOR, peer="192.0.2.7", queue_id="Q1,Q2,Q3", message_id=RX,
              sha256=SHA, sender=DOCTOR, recipients=(PHARMACY, NURSE, LAB), reply="250 2.0.0 queued as Q1",
              time=at(3)),
        Event("auth.ok", "ok", actor=NURSE, time=at(4)),
        Event("relayed", "ok", queue_id="Q1", recipients=(PHARMACY,), sha256="77" * 32, reply="250 2.0.0 queued",
              peer="mx.officine.mssante.test:25", time=at(5), **relay),
        Event("delivered", "ok", queue_id="Q2", recipients=(NURSE,), reason="maildir 1.M1", time=at(6), **relay),
        Event("deferred", "deferred", queue_id="Q3", recipients=(LAB,), reason="451 try later", time=at(7), **relay),
        Event("mdn.sent", "processed", actor=NURSE, message_id=RX, sender=NURSE, recipients=(NURSE,),
              queue_id="Q9", reason=f"processed MDN to {DOCTOR}", time=at(8)),
        Event("delivered", "ok", actor="relay", queue_id="Q9", message_id="<mdn-1@chu-nord.mssante.test>",
              sender=NURSE, recipients=(DOCTOR,), time=at(9)),  # the MDN itself: another message
        Event("mdn.received", "displayed", actor=PHARMACY, message_id=RX, sender=PHARMACY, recipients=(PHARMACY,),
              reason="mdn displayed", time=at(10)),
        Event("bounced", "failed", queue_id="Q3", recipients=(LAB,), reason="5.4.7 delivery time expired",
              time=at(11), **relay),
        Event("dsn.sent", "failed", queue_id="Q8", recipients=(LAB,), reason=f"DSN to {DOCTOR}", time=at(12),
              **relay),
        *(Event("auth.ok", "ok", actor=NURSE, time=at(13 + i)) for i in range(20)),
    ]  # fmt: skip


@pytest.fixture
def archive(engine: Engine) -> Archive:
    archive = Archive(engine, key=KEY, origin=ORIGIN, clock=lambda: START + timedelta(days=1))
    archive.append_many(relay_trail())
    return archive


def execute(engine: Engine, sql: str, **params: object) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text(sql), params)


# -- evidence


def test_evidence_states_what_happened_and_verifies_offline(archive: Archive) -> None:
    document = build_evidence(archive, KEY.public_key(), "rx-1@chu-nord.mssante.test")
    offline = json.loads(json.dumps(document))  # as an auditor reads it from the file
    report = verify_evidence(offline, KEY.public_key())
    assert report.ok, report.checks
    assert [c.name for c in report.checks] == ["key", "signature", "checkpoint", "proofs", "statement"]
    statement = report.statement
    assert statement is not None
    assert (statement["message_id"], statement["sha256"], statement["sender"]) == (RX, SHA, DOCTOR)
    assert (statement["authenticated_as"], statement["accepted_via"]) == (DOCTOR, "submission")
    assert statement["submitted"] == "2026-11-23T09:00:03.000000+00:00"
    assert statement["events"] == [3, 4, 6, 7, 8, 9, 11, 12, 13]  # not the MDN's own delivery (10)
    pharmacy, nurse, lab = statement["recipients"]
    assert (pharmacy["address"], pharmacy["outcome"], pharmacy["relayed"]) == (
        PHARMACY,
        "relayed",
        "2026-11-23T09:00:05.000000+00:00",
    )
    assert pharmacy["relay_reply"] == "250 2.0.0 queued"
    assert pharmacy["notifications"] == [
        {
            "kind": "mdn",
            "direction": "received",
            "outcome": "displayed",
            "time": "2026-11-23T09:00:10.000000+00:00",
            "by": PHARMACY,
        }
    ]
    assert (nurse["outcome"], nurse["delivered"]) == ("delivered", "2026-11-23T09:00:06.000000+00:00")
    assert [n["outcome"] for n in nurse["notifications"]] == ["processed"]
    assert (lab["outcome"], lab["deferrals"], lab["bounce_reason"]) == ("bounced", 1, "5.4.7 delivery time expired")
    assert [(n["kind"], n["direction"]) for n in lab["notifications"]] == [("dsn", "sent")]
    # no checkpoint covered the message: one was signed, and the evidence is anchored in it
    assert [c.tree_size for c in archive.checkpoints()] == [document["checkpoint"]["tree_size"]] == [33]  # fmt: skip


def test_evidence_uses_an_existing_checkpoint(archive: Archive) -> None:
    stored = archive.checkpoint()
    archive.append(Event("auth.ok", "ok", actor=NURSE))
    document = build_evidence(archive, KEY.public_key(), RX)
    assert document["checkpoint"]["signature"] == stored.signature
    assert len(archive.checkpoints()) == 1
    assert verify_evidence(document, KEY.public_key()).ok


def test_evidence_for_one_recipient(archive: Archive) -> None:
    document = build_evidence(archive, KEY.public_key(), RX, recipient=NURSE.upper())
    report = verify_evidence(document, KEY.public_key())
    assert report.ok, report.checks
    assert report.statement is not None
    assert [r["address"] for r in report.statement["recipients"]] == [NURSE]
    assert report.statement["recipient"] == NURSE
    assert report.statement["events"] == [3, 4, 7, 9]  # nothing about the pharmacy or the lab but the acceptance
    with pytest.raises(ArchiveError, match="not a recipient"):
        build_evidence(archive, KEY.public_key(), RX, recipient="someone@x.test")


def test_unknown_message_and_missing_key_are_refused(archive: Archive, engine: Engine) -> None:
    with pytest.raises(ArchiveError, match="no archived event for Message-ID <nothing@x>"):
        build_evidence(archive, KEY.public_key(), "<nothing@x>")
    with pytest.raises(ArchiveError, match="no archive key"):
        build_evidence(Archive(engine, origin=ORIGIN), KEY.public_key(), RX)
    with pytest.raises(ArchiveError, match="does not match"):
        build_evidence(archive, OTHER.public_key(), RX)


def test_evidence_of_a_tampered_archive_is_refused(archive: Archive, engine: Engine) -> None:
    execute(engine, "UPDATE archive_events SET outcome = 'ok' WHERE sequence = 12")
    with pytest.raises(ArchiveError, match="event 12's fields do not give its hash"):
        build_evidence(archive, KEY.public_key(), RX)
    execute(engine, "UPDATE archive_events SET outcome = 'failed' WHERE sequence = 12")
    execute(engine, "UPDATE archive_events SET hash = :h WHERE sequence = 20", h="ab" * 32)  # not an event of RX
    with pytest.raises(ArchiveError, match="do not give the Merkle root"):
        build_evidence(archive, KEY.public_key(), RX)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        if not value:
            return "x"
        flipped = chr(ord(value[-1]) ^ 1)
        return value[:-1] + flipped
    if value is None:
        return "x"
    return ["x"]  # an empty list


def test_a_change_anywhere_in_the_evidence_fails(archive: Archive) -> None:
    document = build_evidence(archive, KEY.public_key(), RX)
    paths = list(_leaves(document))
    assert len(paths) > 150
    for path in paths:
        if path == ("created",):
            continue  # checked below: covered by the signature only
        forged = copy.deepcopy(document)
        target = forged
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = _changed(target[path[-1]])
        report = verify_evidence(forged, KEY.public_key())
        assert not report.ok, path
    forged = copy.deepcopy(document)
    forged["created"] = "2030-01-01T00:00:00.000000+00:00"
    failure = verify_evidence(forged, KEY.public_key()).first_failure
    assert failure is not None
    assert failure.name == "signature"


def test_a_lying_statement_fails_even_when_signed_by_the_operator(archive: Archive) -> None:
    """The key holder can sign anything, but not make the events say something else."""
    document = build_evidence(archive, KEY.public_key(), RX)
    document["statement"]["recipients"][2]["outcome"] = "delivered"
    body = {k: v for k, v in document.items() if k != "signature"}
    document["signature"] = base64.b64encode(KEY.sign(canonical_json(body).encode())).decode()
    report = verify_evidence(document, KEY.public_key())
    assert [(c.name, c.ok) for c in report.checks] == [
        ("key", True), ("signature", True), ("checkpoint", True), ("proofs", True), ("statement", False)
    ]  # fmt: skip
    assert "recipients differ" in report.checks[-1].detail


def test_an_event_dropped_from_the_evidence_fails(archive: Archive) -> None:
    document = build_evidence(archive, KEY.public_key(), RX)
    del document["events"][-2]  # the bounce
    assert not verify_evidence(document, KEY.public_key()).ok
    del document["proofs"][-2]
    report = verify_evidence(document, KEY.public_key())
    assert not report.ok
    assert {c.name for c in report.checks if not c.ok} == {"signature", "statement"}


def test_evidence_checked_with_another_operators_key_fails(archive: Archive) -> None:
    document = build_evidence(archive, KEY.public_key(), RX)
    report = verify_evidence(document, OTHER.public_key())
    assert [(c.name, c.ok) for c in report.checks][:3] == [("key", False), ("signature", False), ("checkpoint", False)]
    assert "another key" in report.checks[0].detail


def test_what_is_not_evidence_is_refused_without_raising() -> None:
    values: list[Any] = [None, [], "x", {"type": "mssecure.archive.checkpoint"}, {"type": "mssecure.archive.evidence"}]
    for value in values:
        report = verify_evidence(value, KEY.public_key())
        assert not report.ok
        assert report.checks[0].name == "format"


def test_the_statement_is_a_function_of_the_events(archive: Archive) -> None:
    events = archive.history(RX)
    assert statement_from_events(events) == statement_from_events(list(reversed(events)))
    with pytest.raises(ArchiveError, match="no events"):
        statement_from_events([])


# -- export


@pytest.fixture
def bundle(archive: Archive, tmp_path: Path) -> Path:
    """Events from 09:00:03 to 09:00:12 (sequences 4..12), with a checkpoint at 20 the proof is made against."""
    archive.checkpoint()
    archive.append(Event("auth.ok", "ok", actor=NURSE, time=at(40)))
    out = tmp_path / "bundle"
    summary = export_range(archive, KEY.public_key(), out, since=at(3), until=at(12))
    assert (summary.first_sequence, summary.last_sequence, summary.lines) == (4, 12, 11)
    assert summary.checkpoint.tree_size == 33
    return out


def findings(bundle: Path, key: ed25519.Ed25519PrivateKey | None = KEY) -> ExportReport:
    report = verify_export(bundle, key.public_key() if key else None)
    assert not report.ok
    return report


def lines(bundle: Path) -> list[str]:
    return (bundle / "events.jsonl").read_text().splitlines(keepends=True)


def rewrite(bundle: Path, new_lines: list[str], *, manifest_too: bool = True) -> None:
    """Write events.jsonl, and (as a careful forger would) its SHA-256 into the manifest."""
    (bundle / "events.jsonl").write_text("".join(new_lines))
    if manifest_too:
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["files"]["events.jsonl"] = hashlib.sha256((bundle / "events.jsonl").read_bytes()).hexdigest()
        (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_an_export_verifies_offline(bundle: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(bundle, moved)  # nothing refers to the database or the configuration
    report = verify_export(moved, KEY.public_key())
    assert report.ok, report.findings
    assert (report.first_sequence, report.last_sequence, report.events, report.lines) == (4, 12, 9, 11)
    assert report.pinned
    assert report.checkpoint is not None
    assert report.checkpoint.tree_size == 33
    assert sorted(p.name for p in bundle.iterdir()) == [
        "archive.pub", "checkpoints.json", "events.jsonl", "manifest.json", "proof.json"
    ]  # fmt: skip
    first_line = json.loads(lines(bundle)[0])
    assert (first_line["seq"], first_line["type"]) == (3, "signed")  # the edge: the event just before the range


def test_an_export_of_the_whole_log_and_of_its_end(archive: Archive, tmp_path: Path) -> None:
    whole = export_range(archive, KEY.public_key(), tmp_path / "whole")
    assert (whole.first_sequence, whole.last_sequence, whole.lines) == (1, 33, 33)
    assert verify_export(tmp_path / "whole", KEY.public_key()).ok
    (tmp_path / "empty").mkdir()
    end = export_range(archive, KEY.public_key(), tmp_path / "empty", since=at(30))
    assert (end.first_sequence, end.last_sequence, end.lines) == (31, 33, 4)
    assert verify_export(tmp_path / "empty", KEY.public_key()).ok


def test_export_refusals(archive: Archive, engine: Engine, tmp_path: Path) -> None:
    tmp_path = tmp_path / "exports"  # the SQLite database lives in tmp_path itself
    tmp_path.mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ArchiveError, match="not an empty directory"):
        export_range(archive, KEY.public_key(), tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(ArchiveError, match="no archived event between"):
        export_range(archive, KEY.public_key(), tmp_path / "none", since=at(1000))
    with pytest.raises(ArchiveError, match="no signed checkpoint covers event 33 yet"):
        export_range(Archive(engine, origin=ORIGIN), KEY.public_key(), tmp_path / "unsigned")
    execute(engine, "UPDATE archive_events SET sender = 'x@y' WHERE sequence = 5")
    with pytest.raises(ArchiveError, match="tampered"):
        export_range(archive, KEY.public_key(), tmp_path / "tampered")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # nothing left behind


def test_an_edited_line_is_found(bundle: Path) -> None:
    edited = lines(bundle)
    event = json.loads(edited[4])
    event["reason"] = "maildir 2.M2"
    edited[4] = canonical_json(event) + "\n"
    rewrite(bundle, edited)
    first = findings(bundle).first
    assert first is not None
    assert (first.file, first.line, first.sequence, first.kind) == ("events.jsonl", 5, 7, "edited")


def test_an_edited_line_is_found_without_the_manifest_update(bundle: Path) -> None:
    edited = lines(bundle)
    edited[2] = edited[2].replace('"outcome":"ok"', '"outcome":"refused"')
    rewrite(bundle, edited, manifest_too=False)
    report = findings(bundle)
    assert any(f.file == "events.jsonl" and f.kind == "manifest" for f in report.findings)
    assert report.first is not None
    assert (report.first.line, report.first.kind) == (3, "edited")


def test_an_edited_last_line_is_found_by_the_proof(bundle: Path) -> None:
    edited = lines(bundle)
    edited[-1] = edited[-1].replace('"outcome":"failed"', '"outcome":"ok"')
    assert edited[-1] != lines(bundle)[-1]
    rewrite(bundle, edited)
    first = findings(bundle).first
    assert first is not None
    assert (first.line, first.kind) == (11, "edited")
    assert "not in the tree" in first.detail


def test_a_dropped_line_is_found(bundle: Path) -> None:
    dropped = lines(bundle)
    del dropped[3]
    rewrite(bundle, dropped)
    first = findings(bundle).first
    assert first is not None
    assert (first.line, first.sequence, first.kind) == (4, 6, "missing")


def test_swapped_lines_are_found(bundle: Path) -> None:
    swapped = lines(bundle)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    rewrite(bundle, swapped)
    first = findings(bundle).first
    assert first is not None
    assert (first.line, first.kind) == (4, "reordered")


def test_a_truncated_tail_is_found(bundle: Path) -> None:
    rewrite(bundle, lines(bundle)[:-1])
    first = findings(bundle).first
    assert first is not None
    assert first.kind == "truncated"


def test_a_replaced_key_is_found(bundle: Path) -> None:
    pem = OTHER.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (bundle / "archive.pub").write_bytes(pem)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["archive.pub"] = hashlib.sha256(pem).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    pinned = findings(bundle)
    assert pinned.findings[0].kind == "key"
    assert "not the operator key given" in pinned.findings[0].detail
    unpinned = findings(bundle, None)  # checked against the bundle's key: the checkpoints are not signed by it
    assert {f.kind for f in unpinned.findings} >= {"key", "checkpoint"}


def test_a_bundle_forged_with_another_key_passes_only_unpinned(bundle: Path) -> None:
    """What the warning of an unpinned check is about: a forger who re-signs everything with their own key."""
    checkpoints = json.loads((bundle / "checkpoints.json").read_text())
    forged = []
    for data in checkpoints:
        c = Checkpoint.from_json(data)
        made = sign_checkpoint(OTHER, sequence=c.sequence, hash=c.hash, root=c.root, time=c.time, origin=c.origin)
        public = made.to_json()
        public.pop("id")
        forged.append(public)
    (bundle / "checkpoints.json").write_text(json.dumps(forged))
    pem = OTHER.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (bundle / "archive.pub").write_bytes(pem)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in ("checkpoints.json", "archive.pub"):
        manifest["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    manifest["key_id"] = hashlib.sha256(
        OTHER.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert verify_export(bundle, None).ok  # intact, but from whom? the pinned key says
    assert {f.kind for f in findings(bundle).findings} >= {"key", "checkpoint"}


def test_an_edited_manifest_is_found(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["last_sequence"] = 11
    manifest["events"] = 8
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert findings(bundle).first is not None
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["last_sequence"], manifest["events"] = 12, 9
    manifest["since"] = "2026-11-23T09:00:01.500000+00:00"  # the event before the range (09:00:02) is then inside it
    manifest["until"] = "2026-11-23T09:00:12.500000+00:00"  # and so is the one after (09:00:12)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    report = findings(bundle)
    assert [f.sequence for f in report.findings if f.kind == "manifest"] == [3, 13]


def test_an_extra_or_missing_file_is_found(bundle: Path) -> None:
    (bundle / "note.txt").write_text("x")
    assert [f.kind for f in findings(bundle).findings] == ["inserted"]
    (bundle / "note.txt").unlink()
    (bundle / "proof.json").unlink()
    assert "missing" in {f.kind for f in findings(bundle).findings}


def test_garbage_in_a_bundle_is_a_finding_not_a_crash(bundle: Path) -> None:
    rewrite(bundle, ["not json\n", *lines(bundle)[1:]])
    assert findings(bundle).first is not None
    rewrite(bundle, ["\xff" * 10 + "\n"])
    assert findings(bundle).first is not None
    (bundle / "manifest.json").write_text("[1, 2")
    report = findings(bundle)
    assert report.findings[0].file == "manifest.json"


# -- export with bodies

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["name", "sha256", "size", "why",
                                                                               "x"]), inner, max_size=4),
    max_leaves=8,
)  # fmt: skip
STORE_KEY = x25519.X25519PrivateKey.generate()
PRESCRIPTION = (
    f"From: {DOCTOR}\r\nTo: {PHARMACY}\r\nMessage-ID: {RX}\r\nSubject: ordonnance\r\n\r\n"
    "Amoxicilline 1 g, 3 fois par jour pendant 7 jours.\r\n"
).encode()
AS_DELIVERED = PRESCRIPTION.replace(b"\r\n\r\n", b"\r\nX-Mssecure-Verified: yes\r\n\r\n", 1)
OLD_REPORT = f"From: {LAB}\r\nTo: {DOCTOR}\r\nSubject: CR\r\n\r\nKaliemie 4.1 mmol/L\r\n".encode()
NEVER_STORED = "5a" * 32
OUTSIDE = b"From: x@chu-nord.mssante.test\r\n\r\noutside the range\r\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RecordingStore(MessageStore):
    """The real store, noting at each decryption how many ``archive.exported`` events the archive holds: what shows
    that the export is recorded before a body is written (and, with ``purge_on_write``, a purge racing it)."""

    def __init__(self, engine: Engine, archive: Archive, *, purge_on_write: bool = False) -> None:
        super().__init__(engine, private_key=STORE_KEY, clock=lambda: START + timedelta(days=2))
        self.archive = archive
        self.purge_on_write = purge_on_write
        self.exported_before_get: list[int] = []

    def get(self, sha256: str) -> bytes:
        recorded = len(list(self.archive.search(type="archive.exported")))
        self.exported_before_get.append(recorded)
        if recorded and self.purge_on_write:
            self.purge(START + timedelta(days=3))
        return super().get(sha256)


@pytest.fixture
def stored(engine: Engine) -> Archive:
    """A prescription stored as received and as delivered (and relayed: the same bytes again), a lab report whose
    body was purged, a message the store never held, and a stored message outside the range exported."""
    writer = MessageStore(engine, public_key=STORE_KEY.public_key(), clock=lambda: START)
    received = writer.put(PRESCRIPTION, kind="received", queue_id="Q1", message_id=RX)
    delivered = writer.put(AS_DELIVERED, kind="delivered", queue_id="Q1", message_id=RX, recipient=NURSE)
    old = MessageStore(engine, public_key=STORE_KEY.public_key(), clock=lambda: START - timedelta(days=400))
    report = old.put(OLD_REPORT, kind="received", queue_id="Q0", message_id="<cr-1@chu-sud.mssante.test>")
    outside = writer.put(OUTSIDE, kind="received", queue_id="Q7", message_id="<x@chu-nord.mssante.test>")
    purged = MessageStore(engine, clock=lambda: START + timedelta(hours=1)).purge(START - timedelta(days=365))
    assert purged.sha256s == (report,)
    archive = Archive(engine, key=KEY, origin=ORIGIN, clock=lambda: START + timedelta(days=1))
    archive.append_many([
        Event("auth.ok", "ok", actor=NURSE, time=at(0)),
        Event("submission.accepted", "ok", actor=DOCTOR, queue_id="Q1", message_id=RX, sha256=received,
              sender=DOCTOR, recipients=(NURSE, PHARMACY), time=at(1)),
        Event("delivered", "ok", actor="relay", queue_id="Q1", message_id=RX, sha256=delivered, recipients=(NURSE,),
              time=at(2)),
        Event("relayed", "ok", actor="relay", queue_id="Q1", message_id=RX, sha256=received, recipients=(PHARMACY,),
              time=at(3)),
        Event("inbound.accepted", "ok", actor="chu-sud.mssante.test", queue_id="Q0", sha256=report, sender=LAB,
              recipients=(DOCTOR,), time=at(4)),
        Event("submission.accepted", "ok", actor=DOCTOR, queue_id="Q5", sha256=NEVER_STORED, sender=DOCTOR,
              recipients=(PHARMACY,), time=at(5)),
        Event("submission.accepted", "ok", actor=DOCTOR, queue_id="Q7", sha256=outside, sender=DOCTOR,
              recipients=(PHARMACY,), time=at(20)),
    ])  # fmt: skip
    return archive


def export_bodies(archive: Archive, out: Path, **kwargs: Any) -> ExportSummary:
    store = kwargs.pop("store", None) or MessageStore(archive.engine, private_key=STORE_KEY)
    return export_range(archive, KEY.public_key(), out, store=store, actor="auditor-export", **kwargs)


@pytest.fixture
def with_bodies(stored: Archive, tmp_path: Path) -> Path:
    """Events 2..6 (09:00:01 to 09:00:10) with their bodies."""
    out = tmp_path / "with-bodies"
    summary = export_bodies(stored, out, since=at(1), until=at(10))
    assert (summary.first_sequence, summary.last_sequence, summary.bodies) == (2, 6, 2)
    return out


def manifest_of(bundle: Path) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads((bundle / "manifest.json").read_text()))


def write_manifest(bundle: Path, manifest: dict[str, Any]) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_an_export_with_bodies_holds_them_decrypted_and_verifies_offline(stored: Archive, tmp_path: Path) -> None:
    store = RecordingStore(stored.engine, stored)
    out = tmp_path / "with-bodies"
    summary = export_bodies(stored, out, since=at(1), until=at(10), store=store)
    assert (summary.bodies, summary.body_bytes) == (2, len(PRESCRIPTION) + len(AS_DELIVERED))
    assert [(a.sha256, a.why) for a in summary.absent] == [(sha(OLD_REPORT), "purged"), (NEVER_STORED, "not stored")]
    # each body opened once to check it, then, once the export was archived, again to be written
    assert store.exported_before_get == [0, 0, 1, 1]

    bodies = out / "bodies"
    assert stat.S_IMODE(bodies.stat().st_mode) == 0o700
    assert sorted(p.name for p in bodies.iterdir()) == sorted(f"{sha(m)}.eml" for m in (PRESCRIPTION, AS_DELIVERED))
    for message in (PRESCRIPTION, AS_DELIVERED):
        path = bodies / f"{sha(message)}.eml"
        assert path.read_bytes() == message
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (bodies / f"{sha(OUTSIDE)}.eml").exists()  # its event is outside the range

    manifest = manifest_of(out)
    section = manifest["bodies"]
    assert (section["count"], section["bytes"]) == (2, summary.body_bytes)
    assert section["files"] == [
        {"name": f"bodies/{sha(PRESCRIPTION)}.eml", "sha256": sha(PRESCRIPTION), "size": len(PRESCRIPTION)},
        {"name": f"bodies/{sha(AS_DELIVERED)}.eml", "sha256": sha(AS_DELIVERED), "size": len(AS_DELIVERED)},
    ]
    assert manifest["files"][f"bodies/{sha(PRESCRIPTION)}.eml"] == sha(PRESCRIPTION)
    purged, never = section["absent"]
    assert (purged["why"], purged["purged"]) == ("purged", "2026-11-23T10:00:00.000000+00:00")
    assert "purged from the message store on 2026-11-23 10:00:00 UTC" in purged["detail"]
    assert (never["sha256"], never["why"], never["purged"]) == (NEVER_STORED, "not stored", None)

    (exported,) = stored.search(type="archive.exported")
    assert exported.sequence == summary.exported_event == 8  # after the range and after the anchor's tree
    assert summary.checkpoint.tree_size == 7
    assert (exported.outcome, exported.actor) == ("ok", "auditor-export")
    assert exported.reason is not None
    assert exported.reason.startswith("events 2..6 (2026-11-23T09:00:01.000000+00:00 to 2026-11-23T09:00:10")
    assert f"2 message body(ies) ({summary.body_bytes} bytes) decrypted, 2 absent, written to {out}" in exported.reason
    assert b"Amoxicilline" not in json.dumps(exported.to_json()).encode()

    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    report = verify_export(moved, KEY.public_key())
    assert report.ok, report.findings
    assert (report.with_bodies, report.bodies, report.body_bytes) == (True, 2, summary.body_bytes)
    assert [a.why for a in report.absent_bodies] == ["purged", "not stored"]
    assert report.to_json()["bodies"]["files"] == 2
    assert verify_archive(stored.engine, KEY.public_key()).ok  # the exported event chains like any other


def test_an_export_with_bodies_up_to_now_verifies_and_so_does_the_next(stored: Archive, tmp_path: Path) -> None:
    """With no --until the range ends at the last event: the export's own event comes after it, and is in the
    range of the next export."""
    first = export_bodies(stored, tmp_path / "first", since=at(1))
    assert (first.last_sequence, first.checkpoint.tree_size, first.exported_event) == (7, 7, 8)
    report = verify_export(tmp_path / "first", KEY.public_key())
    assert report.ok, report.findings
    assert report.bodies == 3  # with the message at 09:00:20
    assert manifest_of(tmp_path / "first")["after"] is False
    second = export_bodies(stored, tmp_path / "second")
    assert (second.first_sequence, second.last_sequence, second.exported_event) == (1, 8, 9)
    assert verify_export(tmp_path / "second", KEY.public_key()).ok
    exported = [json.loads(line) for line in lines(tmp_path / "second") if '"archive.exported"' in line]
    assert [e["seq"] for e in exported] == [8]
    assert [e.sequence for e in stored.search(type="archive.exported")] == [8, 9]


def test_an_export_without_bodies_records_nothing(stored: Archive, tmp_path: Path) -> None:
    summary = export_range(stored, KEY.public_key(), tmp_path / "b", since=at(1), until=at(10))
    assert (summary.with_bodies, summary.exported_event) == (False, None)
    assert manifest_of(tmp_path / "b")["bodies"] is False
    assert not (tmp_path / "b" / "bodies").exists()
    assert list(stored.search(type="archive.exported")) == []


def test_a_body_purged_during_the_export_abandons_it(stored: Archive, tmp_path: Path) -> None:
    store = RecordingStore(stored.engine, stored, purge_on_write=True)
    tmp_path = tmp_path / "exports"
    tmp_path.mkdir()
    with pytest.raises(ArchiveError, match=r"was purged on .*: the export was abandoned and nothing was written"):
        export_bodies(stored, tmp_path / "b", since=at(1), until=at(10), store=store)
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary directory, no body
    ok, failed = stored.search(type="archive.exported")
    assert (ok.outcome, failed.outcome, failed.actor) == ("ok", "failed", "auditor-export")
    assert failed.reason is not None
    assert "abandoned, nothing left in" in failed.reason


def test_bodies_need_the_store_private_key(stored: Archive, tmp_path: Path) -> None:
    writer = MessageStore(stored.engine, public_key=STORE_KEY.public_key())
    with pytest.raises(ArchiveError, match="needs the message store's private key"):
        export_range(stored, KEY.public_key(), tmp_path / "b", store=writer, actor="x")
    assert not (tmp_path / "b").exists()


def test_a_body_sealed_for_another_store_key_is_listed_unreadable(stored: Archive, tmp_path: Path) -> None:
    other = x25519.X25519PrivateKey.generate()
    summary = export_range(stored, KEY.public_key(), tmp_path / "b", since=at(1), until=at(10),
                           store=MessageStore(stored.engine, private_key=other), actor="x")  # fmt: skip
    assert summary.bodies == 0
    assert [a.why for a in summary.absent] == ["unreadable", "unreadable", "purged", "not stored"]
    assert "sealed for another archive store key" in summary.absent[0].detail
    assert verify_export(tmp_path / "b", KEY.public_key()).ok


def test_a_tampered_body_is_a_finding_naming_it(with_bodies: Path) -> None:
    name = f"bodies/{sha(PRESCRIPTION)}.eml"
    path = with_bodies / name
    path.write_bytes(PRESCRIPTION.replace(b"1 g", b"2 g"))
    report = findings(with_bodies)
    assert [(f.file, f.kind) for f in report.findings] == [(name, "edited")]
    assert "the body was modified" in report.findings[0].detail
    assert report.first is not None
    assert str(report.first).startswith(f"{name}: edited: its SHA-256 is ")


def test_a_body_renamed_to_its_new_hash_is_named_by_no_event(with_bodies: Path) -> None:
    """The careful forger: the new bytes under their own hash, and the manifest rewritten to match."""
    forged = PRESCRIPTION.replace(b"1 g", b"2 g")
    (with_bodies / f"bodies/{sha(PRESCRIPTION)}.eml").unlink()
    (with_bodies / f"bodies/{sha(forged)}.eml").write_bytes(forged)
    manifest = manifest_of(with_bodies)
    old_name, new_name = f"bodies/{sha(PRESCRIPTION)}.eml", f"bodies/{sha(forged)}.eml"
    del manifest["files"][old_name]
    manifest["files"][new_name] = sha(forged)
    manifest["bodies"]["files"][0] = {"name": new_name, "sha256": sha(forged), "size": len(forged)}
    write_manifest(with_bodies, manifest)
    report = findings(with_bodies)
    assert [(f.file, f.kind) for f in report.findings] == [(new_name, "inserted"), (old_name, "missing")]
    assert report.findings[1].sequence == 2  # the event that names the prescription's bytes


def test_an_extra_body_file_is_a_finding_naming_it(with_bodies: Path) -> None:
    extra = f"bodies/{sha(OUTSIDE)}.eml"
    (with_bodies / extra).write_bytes(OUTSIDE)
    report = findings(with_bodies)
    assert [(f.file, f.kind) for f in report.findings] == [(extra, "inserted")]
    # listed in the manifest too: still no event of the range names it
    manifest = manifest_of(with_bodies)
    manifest["files"][extra] = sha(OUTSIDE)
    manifest["bodies"]["files"].append({"name": extra, "sha256": sha(OUTSIDE), "size": len(OUTSIDE)})
    manifest["bodies"]["count"] += 1
    manifest["bodies"]["bytes"] += len(OUTSIDE)
    write_manifest(with_bodies, manifest)
    report = findings(with_bodies)
    assert [(f.file, f.kind) for f in report.findings] == [(extra, "inserted")]
    assert "no event of the range names" in report.findings[0].detail


def test_a_missing_body_file_is_a_finding_naming_it(with_bodies: Path) -> None:
    name = f"bodies/{sha(AS_DELIVERED)}.eml"
    (with_bodies / name).unlink()
    assert [(f.file, f.kind) for f in findings(with_bodies).findings] == [(name, "missing")]
    manifest = manifest_of(with_bodies)  # and struck from the manifest: the event still names it
    del manifest["files"][name]
    manifest["bodies"]["files"] = manifest["bodies"]["files"][:1]
    manifest["bodies"]["count"], manifest["bodies"]["bytes"] = 1, len(PRESCRIPTION)
    write_manifest(with_bodies, manifest)
    report = findings(with_bodies)
    assert [(f.file, f.kind, f.sequence) for f in report.findings] == [(name, "missing", 3)]
    assert "neither in the bundle nor listed absent" in report.findings[0].detail


def test_a_manifest_that_disagrees_with_the_bodies_is_a_finding(with_bodies: Path) -> None:
    original = manifest_of(with_bodies)
    manifest = copy.deepcopy(original)
    manifest["bodies"]["files"][1]["size"] += 1
    manifest["bodies"]["bytes"] += 1
    write_manifest(with_bodies, manifest)
    name = f"bodies/{sha(AS_DELIVERED)}.eml"
    assert [(f.file, f.kind) for f in findings(with_bodies).findings] == [(name, "manifest")]
    manifest = copy.deepcopy(original)
    manifest["bodies"]["absent"][0]["sha256"] = "00" * 32  # a purged body swapped for one no event names
    write_manifest(with_bodies, manifest)
    details = [f.detail for f in findings(with_bodies).findings]
    assert any(f"lists body {'00' * 32} as absent" in d for d in details)
    assert any("neither in the bundle nor listed absent" in d for d in details)
    manifest = copy.deepcopy(original)
    manifest["bodies"] = False  # bodies/ then is not part of the export, nor are the files listed
    write_manifest(with_bodies, manifest)
    kinds = [(f.file, f.kind) for f in findings(with_bodies).findings]
    assert ("manifest.json", "inserted") in kinds
    assert sum(1 for k in kinds if k == ("manifest.json", "manifest")) == 2


def test_a_link_or_a_directory_in_bodies_is_a_finding(with_bodies: Path, tmp_path: Path) -> None:
    name = f"bodies/{sha(PRESCRIPTION)}.eml"
    target = tmp_path / "elsewhere.eml"
    target.write_bytes(PRESCRIPTION)
    (with_bodies / name).unlink()
    (with_bodies / name).symlink_to(target)
    (with_bodies / "bodies" / "sub").mkdir()
    report = findings(with_bodies)
    assert [(f.file, f.kind) for f in report.findings] == [(name, "format"), ("bodies/sub", "inserted")]
    assert "not a regular file" in report.findings[0].detail


def test_a_bodies_directory_in_an_export_without_bodies_is_a_finding(bundle: Path) -> None:
    (bundle / "bodies").mkdir()
    (bundle / "bodies" / f"{SHA}.eml").write_bytes(b"x")
    report = findings(bundle)
    assert [(f.file, f.kind) for f in report.findings] == [("manifest.json", "inserted")]
    assert "bodies" in report.findings[0].detail


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(replacement=_JSON, where=st.sampled_from(["bodies", "files", "absent", "entry"]))
def test_random_bodies_sections_are_reported_not_raised(with_bodies: Path, replacement: Any, where: str) -> None:
    original = manifest_of(with_bodies)
    manifest = copy.deepcopy(original)
    if where == "bodies":
        manifest["bodies"] = replacement
    elif where == "entry":
        manifest["bodies"]["files"][0] = replacement
    else:
        manifest["bodies"][where] = replacement
    if manifest == original:
        return
    try:
        write_manifest(with_bodies, manifest)
        assert not verify_export(with_bodies, KEY.public_key()).ok
    finally:
        write_manifest(with_bodies, original)


# -- untrusted input: random changes never crash the verifiers, and never pass

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_fuzz = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_fuzz
@given(draw=st.data())
def test_random_changes_to_evidence_are_reported_not_raised(archive: Archive, draw: st.DataObject) -> None:
    document = _document(archive)
    paths = [p for p in _all_paths(document) if p]
    path = draw.draw(st.sampled_from(paths))
    replacement = draw.draw(_json)
    forged = copy.deepcopy(document)
    target = forged
    for step in path[:-1]:
        target = target[step]
    if target[path[-1]] == replacement:
        return
    target[path[-1]] = replacement
    assert not verify_evidence(forged, KEY.public_key()).ok


_documents: dict[int, dict[str, Any]] = {}


def _document(archive: Archive) -> dict[str, Any]:
    """One evidence document per archive (hypothesis runs the test body many times on the same fixture)."""
    if id(archive) not in _documents:
        _documents.clear()
        _documents[id(archive)] = build_evidence(archive, KEY.public_key(), RX)
    return _documents[id(archive)]


def _all_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _all_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _all_paths(item, (*path, index))


def test_absurd_nesting_is_refused() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    report = verify_evidence({"type": "mssecure.archive.evidence", "v": 1, "origin": "x", "key_id": "x",
                              "statement": deep, "events": deep, "proofs": [], "checkpoint": {},
                              "signature": ""}, KEY.public_key())  # fmt: skip
    assert not report.ok


@_fuzz
@given(line=st.binary(max_size=200), where=st.integers(0, 10))
def test_random_lines_in_an_export_are_reported_not_raised(bundle: Path, line: bytes, where: int) -> None:
    original = (bundle / "events.jsonl").read_bytes()
    try:
        rows = original.split(b"\n")
        rows.insert(where, line)
        (bundle / "events.jsonl").write_bytes(b"\n".join(rows))
        assert not verify_export(bundle, KEY.public_key()).ok
    finally:
        (bundle / "events.jsonl").write_bytes(original)


def test_a_checkpoint_signed_with_garbage_is_a_finding(bundle: Path) -> None:
    """Whoever holds a key can sign nonsense: the verifier reports it (here, unpinned: the bundle's key is the
    forger's), it does not crash on it."""
    garbage = sign_checkpoint(OTHER, sequence=33, hash="zz", root="not hex", time=START, origin=ORIGIN).to_json()
    garbage.pop("id")
    (bundle / "checkpoints.json").write_text(json.dumps([garbage]))
    pem = OTHER.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (bundle / "archive.pub").write_bytes(pem)
    report = findings(bundle, None)
    assert any("not hexadecimal" in f.detail for f in report.findings)


def test_evidence_with_a_garbage_checkpoint_signed_by_the_key_fails(archive: Archive) -> None:
    document = build_evidence(archive, KEY.public_key(), RX)
    garbage = sign_checkpoint(KEY, sequence=33, hash="zz", root="not hex", time=START, origin=ORIGIN).to_json()
    garbage.pop("id")
    document["checkpoint"] = garbage
    report = verify_evidence(document, KEY.public_key())
    assert ("proofs", False, "the checkpoint's root is not hexadecimal") in [
        (c.name, c.ok, c.detail) for c in report.checks
    ]
