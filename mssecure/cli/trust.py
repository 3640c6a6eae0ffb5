"""``mssecure trust``: the peer operators of the trust space, exchanged as signed trust bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mssecure.cli._context import CliContext
from mssecure.cli._output import echo_json, echo_table
from mssecure.crypto.keys import write_private_file
from mssecure.crypto.models import TrustedOperator
from mssecure.crypto.pki import fingerprint
from mssecure.crypto.trust import DEFAULT_MAX_BUNDLE, TrustSpace, export_bundle, read_bundle
from mssecure.db import utcnow
from mssecure.errors import TrustError

__all__ = ["trust"]

pass_cli = click.make_pass_decorator(CliContext)
_MIB = 1024 * 1024


def operator_json(operator: TrustedOperator) -> dict[str, Any]:
    return {
        "domain": operator.domain,
        "domains": operator.domains,
        "hostname": operator.hostname,
        "relay": operator.relay,
        "ca_fingerprint": operator.ca_fingerprint,
        "dkim_selector": operator.dkim_selector,
        "entries": operator.entries,
        "bundle_created_at": operator.bundle_created_at,
        "imported_at": operator.imported_at,
    }


def _space(cli: CliContext, session: Any) -> TrustSpace:
    return TrustSpace(session, cli.config, actor=cli.operator_account)


@click.group()
def trust() -> None:
    """Peer operators of the trust space (their domains, CA, DKIM key, directory)."""


@trust.command("export")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@pass_cli
def export(cli: CliContext, out: Path) -> None:
    """Write this operator's signed trust bundle; give the peers the file and, separately, the fingerprint."""
    if out.exists():
        raise TrustError(f"{out} already exists: refusing to overwrite it")
    with cli.session() as session:
        data = export_bundle(session, cli.config, cli.material, now=utcnow())
        cli.record(session, "trust.exported", reason=f"{out.name}, {len(data)} bytes")
    write_private_file(out, data, mode=0o644)
    click.echo(f"Wrote the trust bundle of {cli.config.operator.domain} to {out}.")
    click.echo("Peers import it with (confirm the fingerprint with them by another channel):")
    click.echo(f"  mssecure trust import {out.name} --fingerprint {fingerprint(cli.material.ca_certificate())}")


@trust.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--fingerprint", "confirmed", required=True, help="The peer CA's SHA-256 fingerprint, confirmed with it.")
@click.option("--replace-ca", is_flag=True, help="Accept a new CA for a peer already trusted (confirm it first).")
@click.option(
    "--max-size",
    type=click.IntRange(1, 4096),
    default=DEFAULT_MAX_BUNDLE // _MIB,
    show_default=True,
    metavar="MIB",
    help="Refuse a larger bundle. A national directory with its certificates may need 2048 (and as much memory).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def import_(cli: CliContext, file: Path, confirmed: str, replace_ca: bool, max_size: int, as_json: bool) -> None:
    """Verify a peer's trust bundle and (re)place its domains, CA, DKIM key and directory."""
    limit = max_size * _MIB
    with file.open("rb") as stream:
        data = stream.read(limit + 1)  # never more: read_bundle refuses it, naming the limit
    bundle = read_bundle(data, confirmed_fingerprint=confirmed, now=utcnow(), max_size=limit)
    with cli.session() as session:
        outcome = _space(cli, session).import_bundle(bundle, replace_ca=replace_ca)
        cli.record(session, "trust.imported", reason=f"{bundle.domain} "
                   f"({', '.join(bundle.domains)}), relay {bundle.relay}, CA {confirmed}, {outcome.directory.created} "
                   f"created, {outcome.directory.updated} updated, {len(outcome.revoked)} revoked")  # fmt: skip
        result = {"operator": operator_json(outcome.operator), "directory": outcome.directory.to_json(),
                  "revoked": outcome.revoked}  # fmt: skip
    if as_json:
        echo_json(result)
        return
    report = outcome.directory
    click.echo(f"Trusted {bundle.domain} ({', '.join(bundle.domains)}), relay {bundle.relay}.")
    click.echo(f"  directory: {report.created} created, {report.updated} updated, {report.unchanged} unchanged, "
               f"{len(outcome.revoked)} revoked (gone from the bundle)")  # fmt: skip


@trust.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def list_(cli: CliContext, as_json: bool) -> None:
    """The trusted operators."""
    with cli.session() as session:
        operators = [operator_json(o) for o in _space(cli, session).operators()]
    if as_json:
        echo_json(operators)
    elif operators:
        echo_table(("domain", "domains", "relay", "entries", "imported (utc)"),
                   ((o["domain"], ", ".join(o["domains"]), o["relay"], o["entries"],
                     o["imported_at"].strftime("%Y-%m-%d %H:%M")) for o in operators))  # fmt: skip
    else:
        click.echo("No peer operator is trusted yet (mssecure trust import).", err=True)


@trust.command("show")
@click.argument("domain")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def show(cli: CliContext, domain: str, as_json: bool) -> None:
    """The trusted operator serving DOMAIN."""
    with cli.session() as session:
        values = operator_json(_space(cli, session).get(domain))
    if as_json:
        echo_json(values)
    else:
        for key, value in values.items():
            click.echo(f"{key.replace('_', ' '):<18}{', '.join(value) if isinstance(value, list) else value}")


@trust.command("remove")
@click.argument("domain")
@pass_cli
def remove(cli: CliContext, domain: str) -> None:
    """Take the operator serving DOMAIN out of the trust space; its directory entries are revoked here."""
    with cli.session() as session:
        operator, revoked = _space(cli, session).remove(domain)
        name = operator.domain
        cli.record(session, "trust.removed", reason=f"{name}; {len(revoked)} entries revoked")
    click.echo(f"Removed {name} from the trust space; {len(revoked)} of its entries revoked.")
