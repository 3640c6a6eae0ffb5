"""``mssecure send``: compose a message (optionally an IHE XDM prescription) and submit it to the relay.

The reference client for integrators: what it sends is what their software should send. The command reads the
files and the credentials, asks the directory for the sender's name (and, with ``--xdm``, the author's RPPS), then
calls ``mssecure.compose`` (pure) and ``mssecure.submit`` (the network). See docs/send.md.

Exit status: 0 when every recipient was accepted; 1 when the server refused (AUTH, MAIL FROM, DATA, or some or all
recipients: its reply is shown); 2 for a problem with the input, the configuration or the connection (nothing was
submitted), as for usage errors.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import sqlalchemy as sa
from sqlalchemy.orm import Session

from mssecure.cli._context import CliContext
from mssecure.cli._output import echo_json
from mssecure.compose import (
    Attachment,
    Composed,
    ComposeError,
    Draft,
    XdmRequest,
    compose,
    split_patient_name,
)
from mssecure.config import CONFIG_ENV, CONFIG_FILENAME, Config
from mssecure.crypto.keys import write_private_file
from mssecure.directory.models import Entry
from mssecure.errors import MssecureError
from mssecure.submit import (
    DEFAULT_TIMEOUT,
    ClientCertificate,
    Credentials,
    Endpoint,
    SubmissionRefused,
    SubmitResult,
    load_pkcs12,
    submit,
    tls_context,
)
from mssecure.xdm import INS_NIR_OID, Author, Patient

__all__ = ["COMMANDS", "send"]

PASSWORD_ENV = "MSSECURE_PASSWORD"  # noqa: S105 - the name of the variable, not a password
EXIT_REFUSED = 1  # the server said no
EXIT_INPUT = 2  # nothing was submitted: the input, the configuration or the connection
_MAX_SECRET_FILE = 64 * 1024
_FALLBACK_MAX_SIZE = 50 * 1024 * 1024  # without a configuration: the relay's default smtp.max_message_size
_UNSPECIFIED = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - listening addresses that name no one host

pass_cli = click.make_pass_decorator(CliContext)


@dataclass(frozen=True)
class _Sender:
    """What the directory says of the sender (and of the login sending for it): the display name and the author."""

    display_name: str | None
    author: Author | None
    author_problem: str | None  # why there is no author, for --xdm


def _fail(message: str, *, as_json: bool, status: int = EXIT_INPUT, **fields: Any) -> NoReturn:
    click.echo(f"mssecure: error: {message}", err=True)
    if as_json:
        echo_json({"status": "error" if status == EXIT_INPUT else "refused", "error": message, **fields})
    raise click.exceptions.Exit(status)


def _read_file(path: Path, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; a FIFO, a device or a directory is refused rather
    than read (it could block forever or never end)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ComposeError(f"{what} {path}: no such file") from None
    except OSError as error:
        raise ComposeError(f"cannot read {what} {path}: {error.strerror}") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ComposeError(f"{what} {path} is not a regular file")
    with os.fdopen(descriptor, "rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise ComposeError(f"{what} {path} is larger than {limit} bytes")
    return data


def _first_line(path: Path, what: str) -> str:
    """The first line of a secret file (the rest, and the line ending, ignored); never echoed anywhere."""
    try:
        text = _read_file(path, what, _MAX_SECRET_FILE).decode("utf-8")
    except UnicodeDecodeError:
        raise ComposeError(f"{what} {path} is not UTF-8 text") from None
    line = text.split("\n", 1)[0].removesuffix("\r")  # only LF ends it: a password may hold any other character
    if not line:
        raise ComposeError(f"{what} {path} holds nothing on its first line")
    return line


def _optional_config(cli: CliContext) -> Config | None:
    """The operator's configuration when there is one; a client on another machine runs without (then --server
    and --ca are needed, and the directory is not consulted)."""
    if cli.config_path or os.environ.get(CONFIG_ENV) or Path(CONFIG_FILENAME).is_file():
        return cli.config
    return None


def _body(body: str | None, body_file: Path | None, limit: int) -> str | None:
    if body is not None:
        return body
    if body_file is None:
        return None
    data = sys.stdin.buffer.read(limit + 1) if str(body_file) == "-" else _read_file(body_file, "body file", limit)
    if len(data) > limit:
        raise ComposeError(f"the body is larger than {limit} bytes, the relay's message size limit")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise ComposeError(f"the body file {body_file} is not UTF-8 text") from None


def _entry(session: Session, address: str) -> Entry | None:
    return session.scalars(sa.select(Entry).where(Entry.address == address.strip().lower())).one_or_none()


def _author_of(entry: Entry) -> tuple[Author | None, str | None]:
    if entry.identifier_type == "RPPS" and entry.identifier:
        return Author(entry.last_name or "", entry.first_name or "", entry.identifier), None
    if entry.identifier_type:
        return None, (
            f"{entry.address} is identified by {entry.identifier_type} {entry.identifier}: XDM authors are "
            "identified by their RPPS"
        )
    return None, f"{entry.address} has no RPPS (a {entry.kind} mailbox)"


def _sender(cli: CliContext, config: Config | None, sender: str, login: str | None) -> _Sender:
    """The sender's display name, and the XDM author: the sender if it has an RPPS, else the delegate sending for
    it (``--login``), whose documents they are."""
    if config is None:
        return _Sender(None, None, "no configuration, so no directory to take the author (name, RPPS) from")
    with cli.session() as session:
        entry = _entry(session, sender)
        if entry is None:
            return _Sender(None, None, f"{sender} is not in the directory")
        name = entry.to_data().display_name or None
        author, problem = _author_of(entry)
        if author is None and login is not None and login.strip().lower() != entry.address:
            delegate = _entry(session, login)
            if delegate is None:
                problem = f"{problem}, and {login} is not in the directory"
            else:
                author, delegate_problem = _author_of(delegate)
                problem = f"{problem}, and {delegate_problem}"
        if author is None and login is None and entry.kind != "personal":
            problem = f"{problem}; send as its delegate with --login YOUR-ADDRESS, the documents' author"
        return _Sender(name, author, problem)


def _patient(
    name: str | None,
    last: str | None,
    first: str | None,
    birth: datetime | None,
    sex: str | None,
    ins: str | None,
    local_id: str | None,
    local_oid: str | None,
    ins_oid: str,
) -> Patient:
    if name is not None and (last or first):
        raise click.UsageError("give the patient as --patient-name or as --patient-last/--patient-first, not both")
    if name is not None:
        last, first = split_patient_name(name)
    if not last or not first:
        raise click.UsageError("--xdm needs the patient's names: --patient-name 'NOM Prénom' (or --patient-last "
                               "and --patient-first)")  # fmt: skip
    if birth is None:
        raise click.UsageError("--xdm needs the patient's --birth-date YYYY-MM-DD")
    if ins is None and not (local_id and local_oid):
        raise click.UsageError("--xdm needs the patient's --patient-ins (qualified identity), or --patient-id with "
                               "--patient-id-oid (the OID of the system that assigned it)")  # fmt: skip
    birth_date: date = birth.date()
    return Patient(last, first, birth_date, sex=sex, ins=ins, ins_oid=ins_oid, local_id=local_id, local_oid=local_oid)


def _endpoint(config: Config | None, server: str | None, tls_name: str | None, implicit_tls: bool) -> Endpoint:
    if server is not None:
        host, _, port_text = server.rpartition(":")
        host = host.strip("[]")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ComposeError(f"bad --server {server!r}: expected HOST:PORT")
        port = int(port_text)
    elif config is None:
        raise ComposeError("no configuration: give --server HOST:PORT (and --ca FILE) to reach the relay")
    else:
        listen = config.smtp.listen.strip()
        host = config.operator.hostname if listen in _UNSPECIFIED else listen
        port = config.smtp.submissions_port if implicit_tls else config.smtp.submission_port
        if not port:
            which = "submissions_port" if implicit_tls else "submission_port"
            raise ComposeError(f"smtp.{which} is 0 (disabled) in the configuration: give --server HOST:PORT")
    if tls_name is None:
        if not _is_ip(host):
            tls_name = host
        elif config is not None:
            tls_name = config.operator.hostname
        else:
            raise ComposeError(f"--server {host} is an address: give --tls-name, the relay's host name to check")
    return Endpoint(host, port, tls_name.strip().lower(), implicit_tls)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _credentials(
    login: str, password_file: Path | None, p12: Path | None, p12_password_file: Path | None
) -> Credentials:
    """The password from --password-file, $MSSECURE_PASSWORD, or a hidden prompt on a terminal (none when a client
    certificate is given without one: the certificate then stands for its owner)."""
    client: ClientCertificate | None = None
    if p12 is not None:
        if p12_password_file is not None:
            secret = _first_line(p12_password_file, "PKCS#12 password file")
        elif sys.stdin.isatty():
            secret = str(click.prompt("PKCS#12 password", hide_input=True, err=True))
        else:
            raise ComposeError("--p12 needs its password: give --p12-password-file (no terminal to prompt on)")
        client = load_pkcs12(_read_file(p12, "PKCS#12 file", _MAX_SECRET_FILE), secret.encode(), name=str(p12))
    password: str | None
    if password_file is not None:
        password = _first_line(password_file, "password file")
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    elif client is not None:
        password = None
    elif sys.stdin.isatty():
        password = str(click.prompt(f"Password for {login}", hide_input=True, err=True))
    else:
        raise ComposeError(f"no password: give --password-file or set ${PASSWORD_ENV} (no terminal to prompt on)")
    return Credentials(login.strip().lower(), password, client)


def _summary(composed: Composed, out: Path | None) -> dict[str, Any]:
    return {
        "message_id": composed.message_id,
        "sender": composed.sender,
        "recipients": list(composed.recipients),
        "subject": composed.subject,
        "subject_source": composed.subject_source,
        "size": composed.size,
        "attachments": [
            {"file_name": a.file_name, "mime_type": a.mime_type, "size": a.size} for a in composed.attachments
        ],
        "xdm": None
        if composed.xdm is None
        else {
            "file_name": composed.xdm.file_name,
            "size": composed.xdm.size,
            "documents": composed.xdm.documents,
            "prescription_id": composed.xdm.prescription_id,
            "originals_attached": composed.xdm.originals_attached,
            "headers": dict(composed.xdm.headers),
        },
        "out": str(out) if out else None,
    }


def _echo_summary(composed: Composed) -> None:
    source = "the MSSanté XDM convention" if composed.subject_source == "xdm" else "as given"
    click.echo(f"Message-ID: {composed.message_id}")
    click.echo(f"Subject: {composed.subject} ({source})")
    for attached in composed.attachments:
        click.echo(f"Attached: {attached.file_name} ({attached.mime_type}, {attached.size} bytes)")


def _result_fields(result: SubmitResult) -> dict[str, Any]:
    return {
        "reply": None if result.reply is None else {"code": result.reply.code, "text": result.reply.text},
        "queue_id": result.queue_id,
        "accepted": list(result.accepted),
        "refused": [{"address": a, "code": r.code, "text": r.text} for a, r in result.refused],
    }


_XDM_ONLY_OPTIONS = ("patient_ins", "patient_name", "patient_last", "patient_first", "birth_date", "patient_sex",
                     "patient_id", "patient_id_oid", "label", "xdm_only")  # fmt: skip


@click.command("send")
@click.option("--from", "sender", required=True, metavar="ADDRESS", help="The sender: your address, or an "
              "organizational mailbox you are a delegate of (with --login).")  # fmt: skip
@click.option("--to", "to", multiple=True, required=True, metavar="ADDRESS", help="A recipient (repeat for more).")
@click.option("--cc", "cc", multiple=True, metavar="ADDRESS", help="A copy recipient (repeat for more).")
@click.option("--subject", help="The subject (with --xdm, default: the MSSanté convention XDM/1.0/DDM+…).")
@click.option("--body", help="The text of the message.")
@click.option("--body-file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              help="Read the text (UTF-8) from this file ('-': standard input).")  # fmt: skip
@click.option("--attach", "attach", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Attach this file (repeat for more); its type is sniffed (PDF, CDA XML, images…).")  # fmt: skip
@click.option("--xdm", is_flag=True, help="Package the attachments as IHE XDM (IHE_XDM.ZIP) with the X-MSS-* fields.")
@click.option("--xdm-only", is_flag=True, help="With --xdm, attach only IHE_XDM.ZIP (default: the documents too).")
@click.option("--patient-ins", help="The patient's matricule INS (qualified identity only).")
@click.option("--patient-id", help="Without an INS: the patient's local identifier…")
@click.option("--patient-id-oid", help="…and the OID of the system that assigned it.")
@click.option("--patient-ins-oid", default=INS_NIR_OID, show_default=True, help="OID of the INS (NIR, NIA, tests).")
@click.option("--patient-name", help='The patient as "NOM Prénom" (family name in capitals first).')
@click.option("--patient-last", help="The patient's family name.")
@click.option("--patient-first", help="The patient's given name(s).")
@click.option("--birth-date", type=click.DateTime(formats=["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="The patient's birth date.")  # fmt: skip
@click.option("--patient-sex", type=click.Choice(["M", "F", "U"]), help="The patient's administrative sex.")
@click.option("--label", help="With --xdm, the kind of document in the subject and the package title (default: "
              "Ordonnance with --prescription-id, else Document).")  # fmt: skip
@click.option("--prescription-id", help="The prescription identifier (X-MSS-Prescription-Id, and the XDM metadata).")
@click.option("--request-mdn", is_flag=True, help="Ask for disposition notifications (Disposition-Notification-To).")
@click.option("--final-delivery", is_flag=True, help="With --request-mdn, ask for Direct's final-delivery "
              "notification (dispatched, once in the mailbox).")  # fmt: skip
@click.option("--server", metavar="HOST:PORT", help="The relay's submission listener (default: from the "
              "configuration, smtp.submission_port or, with --implicit-tls, smtp.submissions_port).")  # fmt: skip
@click.option("--implicit-tls", is_flag=True, help="TLS from the start (port 465) instead of STARTTLS (587).")
@click.option("--tls-name", metavar="NAME", help="The name the server certificate must carry (default: the "
              "--server host name, else operator.hostname).")  # fmt: skip
@click.option("--ca", "ca_file", type=click.Path(dir_okay=False, path_type=Path), help="The operator's CA "
              "certificate to verify the server with (default: <data dir>/pki/ca.crt).")  # fmt: skip
@click.option("--login", metavar="ADDRESS", help="Authenticate as this address (a delegate sending as an "
              "organizational mailbox; default: the --from address).")  # fmt: skip
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), help="Read the password from "
              f"the first line of this file (else ${PASSWORD_ENV}, else a hidden prompt).")  # fmt: skip
@click.option("--p12", type=click.Path(dir_okay=False, path_type=Path), help="Present the client certificate of "
              "this PKCS#12 (`mssecure certs export-p12`); without a password it is the credential.")  # fmt: skip
@click.option("--p12-password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the PKCS#12 password from the first line of this file (else a hidden prompt).")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(1, 3600), default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds to wait for the server at each step.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Compose only: write the message to --out, send nothing.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the composed message here "
              "(mode 0600, never over an existing file).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@pass_cli
def send(cli: CliContext, /, **options: Any) -> None:
    """Compose a message and submit it through the relay's submission port, with the sender's credentials.

    Exit status: 0 all recipients accepted, 1 the server refused (some or all), 2 nothing submitted (input,
    configuration or connection problem).
    """
    as_json: bool = options["as_json"]
    try:
        _send(cli, options)
    except MssecureError as error:
        _fail(str(error), as_json=as_json)
    except sa.exc.SQLAlchemyError as error:  # the directory could not be read: nothing was submitted
        orig = getattr(error, "orig", None) or error
        _fail(f"database: {str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__}",
              as_json=as_json)  # fmt: skip


def _send(cli: CliContext, options: dict[str, Any]) -> None:
    as_json: bool = options["as_json"]
    if options["body"] is not None and options["body_file"] is not None:
        raise click.UsageError("give the text as --body or --body-file, not both")
    if not options["xdm"]:
        given = [f"--{name.replace('_', '-')}" for name in _XDM_ONLY_OPTIONS if options[name] not in (None, False)]
        if given:
            raise click.UsageError(f"{', '.join(given)} only make(s) sense with --xdm")
    if options["final_delivery"] and not options["request_mdn"]:
        raise click.UsageError("--final-delivery needs --request-mdn")
    if options["dry_run"] and options["out"] is None:
        raise click.UsageError("--dry-run writes the message to --out FILE")
    out: Path | None = options["out"]
    if out is not None and (out.exists() or out.is_symlink()):
        raise ComposeError(f"{out} already exists: refusing to overwrite it")

    config = _optional_config(cli)
    max_size = config.smtp.max_message_size if config else None
    limit = max_size or _FALLBACK_MAX_SIZE
    if config is not None and len(set(options["to"]) | set(options["cc"])) > config.smtp.max_recipients:
        raise ComposeError(
            f"more recipients than the relay accepts ({config.smtp.max_recipients}, smtp.max_recipients)"
        )
    body = _body(options["body"], options["body_file"], limit)
    attachments = [Attachment(path.name, _read_file(path, "attachment", limit)) for path in options["attach"]]
    sender_info = _sender(cli, config, options["sender"], options["login"])
    xdm: XdmRequest | None = None
    if options["xdm"]:
        patient = _patient(options["patient_name"], options["patient_last"], options["patient_first"],
                           options["birth_date"], options["patient_sex"], options["patient_ins"],
                           options["patient_id"], options["patient_id_oid"], options["patient_ins_oid"])  # fmt: skip
        if sender_info.author is None:
            raise ComposeError(f"--xdm needs an author identified by RPPS: {sender_info.author_problem}")
        xdm = XdmRequest(sender_info.author, patient, options["label"], attach_originals=not options["xdm_only"])
    draft = Draft(
        sender=options["sender"],
        to=options["to"],
        cc=options["cc"],
        subject=options["subject"],
        body=body,
        sender_name=sender_info.display_name,
        attachments=attachments,
        xdm=xdm,
        prescription_id=options["prescription_id"],
        request_mdn=options["request_mdn"],
        final_delivery=options["final_delivery"],
    )
    composed = compose(draft, now=datetime.now(UTC), max_size=max_size)
    summary = _summary(composed, out)

    if options["dry_run"]:
        assert out is not None
        _write(out, composed.data)
        if as_json:
            echo_json({"status": "dry-run", **summary})
        else:
            _echo_summary(composed)
            click.echo(f"Wrote {out} ({composed.size} bytes, mode 0600); nothing was sent.")
        return

    endpoint = _endpoint(config, options["server"], options["tls_name"], options["implicit_tls"])
    ca_file: Path | None = options["ca_file"]
    if ca_file is None:
        if config is None:
            raise ComposeError("no configuration: give --ca FILE, the operator's CA certificate (its pki/ca.crt)")
        ca_file = cli.material.ca_cert_path
    ca_pem = _read_file(ca_file, "CA file", _MAX_SECRET_FILE)
    login: str = options["login"] or composed.sender
    credentials = _credentials(login, options["password_file"], options["p12"], options["p12_password_file"])
    context = tls_context(ca_pem, credentials.client, ca_name=str(ca_file))
    if out is not None:
        _write(out, composed.data)  # the copy of what is submitted, kept even if the server refuses it
    try:
        result = submit(
            composed.data,
            sender=composed.sender,
            recipients=composed.recipients,
            endpoint=endpoint,
            context=context,
            credentials=credentials,
            timeout=options["timeout"],
        )
    except SubmissionRefused as refusal:
        _fail(str(refusal), as_json=as_json, status=EXIT_REFUSED, **summary, server=str(endpoint),
              tls_name=endpoint.tls_name, stage=refusal.stage,
              reply={"code": refusal.reply.code, "text": refusal.reply.text})  # fmt: skip
    status = "sent" if result.complete else ("partial" if result.accepted else "refused")
    if as_json:
        echo_json({"status": status, **summary, "server": str(endpoint), "tls_name": endpoint.tls_name,
                   **_result_fields(result)})  # fmt: skip
    else:
        _echo_summary(composed)
        if result.reply is not None:
            click.echo(f"Server {endpoint} ({endpoint.tls_name}): {result.reply}")
        if result.accepted:
            click.echo(f"Accepted: {', '.join(result.accepted)}")
        for address, reply in result.refused:
            click.echo(f"Refused: {address}: {reply}")
    if not result.complete:
        refused = ", ".join(f"{address} ({reply})" for address, reply in result.refused)
        click.echo(f"mssecure: error: the server refused {refused}", err=True)
        raise click.exceptions.Exit(EXIT_REFUSED)


def _write(out: Path, data: bytes) -> None:
    try:
        write_private_file(out, data, exclusive=True)
    except FileExistsError:
        raise ComposeError(f"{out} already exists: refusing to overwrite it") from None
    except OSError as error:
        raise ComposeError(f"cannot write {out}: {error.strerror}") from None


COMMANDS: tuple[click.Command, ...] = (send,)
