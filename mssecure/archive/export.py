"""A self-contained, offline-verifiable bundle of a range of the archive (``archive export`` / ``verify-export``).

The bundle is a directory::

    manifest.json      what it holds: origin, key id, the time range asked, the sequence range, counts, and the
                       SHA-256 of every other file
    events.jsonl       one event per line, in sequence order, each line exactly the canonical form that was hashed
    checkpoints.json   the signed checkpoints the proof refers to (the anchor) and those that fall inside the range
    proof.json         an RFC 9162 inclusion proof of the last line's event in the anchor checkpoint's tree
    archive.pub        the operator's archive public key (PEM)

Why that suffices: each event's hash covers the previous event's hash (``prev``), so once the **last** line is proven
to be in a tree the operator signed, every line before it is authenticated by the chain, down to the first. The
lines run from the event just before the range (when there is one) to the event just after it (when the anchor
checkpoint already covered it): the verifier sees that the event before is older than ``since`` and the one after is
not older than ``until``, so the range is complete at both ends; at the start of the log, the first event's ``prev``
is the genesis hash; with no event after, the anchor checkpoint ends at the last line, so nothing was left out there
either. ``manifest.json`` itself is not signed: everything it says is checked against what is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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

__all__ = ["EXPORT_TYPE", "ExportFinding", "ExportReport", "ExportSummary", "export_range", "verify_export"]

EXPORT_TYPE = "mssecure.archive.export"
EVENTS, CHECKPOINTS, PROOF, PUBLIC_KEY, MANIFEST = (
    "events.jsonl", "checkpoints.json", "proof.json", "archive.pub", "manifest.json"
)  # fmt: skip
_FILES = (EVENTS, CHECKPOINTS, PROOF, PUBLIC_KEY)
_MAX_LINE = 4 * 1024 * 1024  # an event is a few kilobytes; a longer line is not one
_MAX_JSON_FILE = 64 * 1024 * 1024
_BATCH = 5_000

_events = cast(sa.Table, ArchiveEventRecord.__table__)
_checkpoints = cast(sa.Table, ArchiveCheckpointRecord.__table__)


@dataclass(frozen=True)
class ExportSummary:
    """What ``export_range`` wrote."""

    directory: Path
    first_sequence: int
    last_sequence: int
    lines: int
    checkpoint: Checkpoint

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
) -> ExportSummary:
    """Write the bundle of the events from ``since`` (inclusive) to ``until`` (exclusive) into the new directory
    ``out``. Signs a checkpoint first when none covers the range yet (``archive.key`` is needed then). Refuses, with
    nothing written, when the stored events do not verify (the chain, their hashes, the checkpoint's root)."""
    _check_out(out)
    first, last = _range(archive, since, until)
    anchor = anchor_checkpoint(archive, public_key, last)
    lower = first - 1 if first > 1 else first
    upper = last + 1 if anchor.tree_size > last else last
    work = _prepare(out)
    try:
        tail = _write_events(archive, work / EVENTS, lower, upper)
        proof = prove_events(archive, anchor, [tail])[0]
        _write_json(work / PROOF, proof.to_json())
        _write_json(work / CHECKPOINTS, [_public(c) for c in _checkpoints_for(archive, public_key, lower, anchor)])
        (work / PUBLIC_KEY).write_bytes(
            public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
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
            "bodies": False,
            "files": {name: _sha256_file(work / name) for name in _FILES},
        }
        _write_json(work / MANIFEST, manifest)
        os.replace(work, out)  # onto a missing or empty directory: POSIX rename(2) replaces an empty one
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportSummary(out, first, last, upper - lower + 1, anchor)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _public(checkpoint: Checkpoint) -> dict[str, Any]:
    data = checkpoint.to_json()
    data.pop("id")
    return data


def _write_events(archive: Archive, path: Path, lower: int, upper: int) -> ArchivedEvent:
    """Write events lower..upper as canonical lines, checking as they go that they chain and match their hashes;
    returns the last one."""
    expected, prev, last = lower, None, None
    with path.open("w", encoding="utf-8", newline="\n") as stream, closing(_stream(archive, lower, upper)) as events:
        for event in events:
            text = canonical_text(event)
            if event.sequence != expected or event_hash(text) != event.hash or (prev and event.prev_hash != prev):
                raise ArchiveError(
                    f"event {expected} does not verify: the archive was tampered with (run `mssecure archive verify`)"
                )
            stream.write(text + "\n")
            prev, last, expected = event.hash, event, expected + 1
    if last is None or last.sequence != upper:
        raise ArchiveError(f"event {expected} is missing from the archive (run `mssecure archive verify`)")
    return last


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
    _check_events(report, directory, manifest, checkpoints, proof)
    return report


def _check_files(report: ExportReport, directory: Path, manifest: dict[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(_FILES):
        report.fail(MANIFEST, "manifest", f"does not list exactly the files {', '.join(_FILES)}")
        return
    for name in _FILES:
        path = directory / name
        if not path.is_file():
            report.fail(name, "missing", "the file is missing from the bundle")
        elif _sha256_file(path) != files[name]:
            report.fail(name, "manifest", "its SHA-256 is not the one in manifest.json: modified after the export")
    extra = sorted(p.name for p in directory.iterdir() if p.name not in (*_FILES, MANIFEST))
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
                  checkpoints: dict[int, Checkpoint], proof: Any) -> None:  # fmt: skip
    """The chain pass over events.jsonl, then the proof of its last line, then the edges of the range."""
    first, last = _int(manifest.get("first_sequence")), _int(manifest.get("last_sequence"))
    before, after = manifest.get("before") is True, manifest.get("after") is True
    if first is None or last is None or first < 1 or last < first:
        report.fail(MANIFEST, "manifest", "first_sequence and last_sequence are not a range of sequences")
        return
    report.first_sequence, report.last_sequence = first, last
    lower = first - 1 if before else first
    expected, prev_hash, tail, count = lower, None, None, 0
    try:
        stream = (directory / EVENTS).open("rb")
    except OSError:
        return  # reported by _check_files
    by_sequence: dict[int, ArchivedEvent] = {}  # the edges and the checkpointed ones, to check afterwards
    with stream:
        for number, raw in enumerate(_lines(stream), start=1):
            count = number
            if raw is None:
                report.fail(EVENTS, "format", "a line too long to be an event", line=number)
                return
            try:
                value = json.loads(raw.decode("utf-8"))
                event = event_from_canonical(value)
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                report.fail(EVENTS, "edited", f"not an archived event: {exc}", line=number)
                return
            if canonical_json(value).encode("utf-8") != raw:
                report.fail(EVENTS, "edited", "the line is not in canonical form (it was rewritten)", line=number,
                            sequence=event.sequence)  # fmt: skip
                return
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
                return
            if prev_hash is not None and event.prev_hash != prev_hash:
                detail = f"event {expected - 1} on line {number - 1} is not the event {expected} chains to: modified"
                report.fail(EVENTS, "edited", detail, line=number - 1, sequence=expected - 1)
                return
            if number == 1 and lower == 1 and event.prev_hash != GENESIS_HASH:
                report.fail(EVENTS, "edited", "event 1 does not start the log (its prev is not the genesis hash)",
                            line=1, sequence=1)  # fmt: skip
                return
            checkpoint = checkpoints.get(event.sequence)
            if checkpoint is not None and checkpoint.hash != event.hash:
                report.fail(EVENTS, "edited", f"event {event.sequence} is not the one the checkpoint of "
                            f"{checkpoint.tree_size} events signed: it was modified", line=number,
                            sequence=event.sequence)  # fmt: skip
                return
            if event.sequence in (lower, first, last, last + 1):
                by_sequence[event.sequence] = event
            prev_hash, tail, expected = event.hash, (number, event), expected + 1
    report.lines = count
    if tail is None:
        report.fail(EVENTS, "missing", "no events")
        return
    _check_tail(report, manifest, checkpoints, proof, tail, after)
    _check_edges(report, manifest, by_sequence, lower, first, last, before, after)


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
