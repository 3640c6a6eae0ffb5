"""``mssecure archive``: verify the tamper-evident event log, sign checkpoints, search and show events."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from mssecure.archive import Archive, ArchivedEvent, ArchiveError, Checkpoint, load_public_key, verify_archive
from mssecure.cli._context import CliContext
from mssecure.cli._output import echo_json, echo_json_lines, echo_table

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
    """The audit archive: verify, checkpoint, search, show."""


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
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_cli
def verify(cli: CliContext, public_key: str | None, kept: tuple[str, ...], as_json: bool) -> None:
    """Recompute the hash chain and the Merkle tree, check every checkpoint signature with data/archive.pub.

    Exits 1 on any discrepancy, naming the first bad sequence number and what is wrong: edited, missing,
    reordered, inserted, truncated, a checkpoint that is not validly signed or not matched by the events.
    """
    key = load_public_key(Path(public_key) if public_key else cli.material.archive_public_path)
    checkpoints = _kept(kept)
    total = _archive(cli).size()
    with _progress(total) as progress:
        report = verify_archive(cli.engine, key, progress=progress, kept=checkpoints)
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
@click.option("--limit", type=click.IntRange(min=1), help="At most this many events.")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def search(cli: CliContext, address: str | None, message_id: str | None, type_: str | None,
           since: datetime | None, until: datetime | None, limit: int | None, as_json: bool) -> None:  # fmt: skip
    """Events matching every criterion given, in sequence order."""
    events = _archive(cli).search(address=address, message_id=message_id, type=type_, since=_when(since),
                                  until=_when(until), limit=limit)  # fmt: skip
    if as_json:
        echo_json_lines(e.to_json() for e in events)
        return
    count = echo_table(_HEADERS, (_row(e) for e in events))
    click.echo(f"{count} event(s)", err=True)


@archive.command("show")
@click.argument("reference")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def show(cli: CliContext, reference: str, as_json: bool) -> None:
    """One event by sequence number, or the whole history of a message by Message-ID."""
    store = _archive(cli)
    if reference.isdigit():
        event = store.get(int(reference))
        if event is None:
            raise ArchiveError(f"no archived event {reference}")
        if as_json:
            echo_json(event.to_json())
            return
        for key, value in event.to_json().items():
            shown = ", ".join(value) if isinstance(value, list) else ("" if value is None else value)
            click.echo(f"{key:<11} {shown}")
        return
    history = store.history(reference)
    if not history:
        raise ArchiveError(f"no archived event for Message-ID {reference}")
    if as_json:
        echo_json([e.to_json() for e in history])
        return
    echo_table(_HEADERS, (_row(e) for e in history))
    for event in history:
        if event.reason or event.reply:
            click.echo(f"  {event.sequence}: {event.type}: {event.reason or ''} {event.reply or ''}".rstrip())
