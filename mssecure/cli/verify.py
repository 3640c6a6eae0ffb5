"""``mssecure verify MESSAGE``: what pharmacy software asks before dispensing — who signed this prescription, is it
intact, which documents and prescription identifier does it carry.

Exit status: 0 when every check holds, 1 when one fails (the last line says which), 2 when the input cannot be
checked at all (unreadable, too large, not a mail message, encrypted, not signed). Everything the sender wrote
(names, subjects, file names) is printed with its control characters escaped, so a message cannot drive the
terminal or forge a line of the report; ``--json`` gives the same facts to software.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from mssecure.cli._context import CliContext
from mssecure.verification import MAX_MESSAGE_SIZE, Report, UnusableMessage, database_trust, verify_message

__all__ = ["COMMANDS"]

pass_cli = click.make_pass_decorator(CliContext)

EXIT_FAILED = 1
EXIT_UNUSABLE = 2


def shown(value: object) -> str:
    """``value`` as one terminal-safe line: every non-printable character (C0/C1 controls, line breaks, bidi
    overrides…) written as a Python escape."""
    text = "" if value is None else str(value)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _json_text(value: Any) -> str:
    """JSON whose strings keep their accents but never carry a raw non-printable character (JSON escapes C0 controls
    itself; C1 controls and format characters such as U+202E are escaped here too)."""
    text = json.dumps(value, ensure_ascii=False, indent=2)
    return "".join(c if c.isprintable() or c in "\n" else json.dumps(c)[1:-1] for c in text)


def _read(path: str) -> bytes:
    """At most MAX_MESSAGE_SIZE bytes of ``path`` (``-``: standard input); UnusableMessage when unreadable or
    larger (one more byte is read to know)."""
    try:
        with click.open_file(path, "rb") as stream:  # "-" is standard input
            data: bytes = stream.read(MAX_MESSAGE_SIZE + 1)
    except OSError as error:
        raise UnusableMessage(f"cannot read {shown(path)}: {error.strerror or type(error).__name__}") from None
    if len(data) > MAX_MESSAGE_SIZE:
        raise UnusableMessage(f"the message is larger than {MAX_MESSAGE_SIZE // (1024 * 1024)} MiB")
    return data


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _identity_line(report: Report) -> str:
    identity = report.identity
    if report.signature.signer is None:
        return "- (no signer could be verified)"
    if identity is None:
        return f"{shown(report.signature.signer)} (not in the directory)"
    parts = [shown(identity.name) or shown(identity.address)]
    if identity.identifier_type and identity.identifier:
        parts.append(f"{shown(identity.identifier_type)} {shown(identity.identifier)}")
    if identity.national_id:
        parts.append(f"national id {shown(identity.national_id)}")
    for value in (identity.profession, identity.specialty, identity.organization):
        if value:
            parts.append(shown(value))
    return ", ".join(parts) + f"; directory entry {shown(identity.address)} is {shown(identity.status)}"


def _print(report: Report) -> None:
    echo = click.echo
    message, signature, dkim = report.message, report.signature, report.dkim
    label = "delivered by this operator" if message.source == "mailbox" else "raw signed message"
    echo(f"Message       {shown(message.message_id) or '-'} ({label})")
    echo(f"  From        {shown(message.from_address) or '-'}")
    echo(f"  Subject     {shown(message.subject) or '-'}")
    echo(f"  Date        {shown(message.date) or '-'}")
    verdict = "valid" if signature.valid else "INVALID"
    algorithm = shown(signature.digest_algorithm) or "?"
    echo(f"Signature     {verdict} (S/MIME, {algorithm}), signed {_when(signature.signing_time)}")
    echo(f"Signer        {_identity_line(report)}")
    certificate = signature.certificate
    if certificate is not None:
        echo(f"Certificate   serial {certificate.serial}, issued by {shown(certificate.issuer)}, "
             f"valid {certificate.not_before:%Y-%m-%d} to {certificate.not_after:%Y-%m-%d}")  # fmt: skip
        echo(f"  at signing  {certificate.status_at_signing}")
        echo(f"  now         {certificate.status_now}")
    author = report.authentication_results.authserv_id if report.authentication_results is not None else ""
    source = {
        "authentication-results": f"from the Authentication-Results of {shown(author)}",
        "dkim-signature": "checked here with the trust space's keys",
        "none": "no DKIM signature",
    }[dkim.source]
    details = ", ".join(f"{name}={shown(value)}" for name, value in (("d", dkim.domain), ("s", dkim.selector)) if value)
    echo(f"DKIM          {shown(dkim.result)}" + (f" ({details})" if details else "") + f", {source}")
    for authserv_id in report.ignored_authentication_results:
        echo(f"  ignored     Authentication-Results from {shown(authserv_id)} (not this operator's relay)")
    if not report.packages:
        echo("XDM           none")
    for package in report.packages:
        name = shown(package.file_name) or "(unnamed attachment)"
        if not package.valid:
            echo(f"XDM           {name}: INVALID ({shown(package.reason)})")
            continue
        patient = shown(package.patient_id) or "-"
        echo(f"XDM           {name}: valid, {len(package.documents)} document(s), patient {patient}")
        for document in package.documents:
            hashes = "SHA-1 and SHA-256 ok" if document.sha256_declared else "SHA-1 ok"
            echo(f"  {shown(document.path)}  {shown(document.name)}  {shown(document.mime_type)}  "
                 f"{document.size} bytes  {hashes}  sha256 {document.sha256}")  # fmt: skip
    prescription = report.prescription
    origin = []
    if prescription.from_packages:
        origin.append("XDM metadata")
    if prescription.from_header:
        origin.append("header")
    where = f" ({' and '.join(origin)})" if origin else ""
    echo(f"Prescription  {shown(prescription.value) or 'none'}{where}")
    if prescription.duplicate:
        echo(f"  DUPLICATE   already delivered to another mailbox: {shown(prescription.duplicate)}")
    if report.ok:
        echo("OK: signature, signer, certificate, DKIM, documents and prescription identifier verified")
    else:
        echo("FAILED: " + "; ".join(shown(failure) for failure in report.failures))


@click.command("verify")
@click.argument("message", metavar="MESSAGE")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_cli
def verify(cli: CliContext, message: str, as_json: bool) -> None:
    """Verify MESSAGE (a file, or - for standard input): the decrypted message from a mailbox of this operator, or
    a raw S/MIME signed message. Prints the signer's verified identity, the certificate's status at signing and now,
    DKIM, the XDM documents and the prescription identifier; exits 0 only when everything holds, 1 when a check
    fails, 2 when the input cannot be checked."""
    try:
        data = _read(message)
        with cli.session() as session:
            report = verify_message(data, database_trust(session, cli.config, cli.material), now=datetime.now(UTC))
    except UnusableMessage as error:
        if as_json:
            click.echo(_json_text({"result": "unusable", "failures": [str(error)]}))
        click.echo(f"mssecure: error: {shown(error)}", err=True)
        raise click.exceptions.Exit(EXIT_UNUSABLE) from None
    if as_json:
        click.echo(_json_text(report.to_dict()))
    else:
        _print(report)
    if not report.ok:
        raise click.exceptions.Exit(EXIT_FAILED)


COMMANDS: tuple[click.Command, ...] = (verify,)
