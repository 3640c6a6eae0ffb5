"""``mssecure directory``: the certified addresses of the trust space."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import click
from sqlalchemy.orm import Session

from mssecure.cli._context import CliContext
from mssecure.cli._output import echo_json, echo_json_lines, echo_table
from mssecure.directory import (
    Directory,
    Entry,
    EntryChange,
    EntryData,
    Format,
    Kind,
    Status,
    write_entries,
)
from mssecure.directory.formats import read_chunks
from mssecure.directory.importer import import_chunks
from mssecure.directory.synthetic import DEFAULT_DOMAINS, write_sample_extraction
from mssecure.errors import ImportFormatError

__all__ = ["directory"]

pass_cli = click.make_pass_decorator(CliContext)

# ANS nomenclature of health professions (TRE_G15-ProfessionSante), the codes most often met in the directory.
PROFESSIONS = {
    "10": "Médecin",
    "21": "Pharmacien",
    "40": "Chirurgien-Dentiste",
    "50": "Sage-Femme",
    "60": "Infirmier",
    "70": "Masseur-Kinésithérapeute",
    "80": "Pédicure-Podologue",
    "91": "Orthophoniste",
    "92": "Orthoptiste",
}

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def entry_json(entry: Entry, directory: Directory) -> dict[str, Any]:
    values = entry.to_data().to_dict()
    values["kind"], values["status"] = entry.kind, entry.status
    values.update(local=directory.is_local(entry), created_at=entry.created_at, updated_at=entry.updated_at)
    return values


def change_json(change: EntryChange) -> dict[str, Any]:
    return {
        "at": change.at,
        "actor": change.actor,
        "action": change.action,
        "source": change.source,
        "reason": change.reason,
        "changes": change.changes,
    }


def _identity(entry: Entry) -> str:
    if entry.identifier:
        return f"{entry.identifier_type} {entry.identifier}"
    if entry.structure_id:
        return f"{entry.structure_id_type} {entry.structure_id}"
    return ""


_LIST_HEADERS = ("address", "kind", "status", "where", "name", "identifier", "profession", "organization")


def _list_row(entry: Entry, directory: Directory) -> tuple[Any, ...]:
    return (
        entry.address,
        entry.kind,
        entry.status,
        "local" if directory.is_local(entry) else "remote",
        entry.to_data().display_name,
        _identity(entry),
        entry.profession_label,
        entry.organization,
    )


@click.group()
def directory() -> None:
    """The directory of certified addresses (entries, statuses, import/export)."""


@directory.command("add")
@click.argument("address")
@click.option("--kind", type=click.Choice([k.value for k in Kind]), required=True, help="Kind of mailbox.")
@click.option("--rpps", help="Owner's RPPS number (11 digits, Luhn key).")
@click.option("--adeli", help="Owner's ADELI number (9 digits).")
@click.option("--finess", help="Structure's FINESS number (9 characters, Luhn key).")
@click.option("--siret", help="Structure's SIRET number (14 digits, Luhn key).")
@click.option("--civility", help="Civility of practice (M, MME, DR, PR).")
@click.option("--last-name")
@click.option("--first-name")
@click.option("--profession", "profession_code", help="Profession code (10 médecin, 21 pharmacien, 60 infirmier…).")
@click.option("--profession-label", help="Profession label (default: from the code).")
@click.option("--category", "category_code", help="Profession category code (C civil, M military, E student).")
@click.option("--specialty", "specialty_code", help="Specialty (savoir-faire) code, e.g. SM53.")
@click.option("--specialty-label")
@click.option("--organization", help="Organization name (raison sociale).")
@click.option("--service", help="Service the mailbox belongs to.")
@click.option("--department", help="Département of the structure (e.g. 59, 2A).")
@click.option("--unlisted", is_flag=True, help="Liste rouge: never published in exported directories.")
@click.option("--reason", help="Why the entry is created (kept in its history).")
@json_option
@pass_cli
def add(cli: CliContext, /, address: str, kind: str, rpps: str | None, adeli: str | None, finess: str | None,
        siret: str | None, reason: str | None, as_json: bool, **fields: Any) -> None:  # fmt: skip
    """Add the certified address ADDRESS to the directory."""
    if rpps and adeli:
        raise click.UsageError("give either --rpps or --adeli, not both")
    if finess and siret:
        raise click.UsageError("give either --finess or --siret, not both")
    if fields["profession_code"] and not fields["profession_label"]:
        fields["profession_label"] = PROFESSIONS.get(fields["profession_code"])
    data = EntryData(
        address=address,
        kind=Kind(kind),
        identifier_type="RPPS" if rpps else "ADELI" if adeli else None,
        identifier=rpps or adeli,
        structure_id_type="FINESS" if finess else "SIRET" if siret else None,
        structure_id=finess or siret,
        **fields,
    )
    with cli.session() as session:
        book = cli.directory(session, "directory add")
        entry = book.add(data, reason=reason)
        session.flush()
        result = entry_json(entry, book)
        note = f"{kind}; {reason}" if reason else kind
        cli.record(session, "directory.added", recipients=(entry.address,), reason=note)
    if as_json:
        echo_json(result)
    else:
        click.echo(f"Added {result['address']} ({result['kind']}, {'local' if result['local'] else 'remote'}).")


@directory.command("show")
@click.argument("address")
@json_option
@pass_cli
def show(cli: CliContext, address: str, as_json: bool) -> None:
    """Show the entry of ADDRESS."""
    with cli.session() as session:
        book = cli.directory(session, "directory show")
        values = entry_json(book.get(address), book)
    if as_json:
        echo_json(values)
        return
    width = max(len(k) for k in values)
    for key, value in values.items():
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, datetime):
            value = value.strftime("%Y-%m-%d %H:%M:%S UTC")
        if value is not None and value != "":
            click.echo(f"{key.replace('_', ' '):<{width}}  {value}")


def _filters(kind: str | None, status: str | None, domain: str | None, local: bool | None) -> dict[str, Any]:
    return {
        "kind": Kind(kind) if kind else None,
        "status": Status(status) if status else None,
        "domain": domain,
        "local": local,
    }


filter_options = [
    click.option("--kind", type=click.Choice([k.value for k in Kind])),
    click.option("--status", type=click.Choice([s.value for s in Status])),
    click.option("--domain", help="Only addresses in this domain."),
    click.option("--local/--remote", "local", default=None, help="Only our addresses, or only peers'."),
]


def with_filters(function: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(filter_options):
        function = option(function)
    return function


@directory.command("list")
@with_filters
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True, help="At most this many (0: all).")
@json_option
@pass_cli
def list_(cli: CliContext, kind: str | None, status: str | None, domain: str | None, local: bool | None,
          limit: int, as_json: bool) -> None:  # fmt: skip
    """List entries, by address."""
    filters = _filters(kind, status, domain, local)
    with cli.session() as session:
        book = cli.directory(session, "directory list")
        entries = book.entries(limit=limit or None, **filters)
        if as_json:
            echo_json_lines(entry_json(e, book) for e in entries)
            return
        shown = echo_table(_LIST_HEADERS, (_list_row(e, book) for e in entries))
        total = book.count(**filters)
    click.echo(f"{shown} of {total} entries" + (" (use --limit 0 for all)" if shown < total else ""), err=True)


@directory.command("search")
@click.argument("text", nargs=-1, required=True)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@json_option
@pass_cli
def search(cli: CliContext, text: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Find entries by name, address, identifier or organization (case and accents ignored)."""
    with cli.session() as session:
        book = cli.directory(session, "directory search")
        entries = book.search(" ".join(text), limit=limit)
        if as_json:
            echo_json([entry_json(e, book) for e in entries])
        elif entries:
            echo_table(_LIST_HEADERS, (_list_row(e, book) for e in entries))
        else:
            click.echo("No entry matches.", err=True)


def _status_command(name: str, reason_required: bool) -> click.Command:
    @click.argument("address")
    @click.option("--reason", required=reason_required, help="Why (kept in the entry's history).")
    @pass_cli
    def command(cli: CliContext, address: str, reason: str | None) -> None:
        with cli.session() as session:
            book = cli.directory(session, f"directory {name}")
            entry = getattr(book, name)(address, reason=reason)
            cli.record(session, f"directory.{name}", recipients=(entry.address,), reason=reason)
            click.echo(f"{entry.address} is now {entry.status}.")

    command.__doc__ = {
        "suspend": "Suspend ADDRESS: it can neither send nor receive until reactivated.",
        "reactivate": "Reactivate a suspended ADDRESS.",
        "revoke": "Revoke ADDRESS for good (revocation is final).",
    }[name]
    return directory.command(name)(command)


_status_command("suspend", reason_required=True)
_status_command("reactivate", reason_required=False)
_status_command("revoke", reason_required=True)


@directory.command("history")
@click.argument("address")
@json_option
@pass_cli
def history(cli: CliContext, address: str, as_json: bool) -> None:
    """Every change made to ADDRESS: when, by whom, what, why."""
    with cli.session() as session:
        changes = [change_json(c) for c in cli.directory(session, "directory history").history(address)]
    if as_json:
        echo_json(changes)
        return
    rows = (
        (
            c["at"].strftime("%Y-%m-%d %H:%M:%S"),
            c["actor"],
            c["action"],
            ", ".join(f"{k}: {old} → {new}" for k, (old, new) in (c["changes"] or {}).items()),
            c["reason"],
            c["source"],
        )
        for c in changes
    )
    echo_table(("at (utc)", "actor", "action", "changes", "reason", "source"), rows)


def _guess_format(path: Path) -> Format:
    suffix = path.suffix.lower()
    return Format.CSV if suffix == ".csv" else Format.JSON if suffix == ".json" else Format.EXTRACTION


class _CountingLines:
    """The lines of a binary file, counting the bytes read (for the progress bar)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self.stream:
            self.bytes += len(line)
            yield line


_PARALLEL_FROM = 4 * 1024 * 1024  # below this, starting worker processes costs more than it saves


@directory.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in Format]),
    help="File format (default: from the extension; .csv, .json, else the national extraction).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    help="Processes parsing a national extraction beside the one writing (default: one per spare core for "
    "files over 4 MB; 0: none).",
)
@click.option("--dry-run", is_flag=True, help="Report what would change, write nothing.")
@click.option("--strict", is_flag=True, help="Write nothing if any line is rejected (exit 1).")
@json_option
@pass_cli
def import_(
    cli: CliContext, file: Path, fmt: str | None, workers: int | None, dry_run: bool, strict: bool, as_json: bool
) -> None:
    """Import FILE: an idempotent upsert keyed on the lowercased address.

    Rejected lines are reported with their line number and reason; the others are imported.
    """
    file_format = Format(fmt) if fmt else _guess_format(file)
    size = file.stat().st_size
    if workers is None:
        workers = min(3, (os.cpu_count() or 1) - 1) if size > _PARALLEL_FROM else 0
    show_progress = not as_json and sys.stderr.isatty()
    with cli.engine.connect() as connection, file.open("rb") as stream, Session(bind=connection) as session:
        transaction = connection.begin()
        lines = _CountingLines(stream)
        with click.progressbar(length=size, label="Importing", file=sys.stderr, hidden=not show_progress) as bar:
            done = 0

            def progress(_count: int) -> None:
                nonlocal done
                bar.update(lines.bytes - done)
                done = lines.bytes

            report = import_chunks(
                connection,
                read_chunks(file_format, lines, workers=workers),
                actor=cli.operator_account,
                source=f"directory import --format {file_format} {file.name}",
                progress=progress,
                on_status_change=cli.status_listener(session),
            )
            session.flush()
            bar.update(size - done)
        if dry_run or (strict and report.rejected):
            transaction.rollback()
        else:
            counts = ", ".join(f"{label} {getattr(report, label)}" for label in ("created", "updated", "unchanged"))
            cli.record(session, "directory.imported", reason=f"{file.name} ({file_format}): {counts}, rejected "
                       f"{len(report.rejected)}")  # fmt: skip
            transaction.commit()
    if as_json:
        echo_json(report.to_json())
    else:
        note = " (dry run: nothing written)" if dry_run else ""
        if strict and report.rejected and not dry_run:
            note = " (--strict: nothing written)"
        click.echo(f"Import of {file} ({file_format}){note}")
        for label in ("created", "updated", "unchanged", "duplicates"):
            click.echo(f"  {label:<11}{getattr(report, label):>9,}")
        click.echo(f"  {'rejected':<11}{len(report.rejected):>9,}")
        for rejection in report.rejected:
            click.echo(f"line {rejection.line}: {rejection.reason}", err=True)
    if strict and report.rejected:
        raise click.exceptions.Exit(1)


@directory.command("export")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file (default: stdout).")
@click.option("--exclude-unlisted", is_flag=True, help="Leave out liste rouge entries.")
@with_filters
@pass_cli
def export(cli: CliContext, fmt: str, out: Path | None, exclude_unlisted: bool, kind: str | None,
           status: str | None, domain: str | None, local: bool | None) -> None:  # fmt: skip
    """Export the directory as JSON or CSV (both import back with `directory import`)."""
    filters = _filters(kind, status, domain, local)
    with cli.session() as session:
        book = cli.directory(session, "directory export")
        entries = (
            (e.to_data(), book.is_local(e)) for e in book.entries(**filters) if not (exclude_unlisted and e.unlisted)
        )
        if out is None:
            write_entries(Format(fmt), entries, sys.stdout)
            return
        partial = out.with_name(out.name + ".partial")
        with partial.open("w", encoding="utf-8", newline="") as stream:
            count = write_entries(Format(fmt), entries, stream)
        partial.replace(out)
    click.echo(f"Exported {count} entries to {out}.", err=True)


@directory.command("sample-extraction")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--lines", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--domain", "domains", multiple=True, help="Domains to draw addresses from (repeatable).")
@click.option("--with-errors", is_flag=True, help="Append lines the importer must reject, and duplicates.")
def sample_extraction(out: Path, lines: int, seed: int, domains: tuple[str, ...], with_errors: bool) -> None:
    """Write a synthetic national extraction (invented people and identifiers) for demos and tests."""
    if out.exists():
        raise ImportFormatError(f"{out} already exists: refusing to overwrite it")
    with out.open("w", encoding="utf-8") as stream:
        summary = write_sample_extraction(
            stream, lines, seed=seed, domains=domains or DEFAULT_DOMAINS, with_errors=with_errors
        )
    click.echo(
        f"Wrote {summary.lines} lines to {out} ({summary.rejected} to reject, {summary.duplicates} duplicates).",
        err=True,
    )
