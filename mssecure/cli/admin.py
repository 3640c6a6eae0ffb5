"""Operator set-up: ``init``, ``db upgrade|current``, ``config check|example``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import make_url

from mssecure.archive.store import ensure_store_key
from mssecure.cli._context import CliContext
from mssecure.config import (
    CONFIG_FILENAME,
    Config,
    DatabaseConfig,
    load_config,
    render_config,
    validate_domain,
)
from mssecure.crypto.authority import OperatorMaterial
from mssecure.crypto.keys import create_private_file
from mssecure.crypto.pki import fingerprint
from mssecure.db import check_schema, display_url, has_schema, make_engine, upgrade_schema, utcnow
from mssecure.errors import ConfigError, DatabaseError

__all__ = ["config", "db", "init"]

pass_cli = click.make_pass_decorator(CliContext)


def _domain(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return validate_domain(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _domains(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(d for d in (_domain(ctx, param, v) for v in values) if d)


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--domain", required=True, callback=_domain, help="Main mail domain of this operator.")
@click.option("--hostname", callback=_domain, help="Host name of the relay (default: mail.<domain>).")
@click.option("--extra-domain", "extra_domains", multiple=True, callback=_domains, help="Another domain served.")
@click.option(
    "--database-url",
    help="SQLAlchemy URL of the database (default: SQLite file mssecure.db in DIRECTORY). "
    "A PostgreSQL password is better given as $MSSECURE_DATABASE_URL later.",
)
@click.option(
    "--ca-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use this existing CA certificate (PEM, e.g. from a national PKI) instead of creating one.",
)
@click.option(
    "--ca-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The private key (unencrypted PEM) of --ca-cert; it is stored encrypted under the master secret.",
)
@click.option(
    "--ports-base",
    type=click.IntRange(1024, 65535 - 587),
    help="Listen on 127.0.0.1 at unprivileged ports N+25 (inbound), N+587 (submission) and N+465 (implicit TLS), "
    "and publish 127.0.0.1:N+25 as the relay endpoint: for tests and demos on one machine.",
)
def init(
    directory: Path,
    domain: str,
    hostname: str | None,
    extra_domains: tuple[str, ...],
    database_url: str | None,
    ca_cert: Path | None,
    ca_key: Path | None,
    ports_base: int | None,
) -> None:
    """Create an operator in DIRECTORY: a commented mssecure.toml, an initialised database, and the operator's
    PKI (CA, TLS certificate, DKIM, archive and message store keys, encrypted under a master secret).

    Refuses to touch an existing configuration or database.
    """
    if bool(ca_cert) != bool(ca_key):
        raise click.UsageError("--ca-cert and --ca-key go together")
    imported_ca = (ca_cert.read_bytes(), ca_key.read_bytes()) if ca_cert and ca_key else None
    config_file = directory / CONFIG_FILENAME
    refusal = f"{config_file} already exists: refusing to overwrite an operator's configuration"
    if os.path.lexists(config_file):
        raise ConfigError(refusal)
    values: dict[str, dict[str, Any]] = {
        "operator": {
            "domain": domain,
            "hostname": hostname or f"mail.{domain}",
            "extra_domains": extra_domains,
        },
        "database": {"url": database_url or DatabaseConfig.url},
        "paths": {"data_dir": "data"},
    }
    if ports_base is not None:
        values["smtp"] = {
            "listen": "127.0.0.1",
            "inbound_port": ports_base + 25,
            "submission_port": ports_base + 587,
            "submissions_port": ports_base + 465,
            "relay_endpoint": f"127.0.0.1:{ports_base + 25}",
        }
    text = render_config(values)
    created_dir = not directory.exists()
    created: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Validate the file as it will be written before creating anything else. It may hold a database password:
        # created 0600 from the start, and never through something already there (a symbolic link, say).
        try:
            create_private_file(config_file, text.encode("utf-8"))
        except FileExistsError:
            raise ConfigError(refusal) from None
        created.append(config_file)
        cfg = load_config(config_file, environ={})
        _create_database(cfg, created)
        data_dir = cfg.data_dir
        if not data_dir.exists():
            data_dir.mkdir(mode=0o700)
            created.append(data_dir)
        elif any(data_dir.iterdir()):
            raise ConfigError(f"{data_dir} is not empty: refusing to mix two operators' keys")
        material = OperatorMaterial(cfg)
        dkim_record = material.create(now=utcnow(), imported_ca=imported_ca)
        ensure_store_key(material.keystore)  # the message store's X25519 key, beside the archive key
    except BaseException:
        if created_dir:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            for path in reversed(created):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    click.echo(f"Initialised operator {domain} in {directory}")
    click.echo(f"  configuration  {config_file}")
    click.echo(f"  database       {display_url(cfg.database_url)}")
    click.echo(f"  data           {cfg.data_dir} (keys encrypted under the master secret)")
    material = OperatorMaterial(cfg)
    click.echo(f"  CA             {material.ca_cert_path} ({fingerprint(material.ca_certificate())})")
    click.echo(f"  TLS            {material.tls_cert_path} for {cfg.operator.hostname}")
    click.echo(f"  CRL            {material.crl_path} (publish it at {cfg.crl_url})")
    click.echo("Publish the DKIM public key in DNS:")
    click.echo(f"  {dkim_record}")
    click.echo(f"Next: export MSSECURE_CONFIG={config_file.resolve()}")


def _create_database(cfg: Config, created: list[Path]) -> None:
    url = cfg.database_url
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None:
        # An empty file is an empty SQLite database; created 0600 first, SQLite gives its -wal and -shm files the
        # same mode.
        try:
            create_private_file(sqlite_file, b"")
        except FileExistsError:
            refusal = f"{sqlite_file} already exists: refusing to reuse another operator's database"
            raise DatabaseError(refusal) from None
        except FileNotFoundError:
            raise DatabaseError(f"cannot create {sqlite_file}: its directory does not exist") from None
        created.extend(sqlite_file.with_name(sqlite_file.name + s) for s in ("", "-wal", "-shm"))
    engine = make_engine(url)
    try:
        if sqlite_file is None and has_schema(engine):
            raise DatabaseError(f"database {display_url(url)} already holds an mssecure schema: refusing to reuse it")
        upgrade_schema(engine)
    finally:
        engine.dispose()


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_cli
def db_upgrade(cli: CliContext) -> None:
    """Bring the database schema to this version (a no-op when it already is)."""
    engine = make_engine(cli.config.database_url)
    try:
        before, after = upgrade_schema(engine)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"Database schema already at revision {after}.")
    else:
        click.echo(f"Database schema upgraded from {before or 'empty'} to revision {after}.")


@db.command("current")
@pass_cli
def db_current(cli: CliContext) -> None:
    """Check that the database is reachable and its schema is this version's."""
    check_schema(cli.engine)
    click.echo(f"Database {display_url(cli.engine.url)} is up to date.")


@click.group()
def config() -> None:
    """Configuration file."""


@config.command("check")
@pass_cli
def config_check(cli: CliContext) -> None:
    """Load the configuration, say which file it came from, and check the database."""
    cfg = cli.config
    click.echo(f"configuration  {cfg.source}")
    click.echo(f"domains        {', '.join(sorted(cfg.operator.domains))}")
    click.echo(f"hostname       {cfg.operator.hostname}")
    click.echo(f"database       {display_url(cfg.database_url)}")
    check_schema(cli.engine)
    click.echo("schema         up to date")


@config.command("example")
def config_example() -> None:
    """Print a commented configuration with every key (config/mssecure.example.toml)."""
    click.echo(render_config(), nl=False)
