"""The ``mssecure`` command: operator set-up, database, directory (and, in later issues, PKI, queue, archive).

Commands stay thin: they parse arguments, call the packages, and print. Every deliberate error
(``mssecure.errors.MssecureError``) becomes one line on stderr and exit status 1; anything unexpected is reported
as an internal error in one line (``--debug`` shows the traceback). Usage errors exit 2, as click does.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import click
import sqlalchemy as sa

from mssecure import __version__
from mssecure.cli._context import CliContext
from mssecure.errors import MssecureError

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE


class _Group(click.Group):
    """The root group: turns errors into one line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MssecureError as exc:
            click.echo(f"mssecure: error: {exc}", err=True)
            ctx.exit(EXIT_ERROR)
        except sa.exc.SQLAlchemyError as exc:
            _debug_traceback(ctx)
            orig = getattr(exc, "orig", None) or exc
            first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
            click.echo(f"mssecure: error: database: {first}", err=True)
            ctx.exit(EXIT_ERROR)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(141)
        except KeyboardInterrupt:
            click.echo("mssecure: interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # a bug: say so in one line, keep the traceback for --debug
            _debug_traceback(ctx)
            click.echo(
                f"mssecure: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                err=True,
            )
            ctx.exit(EXIT_INTERNAL)
        finally:
            if isinstance(ctx.obj, CliContext):
                ctx.obj.close()


def _debug_traceback(ctx: click.Context) -> None:
    if isinstance(ctx.obj, CliContext) and ctx.obj.debug:
        traceback.print_exc(file=sys.stderr)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Configuration file (default: $MSSECURE_CONFIG, then ./mssecure.toml).",
)
@click.option(
    "--actor",
    envvar="MSSECURE_ACTOR",
    help="Operator account recorded in the history of changes (default: $MSSECURE_ACTOR, then your login).",
)
@click.option("--debug", is_flag=True, help="Show the traceback of internal errors.")
@click.version_option(__version__, prog_name="mssecure")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, actor: str | None, debug: bool) -> None:
    """mssecure: a secure health messaging operator."""
    ctx.obj = CliContext(config_path=config_path, actor=actor, debug=debug)


def _register() -> None:
    from mssecure.cli import (
        admin,
        archive,
        archive_proofs,
        certs,
        client,
        demo,
        directory,
        dovecot,
        mailbox,
        queue,
        send,
        serve,
        smime,
        trust,
        verify,
    )

    main.add_command(admin.init)
    main.add_command(admin.db)
    main.add_command(admin.config)
    main.add_command(directory.directory)
    for command in mailbox.COMMANDS:
        directory.directory.add_command(command)
    main.add_command(queue.queue)
    main.add_command(serve.serve)
    main.add_command(certs.certs)
    main.add_command(smime.smime_group)
    main.add_command(trust.trust)
    main.add_command(demo.demo)
    main.add_command(archive.archive)
    for command in archive_proofs.COMMANDS:  # export, verify-export, evidence, verify-evidence
        archive.archive.add_command(command)
    for command in (*dovecot.COMMANDS, *client.COMMANDS, *send.COMMANDS, *verify.COMMANDS):
        main.add_command(command)


_register()
