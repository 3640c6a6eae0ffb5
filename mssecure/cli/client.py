"""``mssecure client-config ADDRESS``: the settings a professional types into Thunderbird or Outlook."""

from __future__ import annotations

from pathlib import Path

import click
import sqlalchemy as sa

from mssecure.cli._context import CliContext
from mssecure.cli._output import echo_json
from mssecure.config import Config
from mssecure.crypto.keys import write_private_file
from mssecure.directory.models import Entry
from mssecure.errors import DirectoryError, EntryNotFound, MssecureError
from mssecure.imap.client import ClientSettings, Server, autoconfig_xml
from mssecure.imap.dovecot import DEFAULT_IMAP_PORT, DEFAULT_IMAPS_PORT, MASTER_SEPARATOR
from mssecure.smtp.models import Delegation, Mailbox

__all__ = ["COMMANDS", "client_config"]

pass_cli = click.make_pass_decorator(CliContext)

_PORT = click.IntRange(0, 65535)


def _servers(config: Config, imap_port: int, imaps_port: int) -> tuple[tuple[Server, ...], tuple[Server, ...]]:
    host = config.operator.hostname
    incoming = [Server("imap", host, port, kind) for port, kind in ((imaps_port, "SSL"), (imap_port, "STARTTLS"))]
    outgoing = [
        Server("smtp", host, port, kind)
        for port, kind in ((config.smtp.submissions_port, "SSL"), (config.smtp.submission_port, "STARTTLS"))
    ]
    return tuple(s for s in incoming if s.port), tuple(s for s in outgoing if s.port)


@click.command("client-config")
@click.argument("address")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the Thunderbird autoconfig file here (serve it as "
    "https://autoconfig.<domain>/mail/config-v1.1.xml).",
)
@click.option("--imap-port", type=_PORT, default=DEFAULT_IMAP_PORT, show_default=True,
              help="The IMAP STARTTLS port given to `dovecot config` (0: none).")  # fmt: skip
@click.option("--imaps-port", type=_PORT, default=DEFAULT_IMAPS_PORT, show_default=True,
              help="The IMAP TLS port given to `dovecot config` (0: none).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@pass_cli
def client_config(
    cli: CliContext, address: str, out: Path | None, imap_port: int, imaps_port: int, as_json: bool
) -> None:
    """The mail client settings of ADDRESS (an active local entry): IMAP and SMTP servers, ports, security, user
    name, and the organizational mailboxes it may open as a delegate."""
    config = cli.config
    wanted = address.strip().lower()
    with cli.session() as session:
        entry = session.scalars(sa.select(Entry).where(Entry.address == wanted)).one_or_none()
        if entry is None:
            raise EntryNotFound(f"no directory entry for {address}")
        if entry.domain not in config.operator.domains:
            raise DirectoryError(f"{entry.address} is a peer operator's address: its mail client is set up there")
        if entry.status != "active":
            raise DirectoryError(f"{entry.address} is {entry.status}: it cannot log in")
        mailbox = session.get(Mailbox, entry.address)
        delegated = session.scalars(
            sa.select(Delegation.organization)
            .join(Entry, Entry.address == Delegation.organization)
            .where(Delegation.delegate == entry.address, Entry.status == "active")
            .order_by(Delegation.organization)
        ).all()
        delegates = session.scalars(
            sa.select(Delegation.delegate).where(Delegation.organization == entry.address).order_by(Delegation.delegate)
        ).all()
        name = " ".join(p for p in (entry.first_name, entry.last_name) if p) or entry.organization or entry.address
        incoming, outgoing = _servers(config, imap_port, imaps_port)
        settings = ClientSettings(
            address=entry.address,
            display_name=name,
            domain=entry.domain,
            domains=(entry.domain, *sorted(config.operator.domains - {entry.domain})),
            incoming=incoming,
            outgoing=outgoing,
            kind=entry.kind,
            has_password=mailbox is not None and mailbox.password_hash is not None,
            delegated_mailboxes=tuple(delegated),
            delegates=tuple(delegates),
        )
    if out is not None:
        xml = autoconfig_xml(settings, provider_name=f"Messagerie sécurisée de santé {config.operator.domain}")
        try:
            write_private_file(out, xml, 0o644)
        except OSError as exc:
            raise MssecureError(f"cannot write {out}: {exc.strerror}") from None
    if as_json:
        echo_json({**settings.to_json(), "autoconfig": str(out) if out else None})
        return
    _print(settings, out)


def _print(settings: ClientSettings, out: Path | None) -> None:
    click.echo(f"Mail client settings for {settings.display_name} <{settings.address}>")
    for title, servers in (("Incoming mail (IMAP)", settings.incoming), ("Outgoing mail (SMTP)", settings.outgoing)):
        click.echo("")
        click.echo(title)
        if not servers:
            click.echo("  (no listener configured)")
            continue
        best, *others = servers
        click.echo(f"  server          {best.hostname}")
        click.echo(f"  port            {best.port}")
        click.echo(f"  security        {best.security}" + "".join(
            f"   (or port {s.port} with {s.security})" for s in others))  # fmt: skip
        click.echo(f"  username        {settings.username}")
        click.echo("  authentication  normal password")
    click.echo("")
    if not settings.has_password:
        if settings.kind == "organizational":
            click.echo(f"{settings.address} has no password: its delegates open it with their own (below).")
        else:
            click.echo(
                f"No password is set yet: the operator runs `mssecure directory set-password {settings.address}`."
            )
    if settings.delegates:
        click.echo(f"Delegates of this mailbox: {', '.join(settings.delegates)}. Each adds it as an account with")
        click.echo(f"the username {settings.address}{MASTER_SEPARATOR}<their own address> and their own password.")
    if settings.delegated_mailboxes:
        click.echo("Delegated mailboxes: add each as another IMAP account with the same servers, your own password")
        click.echo("and this username:")
        for mailbox in settings.delegated_mailboxes:
            click.echo(f"  {mailbox}{MASTER_SEPARATOR}{settings.address}")
        click.echo("To send as one of them, add it as an identity (From) of your own SMTP account.")
    if out is not None:
        click.echo(f"Thunderbird autoconfig written to {out} (serve it at "
                   f"https://autoconfig.{settings.domain}/mail/config-v1.1.xml).")  # fmt: skip


COMMANDS: tuple[click.Command, ...] = (client_config,)
