"""A self-contained, offline-verifiable bundle of a range of the archive (``archive export`` / ``verify-export``).

The bundle is a directory::

    manifest.json      what it holds: origin, key id, the time range asked, the sequence range, counts, and the
                       SHA-256 of every other file
    events.jsonl       one event per line, in sequence order, each line exactly the canonical form that was hashed
    checkpoints.json   the signed checkpoints the proof refers to (the anchor) and those that fall inside the range
    proof.json         an RFC 9162 inclusion proof of the last line's event in the anchor checkpoint's tree
    archive.pub        the operator's archive public key (PEM)
    bodies/            with ``--bodies`` only: ``<sha256>.eml``, each message body an event of the range names by its
                       SHA-256 and the message store still holds, decrypted (0700 directory, 0600 files)

Why that suffices: each event's hash covers the previous event's hash (``prev``), so once the **last** line is proven
to be in a tree the operator signed, every line before it is authenticated by the chain, down to the first. The
lines run from the event just before the range (when there is one) to the event just after it (when the anchor
checkpoint already covered it): the verifier sees that the event before is older than ``since`` and the one after is
not older than ``until``, so the range is complete at both ends; at the start of the log, the first event's ``prev``
is the genesis hash; with no event after, the anchor checkpoint ends at the last line, so nothing was left out there
either. ``manifest.json`` itself is not signed: everything it says is checked against what is.

Bodies need no signature of their own: a body file is authentic when its bytes hash to the SHA-256 an authenticated
event names, which is also its file name. The manifest lists each body file (its hash and size) and each body named
by the events that is absent, with why (purged on a date, never stored, unreadable): a body missing without a word,
added, or changed is a finding. Writing bodies decrypts health data out of the store, so the export first records an
``archive.exported`` event (who, which range, how many bodies, how many bytes); the events of the bundle are fixed
before it, so it falls after the range and no proof depends on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mssecure.archive.checkpoint import Checkpoint, key_id
from mssecure.archive.log import Archive, checkpoint_from_row, event_from_row
from mssecure.archive.models import ArchiveCheckpointRecord, ArchiveEventRecord
from mssecure.archive.proofs import (
    anchor_checkpoint,
    canonical_text,
    event_from_canonical,
    prove_events,
    verify_inclusion,
)
from mssecure.archive.records import (
    FORMAT_VERSION,
    GENESIS_HASH,
    ArchivedEvent,
    ArchiveError,
    canonical_json,
    event_hash,
    format_time,
)
from mssecure.archive.store import MessageStore
from mssecure.crypto.keys import create_private_file
from mssecure.smtp.events import Event

__all__ = [
    "EXPORTED_EVENT",
    "EXPORT_TYPE",
    "AbsentBody",
    "ExportFinding",
    "ExportReport",
    "ExportSummary",
    "export_range",
    "verify_export",
]

EXPORT_TYPE = "mssecure.archive.export"
EVENTS, CHECKPOINTS, PROOF, PUBLIC_KEY, MANIFEST = (
    "events.jsonl", "checkpoints.json", "proof.json", "archive.pub", "manifest.json"
)  # fmt: skip
_FILES = (EVENTS, CHECKPOINTS, PROOF, PUBLIC_KEY)
BODIES = "bodies"  # the directory of the decrypted message bodies, with --bodies
EXPORTED_EVENT = "archive.exported"
ABSENT_REASONS = ("purged", "not stored", "unreadable")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_LINE = 4 * 1024 * 1024  # an event is a few kilobytes; a longer line is not one
_MAX_JSON_FILE = 64 * 1024 * 1024
_BATCH = 5_000

_events = cast(sa.Table, ArchiveEventRecord.__table__)
_checkpoints = cast(sa.Table, ArchiveCheckpointRecord.__table__)


def _body_name(sha256: str) -> str:
    return f"{BODIES}/{sha256}.eml"


@dataclass(frozen=True)
class AbsentBody:
    """A body an event of the range names that is not in the bundle, and why: ``purged`` (on ``purged``), ``not
    stored`` (the store never had it: stored before the message store existed, or with ``store_messages`` off), or
    ``unreadable`` (sealed for another store key, or failing its integrity check: ``detail`` says which)."""

    sha256: str
    why: str
    detail: str
    purged: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "why": self.why, "purged": format_time(self.purged) if self.purged else None,
                "detail": self.detail}  # fmt: skip


@dataclass(frozen=True)
class ExportSummary:
    """What ``export_range`` wrote; with bodies, how many (and their plaintext bytes), those absent, and the
    sequence of the ``archive.exported`` event recorded before the first was written."""

    directory: Path
    first_sequence: int
    last_sequence: int
    lines: int
    checkpoint: Checkpoint
    with_bodies: bool = False
    bodies: int = 0
    body_bytes: int = 0
    absent: tuple[AbsentBody, ...] = ()
    exported_event: int | None = None

    @property
    def events(self) -> int:
        return self.last_sequence - self.first_sequence + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "first_sequence": self.first_sequence,
            "last_sequence": self.last_sequence,
            "events": self.events,
            "lines": self.lines,
            "checkpoint": self.checkpoint.to_json(),
            "bodies": {
                "files": self.bodies,
                "bytes": self.body_bytes,
                "absent": [a.to_json() for a in self.absent],
                "exported_event": self.exported_event,
            }
            if self.with_bodies
            else None,
        }


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _range(archive: Archive, since: datetime | None, until: datetime | None) -> tuple[int, int]:
    """The sequences of the range: from the first event at or after ``since`` to the last event before ``until``
    (times are the relay's clocks, which several nodes may interleave slightly: every event in between is part of
    the range whatever its time)."""
    with archive.engine.connect() as connection:
        first_query = sa.select(sa.func.min(_events.c.sequence))
        last_query = sa.select(sa.func.max(_events.c.sequence))
        if since is not None:
            first_query = first_query.where(_events.c.time >= since)
        if until is not None:
            last_query = last_query.where(_events.c.time < until)
        first = connection.execute(first_query).scalar_one_or_none()
        last = connection.execute(last_query).scalar_one_or_none()
    if first is None or last is None or first > last:
        shown = f"between {format_time(since) if since else 'the start'} and {format_time(until) if until else 'now'}"
        raise ArchiveError(f"no archived event {shown}: nothing to export")
    return int(first), int(last)


def _stream(archive: Archive, first: int, last: int) -> Generator[ArchivedEvent, None, None]:
    query = (
        sa.select(_events)
        .where(_events.c.sequence >= first, _events.c.sequence <= last)
        .order_by(_events.c.sequence)
        .execution_options(stream_results=True, yield_per=_BATCH)
    )
    with archive.engine.connect() as connection, connection.execute(query) as rows:  # closes the server cursor
        for row in rows:
            yield event_from_row(row._mapping)


def _check_out(out: Path) -> None:
    """Refuses a non-empty ``out`` (before anything is done), so that an export never mixes with or overwrites
    other files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ArchiveError(f"{out} exists and is not an empty directory: choose a new one")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise ArchiveError(f"{parent} is not a directory")


def _prepare(out: Path) -> Path:
    """A fresh directory next to ``out`` to write into, renamed to ``out`` once complete: an interrupted export
    leaves no half-written bundle under the name given."""
    _check_out(out)
    parent = out.absolute().parent
    try:
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    except OSError as exc:
        raise ArchiveError(f"cannot write in {parent}: {exc.strerror or exc}") from None


def export_range(
    archive: Archive,
    public_key: ed25519.Ed25519PublicKey,
    out: Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    store: MessageStore | None = None,
    actor: str | None = None,
) -> ExportSummary:
    """Write the bundle of the events from ``since`` (inclusive) to ``until`` (exclusive) into the new directory
    ``out``. Signs a checkpoint first when none covers the range yet (``archive.key`` is needed then). Refuses, with
    nothing written, when the stored events do not verify (the chain, their hashes, the checkpoint's root).

    ``store`` (opened with its private key): also write, decrypted, every body the events of the range name by
    SHA-256, after recording an ``archive.exported`` event naming ``actor`` (the operator account)."""
    if store is not None and (store.private_key is None or not actor):
        raise ArchiveError("exporting bodies needs the message store's private key and the operator account")
    _check_out(out)
    first, last = _range(archive, since, until)
    anchor = anchor_checkpoint(archive, public_key, last)
    lower = first - 1 if first > 1 else first
    upper = last + 1 if anchor.tree_size > last else last
    scope = f"events {first}..{last} ({_shown(since, until)})"
    bodies = _Bodies() if store is not None else None
    work = _prepare(out)
    try:
        named: dict[str, int] = {}
        tail = _write_events(archive, work / EVENTS, lower, upper, named=named, first=first, last=last)
        proof = prove_events(archive, anchor, [tail])[0]
        _write_json(work / PROOF, proof.to_json())
        _write_json(work / CHECKPOINTS, [_public(c) for c in _checkpoints_for(archive, public_key, lower, anchor)])
        (work / PUBLIC_KEY).write_bytes(
            public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        files = {name: _sha256_file(work / name) for name in _FILES}
        if store is not None and bodies is not None:
            assert actor is not None  # checked above
            _write_bodies(archive, store, actor, work, named, bodies, f"{scope} with", out)
            files.update((_body_name(sha), sha) for sha, _size in bodies.written)
        manifest = {
            "type": EXPORT_TYPE,
            "v": FORMAT_VERSION,
            "origin": archive.origin,
            "key_id": key_id(public_key),
            "created": format_time(archive.clock()),
            "since": format_time(since) if since else None,
            "until": format_time(until) if until else None,
            "first_sequence": first,
            "last_sequence": last,
            "events": last - first + 1,
            "before": lower < first,
            "after": upper > last,
            "lines": upper - lower + 1,
            "bodies": bodies.to_json() if bodies is not None else False,
            "files": files,
        }
        _write_json(work / MANIFEST, manifest)
        os.replace(work, out)  # onto a missing or empty directory: POSIX rename(2) replaces an empty one
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if bodies is None or bodies.event is None:
            raise
        # The archive says bodies were exported: it must also say that none of them was left anywhere.
        problem = str(exc) or type(exc).__name__  # KeyboardInterrupt says nothing
        if isinstance(exc, OSError) and exc.strerror:
            problem = f"cannot write the bundle: {exc.strerror}"
        reason = f"{scope}: abandoned, nothing left in {out.absolute()}: {problem}"
        archive.append(Event(EXPORTED_EVENT, "failed", actor=actor, reason=reason, time=archive.clock()))
        if not isinstance(exc, Exception):
            raise
        raise ArchiveError(f"{problem}: the export was abandoned and nothing was written") from None
    if bodies is None:
        return ExportSummary(out, first, last, upper - lower + 1, anchor)
    return ExportSummary(out, first, last, upper - lower + 1, anchor, True, len(bodies.written), bodies.bytes,
                         tuple(bodies.absent), bodies.event)  # fmt: skip


def _shown(since: datetime | None, until: datetime | None) -> str:
    return f"{format_time(since) if since else 'the start'} to {format_time(until) if until else 'now'}"


@dataclass
class _Bodies:
    """The bodies written into a bundle (hash, size), those absent, and the ``archive.exported`` event."""

    written: list[tuple[str, int]] = field(default_factory=list)
    absent: list[AbsentBody] = field(default_factory=list)
    event: int | None = None

    @property
    def bytes(self) -> int:
        return sum(size for _sha, size in self.written)

    def to_json(self) -> dict[str, Any]:
        return {
            "count": len(self.written),
            "bytes": self.bytes,
            "files": [{"name": _body_name(sha), "sha256": sha, "size": size} for sha, size in self.written],
            "absent": [a.to_json() for a in self.absent],
        }


def _absence(store: MessageStore, sha256: str) -> tuple[AbsentBody | None, int]:
    """Why the store cannot give this body (None: it can), and its size. A body that looks live is opened and its
    hash checked here, before anything is recorded or written, so that the archived count is what gets exported."""
    if not _SHA256_HEX.fullmatch(sha256):
        return AbsentBody(sha256, "not stored", "not a SHA-256: the message store holds no such body"), 0
    info = store.body(sha256)
    if info is None:
        return AbsentBody(sha256, "not stored", "the message store never held this body"), 0
    if info.purged_at is not None:
        when = f"{info.purged_at:%Y-%m-%d %H:%M:%S} UTC"
        return AbsentBody(sha256, "purged", f"purged from the message store on {when}", info.purged_at), 0
    try:
        size = len(store.get(sha256))
    except ArchiveError as exc:
        return AbsentBody(sha256, "unreadable", str(exc)), 0
    return None, size


def _write_bodies(archive: Archive, store: MessageStore, actor: str, work: Path, named: dict[str, int],
                  bodies: _Bodies, scope: str, out: Path) -> None:  # fmt: skip
    """Decrypt into ``work/bodies`` each body ``named`` by the events, once the export is archived; fills ``bodies``.

    The ``archive.exported`` event is appended before the first byte of a body is written (as ``show --body``
    does): the events of the bundle were read already, so it falls after the range and changes none of its proofs.
    Should the export fail after it (a body purged in between by a purge running at the same time, a full disk),
    ``export_range`` removes everything and records a second, ``failed``, event."""
    for sha256 in named:
        absent, size = _absence(store, sha256)
        if absent is None:
            bodies.written.append((sha256, size))
        else:
            bodies.absent.append(absent)
    where = out.absolute()
    reason = (f"{scope} {len(bodies.written)} message body(ies) ({bodies.bytes} bytes) decrypted, "
              f"{len(bodies.absent)} absent, written to {where}")  # fmt: skip
    bodies.event = archive.append(Event(EXPORTED_EVENT, "ok", actor=actor, reason=reason, time=archive.clock()))
    directory = work / BODIES
    directory.mkdir(mode=0o700)
    directory.chmod(0o700)  # whatever the umask: the directory holds patient data
    for sha256, _size in bodies.written:
        create_private_file(directory / f"{sha256}.eml", store.get(sha256))


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _public(checkpoint: Checkpoint) -> dict[str, Any]:
    data = checkpoint.to_json()
    data.pop("id")
    return data


def _write_events(archive: Archive, path: Path, lower: int, upper: int, *, named: dict[str, int], first: int,
                  last: int) -> ArchivedEvent:  # fmt: skip
    """Write events lower..upper as canonical lines, checking as they go that they chain and match their hashes;
    returns the last one. Fills ``named`` with the SHA-256 values the events first..last name (the range's bodies),
    each with the first sequence that names it."""
    expected, prev, tail = lower, None, None
    with path.open("w", encoding="utf-8", newline="\n") as stream, closing(_stream(archive, lower, upper)) as events:
        for event in events:
            text = canonical_text(event)
            if event.sequence != expected or event_hash(text) != event.hash or (prev and event.prev_hash != prev):
                raise ArchiveError(
                    f"event {expected} does not verify: the archive was tampered with (run `mssecure archive verify`)"
                )
            stream.write(text + "\n")
            if event.sha256 is not None and first <= event.sequence <= last:
                named.setdefault(event.sha256, event.sequence)
            prev, tail, expected = event.hash, event, expected + 1
    if tail is None or tail.sequence != upper:
        raise ArchiveError(f"event {expected} is missing from the archive (run `mssecure archive verify`)")
    return tail


def _checkpoints_for(
    archive: Archive, public_key: ed25519.Ed25519PublicKey, lower: int, anchor: Checkpoint
) -> list[Checkpoint]:
    """The anchor, and the validly signed checkpoints whose tree ends inside the exported lines (their chain hash
    is then checked against the lines: more signatures vouching for the same events)."""
    with archive.engine.connect() as connection:
        rows = connection.execute(
            sa.select(_checkpoints)
            .where(_checkpoints.c.tree_size >= lower, _checkpoints.c.tree_size < anchor.tree_size)
            .order_by(_checkpoints.c.tree_size, _checkpoints.c.id)
        )
        inside = [checkpoint_from_row(r._mapping) for r in rows]
    kept = [c for c in inside if c.signature_problem(public_key) is None and c.tree_size == c.sequence]
    return [*kept, anchor]


# -- verification


@dataclass(frozen=True)
class ExportFinding:
    """What is wrong with a bundle: in which file (and line, and event), of which kind."""

    file: str
    kind: str  # edited, missing, reordered, inserted, truncated, key, checkpoint, proof, manifest, format
    # (for a file of bodies/: edited, missing, inserted, manifest, format)
    detail: str
    line: int | None = None
    sequence: int | None = None

    def __str__(self) -> str:
        where = self.file + (f" line {self.line}" if self.line is not None else "")
        where += f" (sequence {self.sequence})" if self.sequence is not None else ""
        return f"{where}: {self.kind}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "sequence": self.sequence, "kind": self.kind,
                "detail": self.detail}  # fmt: skip


@dataclass
class ExportReport:
    origin: str | None = None
    key_id: str | None = None
    pinned: bool = False  # checked against a key the auditor gave, not only the bundle's own
    first_sequence: int | None = None
    last_sequence: int | None = None
    since: str | None = None
    until: str | None = None
    lines: int = 0
    checkpoint: Checkpoint | None = None
    checkpoints: int = 0
    with_bodies: bool = False
    bodies: int = 0  # body files checked: each hashes to its name, which an event of the range names
    body_bytes: int = 0
    absent_bodies: list[AbsentBody] = field(default_factory=list)  # as the manifest states them (unverifiable)
    findings: list[ExportFinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first(self) -> ExportFinding | None:
        """The most precise finding: one naming a line if any, else the first."""
        located = [f for f in self.findings if f.line is not None]
        return located[0] if located else (self.findings[0] if self.findings else None)

    @property
    def events(self) -> int:
        if self.first_sequence is None or self.last_sequence is None:
            return 0
        return self.last_sequence - self.first_sequence + 1

    def fail(self, file: str, kind: str, detail: str, *, line: int | None = None, sequence: int | None = None) -> None:
        self.findings.append(ExportFinding(file, kind, detail, line, sequence))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "origin": self.origin,
            "key_id": self.key_id,
            "pinned": self.pinned,
            "first_sequence": self.first_sequence,
            "last_sequence": self.last_sequence,
            "events": self.events,
            "since": self.since,
            "until": self.until,
            "lines": self.lines,
            "checkpoints": self.checkpoints,
            "checkpoint": self.checkpoint.to_json() if self.checkpoint else None,
            "bodies": {
                "files": self.bodies,
                "bytes": self.body_bytes,
                "absent": [a.to_json() for a in self.absent_bodies],
            }
            if self.with_bodies
            else None,
            "first": self.first.to_json() if self.first else None,
            "findings": [f.to_json() for f in self.findings],
        }


def _read_json(report: ExportReport, directory: Path, name: str) -> Any:
    path = directory / name
    try:
        if path.stat().st_size > _MAX_JSON_FILE:
            report.fail(name, "format", "too large to be part of an export")
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.fail(name, "missing", "the file is missing from the bundle")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
        report.fail(name, "format", f"not readable JSON: {exc}")
    return None


def _bundle_key(report: ExportReport, directory: Path) -> ed25519.Ed25519PublicKey | None:
    try:
        key = serialization.load_pem_public_key((directory / PUBLIC_KEY).read_bytes())
    except FileNotFoundError:
        report.fail(PUBLIC_KEY, "missing", "the file is missing from the bundle")
        return None
    except (OSError, ValueError):
        report.fail(PUBLIC_KEY, "key", "not a PEM public key")
        return None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        report.fail(PUBLIC_KEY, "key", "not an Ed25519 public key")
        return None
    return key


def verify_export(directory: Path, operator_key: ed25519.Ed25519PublicKey | None = None) -> ExportReport:
    """Check a bundle with nothing but its files (and, better, the operator's key, pinned by the auditor). Every
    discrepancy is a finding naming the file, and for events the line and sequence; never raises on bad content."""
    report = ExportReport(pinned=operator_key is not None)
    if not directory.is_dir():
        raise ArchiveError(f"{directory} is not a directory")
    manifest = _read_json(report, directory, MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("type") != EXPORT_TYPE or manifest.get("v") != FORMAT_VERSION:
        if manifest is not None:
            report.fail(MANIFEST, "format", f"not the manifest of an mssecure export (type {EXPORT_TYPE}, v 1)")
        return report
    report.origin = str(manifest.get("origin"))
    report.since, report.until = manifest.get("since"), manifest.get("until")
    _check_files(report, directory, manifest)
    bundled = _bundle_key(report, directory)
    key = operator_key or bundled
    if key is None:
        return report
    report.key_id = key_id(key)
    if operator_key is not None and bundled is not None and key_id(bundled) != report.key_id:
        report.fail(PUBLIC_KEY, "key", f"the bundle's key ({key_id(bundled)[:16]}…) is not the operator key given "
                                       f"({report.key_id[:16]}…)")  # fmt: skip
    if manifest.get("key_id") != report.key_id:
        report.fail(MANIFEST, "key", f"names key {str(manifest.get('key_id'))[:16]}…, not {report.key_id[:16]}…")
    checkpoints = _check_checkpoints(report, directory, key)
    proof = _read_json(report, directory, PROOF)
    named = _check_events(report, directory, manifest, checkpoints, proof)
    _check_bodies(report, directory, manifest, named)
    return report


def _check_files(report: ExportReport, directory: Path, manifest: dict[str, Any]) -> None:
    """The files every bundle has (the bodies are ``_check_bodies``'): there, as hashed in the manifest, and nothing
    else beside them."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not set(_FILES) <= set(files):
        report.fail(MANIFEST, "manifest", f"does not list the files {', '.join(_FILES)}")
        return
    for name in _FILES:
        path = directory / name
        if not path.is_file():
            report.fail(name, "missing", "the file is missing from the bundle")
        elif _sha256_file(path) != files[name]:
            report.fail(name, "manifest", "its SHA-256 is not the one in manifest.json: modified after the export")
    expected = (*_FILES, MANIFEST, BODIES) if isinstance(manifest.get("bodies"), dict) else (*_FILES, MANIFEST)
    extra = sorted(p.name for p in directory.iterdir() if p.name not in expected)
    if extra:
        report.fail(MANIFEST, "inserted", f"files not part of the export: {', '.join(extra)}")


def _check_checkpoints(report: ExportReport, directory: Path, key: ed25519.Ed25519PublicKey) -> dict[int, Checkpoint]:
    """The validly signed checkpoints of the bundle, by tree size."""
    data = _read_json(report, directory, CHECKPOINTS)
    if data is None:
        return {}
    if not isinstance(data, list):
        report.fail(CHECKPOINTS, "format", "not a list of checkpoints")
        return {}
    valid: dict[int, Checkpoint] = {}
    for number, item in enumerate(data, start=1):
        try:
            checkpoint = Checkpoint.from_json(item)
        except ArchiveError as exc:
            report.fail(CHECKPOINTS, "format", f"checkpoint #{number}: {exc}")
            continue
        problem = checkpoint.signature_problem(key)
        if problem is None and checkpoint.tree_size != checkpoint.sequence:
            problem = f"tree size {checkpoint.tree_size} is not its sequence {checkpoint.sequence}"
        if problem is None and checkpoint.origin != report.origin:
            problem = f"a checkpoint of {checkpoint.origin}, not of {report.origin}"
        if problem is not None:
            report.fail(CHECKPOINTS, "checkpoint", f"checkpoint #{number} (sequence {checkpoint.sequence}): {problem}")
            continue
        valid[checkpoint.tree_size] = checkpoint
    report.checkpoints = len(valid)
    return valid


def _lines(stream: IO[bytes]) -> Iterator[bytes | None]:
    """The lines of events.jsonl without their newline; None for a line too long to be an event."""
    while True:
        line = stream.readline(_MAX_LINE + 1)
        if not line:
            return
        if len(line) > _MAX_LINE:
            while line and not line.endswith(b"\n"):  # skip the rest of it
                line = stream.readline(_MAX_LINE + 1)
            yield None
            continue
        yield line[:-1] if line.endswith(b"\n") else line


def _sequences_after(stream: IO[bytes]) -> set[int]:
    """The sequence numbers of the lines left (read only to tell a line moved further from a line removed)."""
    found: set[int] = set()
    for raw in _lines(stream):
        try:
            value = json.loads(raw.decode("utf-8")) if raw is not None else None
        except (UnicodeDecodeError, ValueError, RecursionError):
            continue
        if isinstance(value, dict) and isinstance(value.get("seq"), int):
            found.add(value["seq"])
    return found


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_events(report: ExportReport, directory: Path, manifest: dict[str, Any],
                  checkpoints: dict[int, Checkpoint], proof: Any) -> dict[str, int] | None:  # fmt: skip
    """The chain pass over events.jsonl, then the proof of its last line, then the edges of the range. Returns the
    SHA-256 values the events of the range name (each with the first sequence naming it) when every line was read
    and chained, else None (a finding says why)."""
    first, last = _int(manifest.get("first_sequence")), _int(manifest.get("last_sequence"))
    before, after = manifest.get("before") is True, manifest.get("after") is True
    if first is None or last is None or first < 1 or last < first:
        report.fail(MANIFEST, "manifest", "first_sequence and last_sequence are not a range of sequences")
        return None
    report.first_sequence, report.last_sequence = first, last
    lower = first - 1 if before else first
    expected, prev_hash, tail, count = lower, None, None, 0
    try:
        stream = (directory / EVENTS).open("rb")
    except OSError:
        return None  # reported by _check_files
    by_sequence: dict[int, ArchivedEvent] = {}  # the edges and the checkpointed ones, to check afterwards
    named: dict[str, int] = {}
    with stream:
        for number, raw in enumerate(_lines(stream), start=1):
            count = number
            if raw is None:
                report.fail(EVENTS, "format", "a line too long to be an event", line=number)
                return None
            try:
                value = json.loads(raw.decode("utf-8"))
                event = event_from_canonical(value)
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                report.fail(EVENTS, "edited", f"not an archived event: {exc}", line=number)
                return None
            if canonical_json(value).encode("utf-8") != raw:
                report.fail(EVENTS, "edited", "the line is not in canonical form (it was rewritten)", line=number,
                            sequence=event.sequence)  # fmt: skip
                return None
            if event.sequence != expected:
                if event.sequence > expected and expected not in _sequences_after(stream):
                    span = f"event {expected} is" if event.sequence == expected + 1 else \
                        f"events {expected}..{event.sequence - 1} are"  # fmt: skip
                    report.fail(EVENTS, "missing", f"{span} missing: line {number} holds event {event.sequence}",
                                line=number, sequence=expected)  # fmt: skip
                else:
                    report.fail(EVENTS, "reordered", f"line {number} holds event {event.sequence} where event "
                                f"{expected} belongs (lines swapped, moved or repeated)", line=number,
                                sequence=event.sequence)  # fmt: skip
                return None
            if prev_hash is not None and event.prev_hash != prev_hash:
                detail = f"event {expected - 1} on line {number - 1} is not the event {expected} chains to: modified"
                report.fail(EVENTS, "edited", detail, line=number - 1, sequence=expected - 1)
                return None
            if number == 1 and lower == 1 and event.prev_hash != GENESIS_HASH:
                report.fail(EVENTS, "edited", "event 1 does not start the log (its prev is not the genesis hash)",
                            line=1, sequence=1)  # fmt: skip
                return None
            checkpoint = checkpoints.get(event.sequence)
            if checkpoint is not None and checkpoint.hash != event.hash:
                report.fail(EVENTS, "edited", f"event {event.sequence} is not the one the checkpoint of "
                            f"{checkpoint.tree_size} events signed: it was modified", line=number,
                            sequence=event.sequence)  # fmt: skip
                return None
            if event.sha256 is not None and first <= event.sequence <= last:
                named.setdefault(event.sha256, event.sequence)
            if event.sequence in (lower, first, last, last + 1):
                by_sequence[event.sequence] = event
            prev_hash, tail, expected = event.hash, (number, event), expected + 1
    report.lines = count
    if tail is None:
        report.fail(EVENTS, "missing", "no events")
        return None
    _check_tail(report, manifest, checkpoints, proof, tail, after)
    _check_edges(report, manifest, by_sequence, lower, first, last, before, after)
    return named


def _check_tail(report: ExportReport, manifest: dict[str, Any], checkpoints: dict[int, Checkpoint], proof: Any,
                tail: tuple[int, ArchivedEvent], after: bool) -> None:  # fmt: skip
    number, event = tail
    if not isinstance(proof, dict):
        if proof is not None:
            report.fail(PROOF, "format", "not an inclusion proof")
        return
    size, sequence, path = _int(proof.get("tree_size")), _int(proof.get("sequence")), proof.get("path")
    if size is None or sequence is None or not isinstance(path, list) or not all(isinstance(h, str) for h in path):
        report.fail(PROOF, "format", 'not {"sequence": N, "tree_size": N, "path": [hex, …]}')
        return
    anchor = checkpoints.get(size)
    if anchor is None:
        report.fail(PROOF, "checkpoint", f"no validly signed checkpoint of {size} events in {CHECKPOINTS}")
        return
    report.checkpoint = anchor
    if sequence != event.sequence:
        report.fail(EVENTS, "truncated", f"{PROOF} proves event {sequence} but the last line holds event "
                    f"{event.sequence}: lines were removed or added at the end", line=number)  # fmt: skip
        return
    try:
        hashes = [bytes.fromhex(h) for h in path]
        root = bytes.fromhex(anchor.root)
    except ValueError:
        report.fail(PROOF, "format", "the path or the checkpoint's root is not hexadecimal")
        return
    if not verify_inclusion(bytes.fromhex(event.hash), event.sequence - 1, size, hashes, root):
        report.fail(EVENTS, "edited", f"event {event.sequence} is not in the tree the checkpoint of {size} events "
                    "signed: the line (or the proof) was modified", line=number, sequence=event.sequence)  # fmt: skip
        return
    if not after and size != event.sequence:
        report.fail(EVENTS, "truncated", f"the bundle ends at event {event.sequence} but its checkpoint covers {size} "
                    "events: the event after the range is missing", line=number, sequence=event.sequence)  # fmt: skip


def _check_edges(report: ExportReport, manifest: dict[str, Any], events: dict[int, ArchivedEvent], lower: int,
                 first: int, last: int, before: bool, after: bool) -> None:  # fmt: skip
    """The range asked is the range given: the lines are first..last (and the edges), and the events just outside
    are outside the times asked, so nothing at the edges was left out."""
    expected_lines = last - first + 1 + before + after
    if report.lines != expected_lines:
        report.fail(MANIFEST, "manifest", f"announces events {first}..{last} ({expected_lines} lines with the "
                                          f"edges) but {EVENTS} has {report.lines} lines")  # fmt: skip
        return
    if manifest.get("events") != last - first + 1 or manifest.get("lines") != expected_lines:
        report.fail(MANIFEST, "manifest", "its counts of events and lines do not match its range")
    if not before and first != 1:
        report.fail(MANIFEST, "manifest", f"the range starts at event {first} but the event before it is absent")
    try:
        since = datetime.fromisoformat(manifest["since"]) if manifest.get("since") else None
        until = datetime.fromisoformat(manifest["until"]) if manifest.get("until") else None
    except (TypeError, ValueError):
        report.fail(MANIFEST, "manifest", "since/until are not times")
        return
    if since is not None:
        if before and lower in events and events[lower].time >= since:
            report.fail(EVENTS, "manifest", f"event {lower}, before the range, is not before --since {since}: the "
                        "range does not start where the manifest says", line=1, sequence=lower)  # fmt: skip
        if first in events and events[first].time < since:
            report.fail(MANIFEST, "manifest", f"event {first} is before since {since}")
    if until is not None:
        if after and last + 1 in events and events[last + 1].time < until:
            report.fail(EVENTS, "manifest", f"event {last + 1}, after the range, is before --until {until}: the range "
                        "does not end where the manifest says", sequence=last + 1, line=report.lines)  # fmt: skip
        if last in events and events[last].time >= until:
            report.fail(MANIFEST, "manifest", f"event {last} is not before until {until}")


def _hash_and_size(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _listed_bodies(report: ExportReport, section: dict[str, Any]) -> tuple[dict[str, int], list[AbsentBody]] | None:
    """The body files (hash → size) and the absent bodies the manifest lists; None when its ``bodies`` is not
    shaped as ``export`` writes it. A malformed entry is a finding and is left out (its file is then unlisted)."""
    files, absent = section.get("files"), section.get("absent")
    if not isinstance(files, list) or not isinstance(absent, list):
        report.fail(MANIFEST, "manifest", "its bodies section does not list files and absent bodies")
        return None
    listed: dict[str, int] = {}
    for number, item in enumerate(files, start=1):
        sha256 = item.get("sha256") if isinstance(item, dict) else None
        size = _int(item.get("size")) if isinstance(item, dict) else None
        if (not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256) or size is None or size < 0
                or item.get("name") != _body_name(sha256)):  # fmt: skip
            report.fail(MANIFEST, "manifest", f"body file #{number} is not {{name: bodies/<sha256>.eml, sha256, size}}")
            continue
        if sha256 in listed:
            report.fail(MANIFEST, "manifest", f"lists {_body_name(sha256)} twice")
        listed[sha256] = size
    missing: list[AbsentBody] = []
    for number, item in enumerate(absent, start=1):
        entry: dict[str, Any] = item if isinstance(item, dict) else {}
        sha256, why = entry.get("sha256"), entry.get("why")
        if not isinstance(sha256, str) or not isinstance(why, str) or why not in ABSENT_REASONS:
            report.fail(
                MANIFEST, "manifest", f"absent body #{number} is not {{sha256, why: {' / '.join(ABSENT_REASONS)}}}"
            )
            continue
        detail = entry.get("detail")
        missing.append(AbsentBody(sha256, why, detail if isinstance(detail, str) else ""))
        if sha256 in listed:
            report.fail(MANIFEST, "manifest", f"lists {_body_name(sha256)} as both in the bundle and absent")
    if _int(section.get("count")) != len(listed) or _int(section.get("bytes")) != sum(listed.values()):
        report.fail(MANIFEST, "manifest", "its count of bodies or of their bytes does not match the body files listed")
    return listed, missing


def _check_bodies(
    report: ExportReport, directory: Path, manifest: dict[str, Any], named: dict[str, int] | None
) -> None:
    """Each body file hashes to its name and its size, as the manifest says; an event of the range names it; every
    body the events name is in the bundle or listed absent; nothing else is in ``bodies/``. ``named``: the SHA-256
    values of the events of the range, None when the events did not verify (then only the files are checked)."""
    section = manifest.get("bodies", False)
    files = manifest.get("files")
    hashed = {n: h for n, h in files.items() if n not in _FILES} if isinstance(files, dict) else {}
    if section is False:
        for name in sorted(hashed):
            report.fail(MANIFEST, "manifest", f"lists {name}, but the export has no bodies")
        return
    if not isinstance(section, dict):
        report.fail(MANIFEST, "manifest", "bodies is neither false nor the bodies of the export")
        return
    report.with_bodies = True
    found = _listed_bodies(report, section)
    if found is None:
        return
    listed, absent = found
    report.absent_bodies = absent
    for name in sorted(set(hashed) - {_body_name(sha) for sha in listed}):
        report.fail(MANIFEST, "manifest", f"lists {name} among the files, but not among the bodies")
    for sha256, size in listed.items():
        name = _body_name(sha256)
        if hashed.get(name) != sha256:
            report.fail(name, "manifest", "its SHA-256 in the files of manifest.json is not the one its name says")
        path = directory / name
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            report.fail(name, "missing", "a body the manifest lists is missing from the bundle")
            continue
        except OSError as exc:
            report.fail(name, "format", f"cannot be read: {exc.strerror or exc}")
            continue
        if not stat.S_ISREG(mode):  # never follow a link or open a FIFO or a device named like a body
            report.fail(name, "format", "not a regular file")
            continue
        try:
            actual, actual_size = _hash_and_size(path)
        except OSError as exc:
            report.fail(name, "format", f"cannot be read: {exc.strerror or exc}")
            continue
        if actual != sha256:
            report.fail(name, "edited", f"its SHA-256 is {actual[:16]}…, not the one its name (and the events) "
                                        "say: the body was modified")  # fmt: skip
            continue
        if actual_size != size:
            report.fail(name, "manifest", f"is {actual_size} bytes, not the {size} the manifest says")
        if named is not None and sha256 not in named:
            report.fail(name, "inserted", "no event of the range names this SHA-256: not a body of the export")
            continue
        report.bodies += 1
        report.body_bytes += actual_size
    _check_body_directory(report, directory, listed)
    if named is None:
        return
    stated = {a.sha256 for a in absent}
    for sha256 in sorted(stated - set(named)):
        report.fail(MANIFEST, "manifest", f"lists body {sha256} as absent, but no event of the range names it")
    for sha256, sequence in named.items():
        if sha256 not in listed and sha256 not in stated:
            report.fail(_body_name(sha256) if _SHA256_HEX.fullmatch(sha256) else MANIFEST, "missing",
                        f"the body event {sequence} names is neither in the bundle nor listed absent in manifest.json",
                        sequence=sequence)  # fmt: skip


def _check_body_directory(report: ExportReport, directory: Path, listed: dict[str, int]) -> None:
    """Nothing in ``bodies/`` but the body files listed."""
    folder = directory / BODIES
    if not folder.exists() and not folder.is_symlink():
        return  # each listed body is then reported missing
    if folder.is_symlink() or not folder.is_dir():
        report.fail(BODIES, "format", "not a directory")
        return
    expected = {f"{sha}.eml" for sha in listed}
    for entry in sorted(p.name for p in folder.iterdir()):
        if entry not in expected:
            report.fail(f"{BODIES}/{entry}", "inserted", "a file the manifest does not list as a body of the export")
