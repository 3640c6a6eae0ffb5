"""``mssecure archive``: verify the tamper-evident event log, sign checkpoints, search and show events, read and
purge the encrypted message store."""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric import x25519

from mssecure.archive import (
    KINDS,
    Archive,
    ArchivedEvent,
    ArchiveError,
    Checkpoint,
    MessageStore,
    PurgeReport,
    StoredCopy,
    ensure_store_key,
    load_public_key,
    retention_limits,
    store_key_id,
    verify_archive,
)
from mssecure.archive.store import STORE_KEY_NAME, STORE_PUBLIC_FILE
from mssecure.cli._context import CliContext
from mssecure.cli._output import echo_json, echo_json_lines, echo_table
from mssecure.crypto.keys import create_private_file
from mssecure.db import utcnow
from mssecure.smtp.events import Event

__all__ = ["archive"]

pass_cli = click.make_pass_decorator(CliContext)


def _archive(cli: CliContext, *, signing: bool = False) -> Archive:
    key = cli.material.keystore.load("archive") if signing else None
    return Archive(cli.engine, key=key, origin=cli.config.operator.domain)


def _when(value: datetime | None) -> datetime | None:
    """Dates given without a zone are UTC (the archive's clock)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row(event: ArchivedEvent) -> tuple[Any, ...]:
    return (event.sequence, f"{event.time:%Y-%m-%d %H:%M:%S}", event.type, event.outcome, event.actor,
            event.sender, ", ".join(event.recipients), event.message_id or event.queue_id)  # fmt: skip


_HEADERS = ("SEQ", "TIME (UTC)", "TYPE", "OUTCOME", "ACTOR", "SENDER", "RECIPIENTS", "MESSAGE")


@click.group()
def archive() -> None:
    """The audit archive: verify, checkpoint, search, show; the message store: show --body, purge."""


@contextmanager
def _progress(total: int) -> Iterator[Any]:
    """A progress bar on stderr when it is a terminal, else nothing."""
    if total and sys.stderr.isatty():
        with click.progressbar(length=total, label="Verifying", file=sys.stderr) as bar:
            yield bar.update
    else:
        yield None


def _kept(paths: tuple[str, ...]) -> list[Checkpoint]:
    kept: list[Checkpoint] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArchiveError(f"cannot read checkpoint file {path}: {exc}") from None
        kept.extend(Checkpoint.from_json(item) for item in (data if isinstance(data, list) else [data]))
    return kept


@archive.command("verify")
@click.option(
    "--public-key", type=click.Path(dir_okay=False), help="The archive's public key (default: data/archive.pub)."
)
@click.option("--checkpoint", "kept", multiple=True, type=click.Path(dir_okay=False),
              help="A checkpoint kept outside the database (JSON of `archive checkpoint --json`, or a list of them): "
                   "it must still be there and be matched by the events. Repeatable.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=0), help="Processes verifying ranges side by side (default: one per "
              "core, up to four; 0: this process alone).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_cli
def verify(cli: CliContext, public_key: str | None, kept: tuple[str, ...], workers: int | None, as_json: bool) -> None:
    """Recompute the hash chain and the Merkle tree, check every checkpoint signature with data/archive.pub.

    Exits 1 on any discrepancy, naming the first bad sequence number and what is wrong: edited, missing,
    reordered, inserted, truncated, a checkpoint that is not validly signed or not matched by the events.
    """
    key = load_public_key(Path(public_key) if public_key else cli.material.archive_public_path)
    checkpoints = _kept(kept)
    total = _archive(cli).size()
    with _progress(total) as progress:
        report = verify_archive(cli.engine, key, progress=progress, kept=checkpoints, workers=workers)
    if as_json:
        echo_json(report.to_json())
    first = report.first
    if first is not None:
        others = len(report.findings) - 1
        more = f" ({others} more finding(s): see --json)" if others else ""
        raise ArchiveError(f"archive verification FAILED at {first}{more}")
    if not as_json:
        latest = report.latest_checkpoint
        signed = (
            f"last checkpoint at sequence {latest.sequence}, signed {latest.time:%Y-%m-%d %H:%M:%S} UTC"
            if latest
            else "no checkpoint yet"
        )
        rate = f", {report.events / report.seconds:,.0f} events/s" if report.seconds > 0 and report.events else ""
        click.echo(
            f"Archive verified: {report.events} event(s), {report.checkpoints} checkpoint(s) valid ({signed}); "
            f"root {report.root}{rate}"
        )


@archive.command("checkpoint")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def checkpoint(cli: CliContext, as_json: bool) -> None:
    """Sign a checkpoint of the archive as it is now with the operator's archive key."""
    written = _archive(cli, signing=True).checkpoint()
    if as_json:
        echo_json(written.to_json())
        return
    click.echo(f"Checkpoint #{written.id} at sequence {written.sequence}: root {written.root}, signed")


@archive.command("search")
@click.option("--address", help="Sender, recipient or actor (case-insensitive).")
@click.option("--message-id", help="Message-ID (angle brackets optional).")
@click.option("--type", "type_", help="Event type, or a prefix ending in '.' (submission.).")
@click.option("--since", type=click.DateTime(), help="From this time (UTC unless a zone is given), inclusive.")
@click.option("--until", type=click.DateTime(), help="Before this time (UTC unless a zone is given).")
@click.option("--prescription", help="A prescription identifier: its deliveries (prescription.received, .duplicate).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many events.")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def search(cli: CliContext, address: str | None, message_id: str | None, type_: str | None,
           since: datetime | None, until: datetime | None, prescription: str | None, limit: int | None,
           as_json: bool) -> None:  # fmt: skip
    """Events matching every criterion given, in sequence order."""
    if prescription is not None:
        if type_ is not None and not type_.startswith("prescription."):
            raise click.UsageError("--prescription finds prescription.* events only")
        wanted = f"prescription {prescription.strip()}"
        found = _archive(cli).search(address=address, message_id=message_id, type=type_ or "prescription.",
                                     since=_when(since), until=_when(until))  # fmt: skip
        matching = (e for e in found if e.reason == wanted or (e.reason or "").startswith(wanted + ";"))
        events: Iterator[ArchivedEvent] = itertools.islice(matching, limit)
    else:
        events = _archive(cli).search(address=address, message_id=message_id, type=type_, since=_when(since),
                                      until=_when(until), limit=limit)  # fmt: skip
    if as_json:
        echo_json_lines(e.to_json() for e in events)
        return
    count = echo_table(_HEADERS, (_row(e) for e in events))
    click.echo(f"{count} event(s)", err=True)


@archive.command("show")
@click.argument("reference")
@click.option(
    "--body",
    is_flag=True,
    help="Also decrypt the message's stored copies (as received, as delivered); each reading is archived.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="With --body: write the copies here (a new file; a directory for several) instead of stdout.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def show(cli: CliContext, reference: str, body: bool, out: Path | None, as_json: bool) -> None:
    """One event by sequence number, or the whole history of a message by Message-ID.

    --body decrypts the stored copies of the message with the message store key (the master secret), after
    recording an archive.body_read event naming you, the SHA-256 and the Message-ID.
    """
    if out is not None and not body:
        raise click.UsageError("--out goes with --body")
    if body and as_json and out is None:
        raise click.UsageError("--body with --json needs --out (the JSON goes to stdout)")
    log = _archive(cli)
    if reference.isdigit():
        event = log.get(int(reference))
        if event is None:
            raise ArchiveError(f"no archived event {reference}")
        history = [event]
        references = [r for r in (event.message_id, event.queue_id) if r]
    else:
        history = log.history(reference)
        if not history:
            raise ArchiveError(f"no archived event for Message-ID {reference}")
        references = [reference, *dict.fromkeys(e.queue_id for e in history if e.queue_id)]
    # Every refusal that can be known before reading (no copy, purged, an output file in the way) comes first.
    reading = _prepare_bodies(cli, reference, references, history, out) if body else None
    if reference.isdigit():
        if as_json:
            echo_json(history[0].to_json())
        else:
            for key, value in history[0].to_json().items():
                shown = ", ".join(value) if isinstance(value, list) else ("" if value is None else value)
                click.echo(f"{key:<11} {shown}")
    elif as_json:
        echo_json([e.to_json() for e in history])
    else:
        echo_table(_HEADERS, (_row(e) for e in history))
        for event in history:
            if event.reason or event.reply:
                click.echo(f"  {event.sequence}: {event.type}: {event.reason or ''} {event.reply or ''}".rstrip())
    if reading is not None:
        _read_bodies(cli, log, reference, history, *reading)


# -- the message store


def _message_store(cli: CliContext, *, reading: bool = False) -> MessageStore:
    if not reading:
        return MessageStore(cli.engine)
    key = cli.material.keystore.load(STORE_KEY_NAME)
    if not isinstance(key, x25519.X25519PrivateKey):
        raise ArchiveError(f"{cli.material.keystore.key_path(STORE_KEY_NAME)} is not the archive store key (X25519)")
    return MessageStore(cli.engine, private_key=key)


@dataclass
class _Body:
    """A distinct stored message among the copies of the one shown: its hash and what its copies say of it."""

    sha256: str
    size: int
    purged_at: datetime | None
    copies: list[StoredCopy]

    @property
    def label(self) -> str:
        received = any(c.kind == "received" for c in self.copies)
        delivered = sorted({c.recipient or "?" for c in self.copies if c.kind == "delivered"})
        parts = (["as received"] if received else []) + (
            [f"as delivered to {', '.join(delivered)}"] if delivered else []
        )
        return " and ".join(parts) or "stored"

    @property
    def kinds(self) -> str:
        return "+".join(k for k in KINDS if any(c.kind == k for c in self.copies))


def _bodies_of(copies: list[StoredCopy]) -> list[_Body]:
    bodies: dict[str, _Body] = {}
    for copy in copies:
        bodies.setdefault(copy.sha256, _Body(copy.sha256, copy.size, copy.purged_at, [])).copies.append(copy)
    return list(bodies.values())


_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls but tab, LF, CR; and DEL


def _is_text(data: bytes) -> bool:
    """Whether the bytes can go to a terminal as they are: UTF-8, and no control character but tab, CR and LF (an
    escape sequence in a stored message must not drive the operator's terminal)."""
    if _CONTROL.search(data):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _targets(out: Path, bodies: list[_Body]) -> list[Path]:
    """Where each body goes: ``out`` itself for one body, files in the directory ``out`` for several (or when it
    is a directory already). Nothing already there is ever replaced."""
    several = len(bodies) > 1 or out.is_dir()
    paths = [out / f"{b.kinds}-{b.sha256[:16]}.eml" for b in bodies] if several else [out]
    for path in paths:
        if os.path.lexists(path):
            raise ArchiveError(f"{path} already exists: refusing to replace it")
    return paths


def _write_new(path: Path, data: bytes) -> None:
    """A decrypted message is patient data: a new file readable by its owner only (never through a link)."""
    if path.parent != Path() and not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True)
    try:
        create_private_file(path, data)
    except FileExistsError:
        raise ArchiveError(f"{path} already exists: refusing to replace it") from None
    except OSError as exc:
        raise ArchiveError(f"cannot write {path}: {exc.strerror}") from None


def _prepare_bodies(cli: CliContext, reference: str, references: list[str], history: list[ArchivedEvent],
                    out: Path | None) -> tuple[MessageStore, list[_Body], list[Path | None]]:  # fmt: skip
    """The stored bodies of the message that can still be read, and where each goes; refusals before any reading."""
    store = _message_store(cli, reading=True)
    bodies = _bodies_of(store.copies(references))
    if not bodies:
        sha256s = dict.fromkeys(e.sha256 for e in history if e.sha256)
        found = [store.body(sha) for sha in sha256s]
        bodies = [_Body(b.sha256, b.size, b.purged_at, []) for b in found if b is not None]
    if not bodies:
        raise ArchiveError(f"no stored copy of {reference} in the message store")
    live = [b for b in bodies if b.purged_at is None]
    for gone in (b for b in bodies if b.purged_at is not None):
        when = f"{gone.purged_at:%Y-%m-%d %H:%M:%S} UTC" if gone.purged_at else ""
        note = f"the stored copy of {reference} {gone.label} ({gone.sha256}) was purged on {when}"
        if not live:
            raise ArchiveError(note)
        click.echo(f"mssecure: note: {note}", err=True)
    paths: list[Path | None] = [*_targets(out, live)] if out is not None else [None] * len(live)
    return store, live, paths


def _read_bodies(cli: CliContext, log: Archive, reference: str, history: list[ArchivedEvent], store: MessageStore,
                 live: list[_Body], paths: list[Path | None]) -> None:  # fmt: skip
    stdout = sys.stdout.buffer
    message_ids = [e.message_id for e in history if e.message_id]
    for item, path in zip(live, paths, strict=True):
        message_id = next((c.message_id for c in item.copies if c.message_id), message_ids[0] if message_ids else None)
        queue_id = next((c.queue_id for c in item.copies), None)
        where = str(path) if path is not None else "standard output"
        read_event = partial(Event, "archive.body_read", actor=cli.operator_account, queue_id=queue_id,
                             message_id=message_id, sha256=item.sha256)  # fmt: skip
        try:
            data = store.get(item.sha256)
        except ArchiveError as exc:
            log.append(read_event("failed", reason=str(exc)))  # a copy that fails its check is worth an event too
            raise
        if path is None and stdout.isatty() and not _is_text(data):
            raise ArchiveError(
                f"the stored copy of {reference} {item.label} is not text: refusing to write it to a terminal "
                "(use --out FILE)"
            )
        # Recorded before a byte leaves the store: reading a message is itself an archived action.
        log.append(
            read_event("ok", reason=f"stored copy {item.label} ({item.size} bytes) decrypted, written to {where}")
        )
        if path is None:
            click.echo(f"==> stored copy {item.label}: sha256 {item.sha256}, {item.size} bytes <==", err=True)
            stdout.write(data)
            stdout.flush()
        else:
            _write_new(path, data)
            click.echo(f"Wrote the stored copy {item.label} ({item.size} bytes, sha256 {item.sha256}) to {path}",
                       err=True)  # fmt: skip


def _limits_text(limits: Mapping[str, datetime | None]) -> str:
    values = set(limits.values())
    if len(values) == 1 and None not in values:
        (limit,) = values
        return f"stored before {limit:%Y-%m-%d %H:%M:%S} UTC"
    return "stored " + ", ".join(
        f"{kind} before {limit:%Y-%m-%d %H:%M:%S} UTC" if limit else f"{kind} kept forever"
        for kind, limit in limits.items()
    )


@archive.command("purge")
@click.option(
    "--before",
    type=click.DateTime(),
    help="Purge the bodies of messages stored before this date (UTC unless a zone is given), whatever "
    "their kind. Default: the retention of each kind ([archive] retention_received, "
    "retention_delivered).",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be purged.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_cli
def purge(cli: CliContext, before: datetime | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Delete the stored bodies of messages past their retention; events, hashes, checkpoints and evidence stay
    verifiable. A body is purged only when every copy of it (as received, as delivered) is past its kind's limit.

    The purge is recorded as an archive.purge event.
    """
    now = utcnow()
    limit = _when(before)
    if limit is not None and limit > now:
        raise ArchiveError(f"--before {limit:%Y-%m-%d %H:%M:%S} UTC is in the future: refusing to purge every message")
    settings = cli.config.archive
    limits: dict[str, datetime | None] = (
        dict.fromkeys(KINDS, limit)
        if limit is not None
        else retention_limits(settings.retention_received, settings.retention_delivered, now)
    )
    if all(value is None for value in limits.values()):
        if as_json:
            echo_json(PurgeReport(limits, (), 0, dry_run).to_json())
        else:
            click.echo("Nothing to purge: the retention of every kind is 0 (kept forever); see --before.")
        return
    store = _message_store(cli)
    described = _limits_text(limits)
    report = store.purge(limits, dry_run=True)
    if dry_run:
        if as_json:
            echo_json(report.to_json())
        else:
            click.echo(f"Would purge {report.bodies} message body(ies) ({report.bytes:,} bytes) {described}.")
        return
    if report.bodies and not yes:
        click.confirm(f"Purge {report.bodies} message body(ies) ({report.bytes:,} bytes) {described}? "
                      "Events and proofs are kept", abort=True, err=True)  # fmt: skip
    report = store.purge(limits)
    summary = f"{report.bodies} bodies ({report.bytes:,} bytes) {described}"
    _archive(cli).append(Event("archive.purge", "ok", actor=cli.operator_account, reason=summary))
    if as_json:
        echo_json(report.to_json())
        return
    click.echo(f"Purged {report.bodies} message body(ies) ({report.bytes:,} bytes) {described}; "
               "events, hashes and proofs are kept.")  # fmt: skip


@archive.command("store-key")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def store_key(cli: CliContext, as_json: bool) -> None:
    """Create the message store's key pair if this operator has none (operators initialised before the message
    store), and show its id and public key file (copy both key files to every relay node)."""
    key = ensure_store_key(cli.material.keystore)
    public = cli.material.data_dir / STORE_PUBLIC_FILE
    if as_json:
        echo_json({"key_id": store_key_id(key.public_key()), "public_key": str(public)})
        return
    click.echo(f"Message store key {store_key_id(key.public_key())}: public key {public}")
