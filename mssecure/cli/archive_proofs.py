"""``mssecure archive export / verify-export / evidence / verify-evidence``: proofs that leave the operator's machine.

The two ``verify-*`` commands are the auditor's: they read files and a public key only, and never touch the
configuration or a database, so they run on any machine with mssecure installed, in an empty directory.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric import ed25519

from mssecure.archive import Archive, ArchiveError, load_public_key
from mssecure.archive.checkpoint import key_id
from mssecure.archive.evidence import build_evidence, load_evidence, summary_lines, verify_evidence
from mssecure.archive.export import export_range, verify_export
from mssecure.archive.records import format_time
from mssecure.cli._context import CliContext
from mssecure.cli._output import echo_json
from mssecure.cli.archive import _message_store, _when
from mssecure.errors import KeyStoreError

__all__ = ["COMMANDS"]

pass_cli = click.make_pass_decorator(CliContext)


def _operator_archive(cli: CliContext, *, key_required: bool) -> tuple[Archive, ed25519.Ed25519PublicKey]:
    """The archive with its key when it can be loaded (a checkpoint may have to be signed), and its public key."""
    public_key = load_public_key(cli.material.archive_public_path)
    try:
        key = cli.material.keystore.load("archive")
    except KeyStoreError:
        if key_required:
            raise
        key = None
    return Archive(cli.engine, key=key, origin=cli.config.operator.domain), public_key


def _pinned_key(path: str | None) -> ed25519.Ed25519PublicKey | None:
    return load_public_key(Path(path)) if path else None


@click.command("export")
@click.option("--since", type=click.DateTime(), help="From this time (UTC unless a zone is given), inclusive.")
@click.option("--until", type=click.DateTime(), help="Before this time (UTC unless a zone is given).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A new (or empty) directory to write the bundle into.")  # fmt: skip
@click.option("--bodies", is_flag=True,
              help="Also write the message bodies the events name, DECRYPTED, as bodies/<sha256>.eml. WARNING: the "
                   "bundle then holds health data in clear; store, send and destroy it as such. Needs the master "
                   "secret; recorded as an archive.exported event naming you before any body is written.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@pass_cli
def export(cli: CliContext, since: datetime | None, until: datetime | None, out: Path, bodies: bool,
           as_json: bool) -> None:  # fmt: skip
    """Write a self-contained bundle of the events of a time range, verifiable offline with `verify-export`.

    The bundle holds the events as hashed, the signed checkpoint they are proven against (one is signed now if
    none covers the range yet), an inclusion proof and the archive's public key; with --bodies, the decrypted
    messages (health data: handle the bundle as such) and the list of those purged or never stored.
    """
    begin, end = _when(since), _when(until)
    if begin is not None and end is not None and begin >= end:
        raise ArchiveError("--since must be before --until")
    archive, public_key = _operator_archive(cli, key_required=False)
    store = _message_store(cli, reading=True) if bodies else None
    summary = export_range(archive, public_key, out, since=begin, until=end, store=store,
                           actor=cli.operator_account)  # fmt: skip
    if as_json:
        echo_json(summary.to_json())
    else:
        anchor = summary.checkpoint
        click.echo(
            f"Exported events {summary.first_sequence}..{summary.last_sequence} ({summary.events} event(s)) to {out}, "
            f"proven against the checkpoint of {anchor.tree_size} events signed {format_time(anchor.time)}; "
            f"check it with: mssecure archive verify-export {out} --operator-key archive.pub"
        )
    if summary.with_bodies:
        _warn_bodies(out, summary.bodies, summary.body_bytes, len(summary.absent))


def _warn_bodies(out: Path, bodies: int, size: int, absent: int) -> None:
    """Said on stderr even with --json: whoever runs the export must know what they now hold."""
    missing = f"; {absent} body(ies) the events name are not in it (purged, never stored: see manifest.json)"
    click.echo(
        f"mssecure: warning: {out} holds {bodies} DECRYPTED message body(ies) ({size:,} bytes): health data in "
        "clear; keep it on encrypted storage, send it over an encrypted channel, delete it when the audit is done"
        + (missing if absent else ""),
        err=True,
    )


def _warn_unpinned(bundle_key: str | None, origin: str | None) -> None:
    click.echo(
        f"mssecure: warning: no --operator-key: checked against the bundle's own archive.pub (key id "
        f"{(bundle_key or '?')[:16]}…). This proves the bundle is intact and complete, not that it comes from "
        f"{origin or 'the operator it names'}: pin the operator's key, obtained from them directly.",
        err=True,
    )


@click.command("verify-export")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--operator-key", type=click.Path(dir_okay=False), help="The operator's archive public key (PEM), "
              "obtained from the operator directly: proves the bundle comes from them.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_export_command(directory: Path, operator_key: str | None, as_json: bool) -> None:
    """Check an export bundle offline: every event, the chain, the proof, the checkpoint signatures, the edges.

    With bodies: each body file hashes to its name, which an event of the range names, and the manifest accounts
    for every body the events name. Needs no configuration and no database. Exits 1 naming the first bad file,
    line and sequence.
    """
    report = verify_export(directory, _pinned_key(operator_key))
    if as_json:
        echo_json(report.to_json())
    if operator_key is None:
        _warn_unpinned(report.key_id, report.origin)
    first = report.first
    if first is not None:
        others = len(report.findings) - 1
        more = f" ({others} more finding(s): see --json)" if others else ""
        raise ArchiveError(f"export verification FAILED at {first}{more}")
    if not as_json:
        anchor = report.checkpoint
        assert anchor is not None  # a bundle without findings has its proof checked against it
        since = report.since or "the start of the log"
        until = report.until or "its export"
        click.echo(
            f"Export verified: events {report.first_sequence}..{report.last_sequence} ({report.events} event(s)) of "
            f"{report.origin}, from {since} to {until}, complete and unmodified; proven in the checkpoint of "
            f"{anchor.tree_size} events signed {format_time(anchor.time)} by key {(report.key_id or '')[:16]}…"
            + (" (the operator key given)" if report.pinned else " (the bundle's own key)")
        )
        if report.with_bodies:
            absent = len(report.absent_bodies)
            click.echo(
                f"Bodies verified: {report.bodies} message body(ies) ({report.body_bytes:,} bytes), each the one its "
                "event names"
                + (
                    f"; {absent} named by the events absent, as manifest.json states (purged, not stored or "
                    "unreadable: the bundle cannot prove why)"
                    if absent
                    else ""
                )
            )


@click.command("evidence")
@click.argument("message_id")
@click.option("--recipient", help="State the outcome for this recipient only.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="The evidence file to write (a new file; - for standard output).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the statement as JSON (with --out FILE).")
@pass_cli
def evidence(cli: CliContext, message_id: str, recipient: str | None, out: str, as_json: bool) -> None:
    """Write the signed evidence of what happened to a message, checkable with `verify-evidence` and the public key.

    States the message's SHA-256, sender, recipients, the times of submission, relay, delivery, bounce and MDNs, with
    the archived events, their Merkle inclusion proofs and the signed checkpoint, signed by the archive key.
    """
    if out != "-" and Path(out).exists():
        raise ArchiveError(f"{out} exists: choose a new file name")
    archive, public_key = _operator_archive(cli, key_required=True)
    document = build_evidence(archive, public_key, message_id, recipient)
    text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    if out == "-":
        click.echo(text, nl=False)
        return
    try:
        with open(out, "x", encoding="utf-8") as stream:  # never overwrites: checked above, and again here
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as exc:
        raise ArchiveError(f"cannot write {out}: {exc.strerror or exc}") from None
    if as_json:
        echo_json(document["statement"])
        return
    for line in summary_lines(document["statement"]):
        click.echo(line)
    click.echo(f"Evidence written to {out}: {len(document['events'])} event(s) proven in the checkpoint of "
               f"{document['checkpoint']['tree_size']} events; check it with: "
               f"mssecure archive verify-evidence {out} --operator-key archive.pub")  # fmt: skip


@click.command("verify-evidence")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--operator-key", required=True, type=click.Path(dir_okay=False),
              help="The operator's archive public key (PEM), obtained from the operator directly.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_evidence_command(file: Path, operator_key: str, as_json: bool) -> None:
    """Check an evidence document offline with the operator's public key: its signature, the checkpoint's, each
    event's inclusion proof, and that the statement is what the events say. Needs no configuration.

    Exits 0 only when everything holds."""
    key = load_public_key(Path(operator_key))
    report = verify_evidence(load_evidence(file), key)
    if as_json:
        echo_json(report.to_json())
    failure = report.first_failure
    if failure is not None:
        others = sum(1 for c in report.checks if not c.ok) - 1
        more = f" ({others} more failed check(s): see --json)" if others else ""
        raise ArchiveError(f"evidence verification FAILED: {failure.name}: {failure.detail}{more}")
    if as_json:
        return
    assert report.statement is not None
    for line in summary_lines(report.statement):
        click.echo(line)
    for check in report.checks:
        click.echo(f"  ok {check.name}: {check.detail}")
    click.echo(f"Evidence verified: signed by {report.origin}'s archive key {key_id(key)[:16]}…")


COMMANDS: tuple[click.Command, ...] = (export, verify_export_command, evidence, verify_evidence_command)
