"""``mssecure dovecot config``: write the Dovecot configuration that serves IMAP for the operator's mailboxes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click

from mssecure.cli._context import CliContext
from mssecure.errors import ConfigError
from mssecure.imap.dovecot import DEFAULT_IMAP_PORT, DEFAULT_IMAPS_PORT, MASTER_SEPARATOR, Account, write_dovecot_config

__all__ = ["COMMANDS", "dovecot"]

pass_cli = click.make_pass_decorator(CliContext)

_PORT = click.IntRange(0, 65535)


@click.group()
def dovecot() -> None:
    """IMAP for mail clients, served by Dovecot over mssecure's Maildirs and directory."""


@dovecot.command("config")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write dovecot.conf and its companions into (created 0700; files there are replaced).",
)
@click.option("--imap-port", type=_PORT, default=DEFAULT_IMAP_PORT, show_default=True,
              help="IMAP with STARTTLS (0: no such listener).")  # fmt: skip
@click.option("--imaps-port", type=_PORT, default=DEFAULT_IMAPS_PORT, show_default=True,
              help="IMAP over implicit TLS (0: no such listener).")  # fmt: skip
@click.option(
    "--unprivileged",
    is_flag=True,
    help="Run Dovecot without root: its sockets, state and log inside --out, no chroot, every process as you "
    "(started by root, its login processes keep Dovecot's own accounts). For tests and small setups, with ports "
    "above 1023.",
)
@click.option(
    "--mail-user",
    help="Account that owns the Maildirs (the one `mssecure serve` runs as). Default: the owner of the Maildir "
    "root, else you. Never root: Dovecot does not open mail as root.",
)
@click.option("--no-check", is_flag=True, help="Do not validate the result with `doveconf -n`.")
@pass_cli
def config_command(
    cli: CliContext,
    out_dir: Path,
    imap_port: int,
    imaps_port: int,
    unprivileged: bool,
    mail_user: str | None,
    no_check: bool,
) -> None:
    """Write a complete Dovecot 2.3 configuration into --out: IMAP on 143 (STARTTLS) and 993 (TLS) with the
    operator's TLS certificate, logins checked against the directory (active entries with a password), delegates
    opening organizational mailboxes as MAILBOX*DELEGATE with their own password.

    \b
    WARNING: --out receives the operator's TLS private key DECRYPTED (tls.key, mode 0600), and
    dovecot-sql.conf.ext holds the database password if the URL has one (mode 0600). Keep --out
    readable by root (or the Dovecot account) only, and re-run this command after renewing the
    TLS certificate.
    """
    files = write_dovecot_config(
        cli.config,
        cli.material,
        out_dir,
        imap_port=imap_port,
        imaps_port=imaps_port,
        unprivileged=unprivileged,
        mail_account=Account.named(mail_user) if mail_user else None,
    )
    cli.record(None, "dovecot.config", reason=f"Dovecot configuration written to {files.conf.parent}")
    checked = False
    if not no_check and shutil.which("doveconf"):
        _check(files.conf)
        checked = True
    settings = files.settings
    click.echo(f"Dovecot configuration written to {files.conf.parent}")
    click.echo(f"  {files.conf.name:<28} IMAP on {settings.listen}: " + ", ".join(
        f"{port} ({kind})" for port, kind in ((imap_port, "STARTTLS"), (imaps_port, "TLS")) if port))  # fmt: skip
    click.echo(f"  {files.sql.name:<28} logins and users from the directory ({settings.sql_driver}), 0600")
    click.echo(f"  {files.master_sql.name:<28} delegations: log in as MAILBOX{MASTER_SEPARATOR}DELEGATE, 0600")
    click.echo(f"  {files.cert.name:<28} the operator's TLS certificate for {settings.hostname}")
    click.echo(f"  {files.key.name:<28} its private key, DECRYPTED, 0600: keep this directory private")
    click.echo(f"Mail is opened as {settings.mail_account.name} (uid {settings.mail_account.uid}), "
               f"under {settings.maildir_root}")  # fmt: skip
    if checked:
        click.echo("doveconf accepts it.")
    elif not no_check:
        click.echo("doveconf was not found: not checked (Debian: apt-get install dovecot-imapd dovecot-sqlite "
                   "dovecot-pgsql).")  # fmt: skip
    click.echo(f"Run: dovecot -c {files.conf} -F    (foreground; without -F it detaches)")


def _check(conf: Path) -> None:
    """``doveconf -n``: Dovecot's own parser on the files just written (the first error line if it refuses)."""
    try:
        result = subprocess.run(["doveconf", "-c", str(conf), "-n"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"could not run doveconf to check {conf}: {exc}") from None
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"]
        raise ConfigError(f"doveconf refuses {conf}: {lines[0]}")


COMMANDS: tuple[click.Command, ...] = (dovecot,)
