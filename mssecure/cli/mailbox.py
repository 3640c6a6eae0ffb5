"""``mssecure directory set-password|delegate|undelegate|delegates|end-to-end``: the mailboxes of local entries."""

from __future__ import annotations

from pathlib import Path

import click

from mssecure.cli._context import CliContext
from mssecure.cli._output import echo_json
from mssecure.errors import DirectoryError
from mssecure.smtp.mailboxes import Mailboxes

__all__ = ["COMMANDS"]

pass_cli = click.make_pass_decorator(CliContext)


def _mailboxes(cli: CliContext, session: object, source: str) -> Mailboxes:
    return Mailboxes(session, cli.config, actor=cli.operator_account, source=source)  # type: ignore[arg-type]


def _read_password(password_file: Path | None) -> str:
    if password_file is not None:
        lines = password_file.read_text(encoding="utf-8").splitlines()
        if not lines or not lines[0]:
            raise DirectoryError(f"{password_file} holds no password on its first line")
        return lines[0]
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@click.command("set-password")
@click.argument("address")
@click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the password from the first line of this file (default: prompt twice, hidden).",
)
@pass_cli
def set_password(cli: CliContext, address: str, password_file: Path | None) -> None:
    """Set the password ADDRESS uses to submit mail (SMTP AUTH) and read it (IMAP); stored as an argon2id hash."""
    password = _read_password(password_file)
    with cli.session() as session:
        entry = _mailboxes(cli, session, "directory set-password").set_password(address, password)
        cli.record(session, "mailbox.password_set", recipients=(entry.address,))  # never the password
    click.echo(f"Password set for {entry.address}")


@click.command("delegate")
@click.argument("organization")
@click.argument("person")
@pass_cli
def delegate(cli: CliContext, organization: str, person: str) -> None:
    """Let PERSON send as (and read) the organizational mailbox ORGANIZATION."""
    with cli.session() as session:
        _mailboxes(cli, session, "directory delegate").delegate(organization, person)
        cli.record(session, "mailbox.delegated", recipients=(organization.lower(), person.lower()))
    click.echo(f"{person.lower()} is now a delegate of {organization.lower()}")


@click.command("undelegate")
@click.argument("organization")
@click.argument("person")
@pass_cli
def undelegate(cli: CliContext, organization: str, person: str) -> None:
    """Withdraw PERSON's delegation on ORGANIZATION."""
    with cli.session() as session:
        _mailboxes(cli, session, "directory undelegate").undelegate(organization, person)
        cli.record(session, "mailbox.undelegated", recipients=(organization.lower(), person.lower()))
    click.echo(f"{person.lower()} is no longer a delegate of {organization.lower()}")


@click.command("delegates")
@click.argument("organization")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def delegates(cli: CliContext, organization: str, as_json: bool) -> None:
    """List the delegates of the organizational mailbox ORGANIZATION."""
    with cli.session() as session:
        rows = [
            {"delegate": d.delegate, "since": d.created_at, "by": d.created_by}
            for d in _mailboxes(cli, session, "directory delegates").delegates(organization)
        ]
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['delegate']}  (since {row['since']:%Y-%m-%d}, by {row['by']})")
    if not rows:
        click.echo(f"{organization.lower()} has no delegate")


@click.command("end-to-end")
@click.argument("address")
@click.option("--on/--off", "enabled", required=True, help="Deliver mail to ADDRESS still encrypted (--on) or not.")
@pass_cli
def end_to_end(cli: CliContext, address: str, enabled: bool) -> None:
    """End-to-end mode: ADDRESS holds its own key (PKCS#12) and receives mail encrypted, as it arrived."""
    with cli.session() as session:
        entry = _mailboxes(cli, session, "directory end-to-end").set_end_to_end(address, enabled)
        cli.record(session, "mailbox.end_to_end", "on" if enabled else "off", recipients=(entry.address,))
    click.echo(f"End-to-end mode {'on' if enabled else 'off'} for {entry.address}")


COMMANDS = (set_password, delegate, undelegate, delegates, end_to_end)
