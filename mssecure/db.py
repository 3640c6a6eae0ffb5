"""Database engine, declarative base and schema migrations (Alembic).

SQLite is the embedded default (WAL journal, foreign keys enforced on every connection); PostgreSQL is chosen by
URL (``postgresql://`` uses the psycopg 3 driver). The schema is only ever changed by the migrations in
``mssecure/migrations``; commands refuse to run on a database whose schema is not the one this version expects.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.types import TypeDecorator

from mssecure.errors import DatabaseError

__all__ = [
    "SCHEMA_REVISION",
    "Base",
    "UTCDateTime",
    "check_schema",
    "display_url",
    "has_schema",
    "make_engine",
    "make_sessionmaker",
    "upgrade_schema",
    "utcnow",
]


class Base(DeclarativeBase):
    """Declarative base of every mssecure table; models live beside the package that owns them."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _normalise_url(url: str | URL) -> URL:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def display_url(url: str | URL) -> str:
    """The URL with any password masked, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: in WAL mode, NORMAL may lose the last commits on a power failure — a queued message after its 250 reply
    # (its spool file, fsynced, would then be removed as an orphan). One fsync of the WAL per commit is the price.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache: large imports stay off the disk
    cursor.close()


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url``; SQLite connections get WAL and enforced foreign keys."""
    parsed = _normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not Path(database).parent.is_dir():
            raise DatabaseError(f"cannot open database {display_url(parsed)}: its directory does not exist")
        engine = sa.create_engine(parsed)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)


# The newest migration in mssecure/migrations (a test checks it); checking it needs no Alembic import, which keeps
# every command's start-up fast.
SCHEMA_REVISION = "0008"


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "mssecure:migrations")
    cfg.attributes["engine"] = engine
    return cfg


def _current(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table("alembic_version"):
                return None
            revision = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one_or_none()
            return str(revision) if revision is not None else None
    except sa.exc.OperationalError as exc:
        raise DatabaseError(f"cannot open database {display_url(engine.url)}: {exc.orig}") from None


def has_schema(engine: Engine) -> bool:
    """Whether the database already holds an mssecure schema (at any revision)."""
    return _current(engine) is not None


def upgrade_schema(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to the newest migration; returns (revision before, revision after)."""
    from alembic import command

    before = _current(engine)
    command.upgrade(_alembic_config(engine), "head")
    return before, SCHEMA_REVISION


def check_schema(engine: Engine) -> None:
    """Refuse to work on a database that is not initialised or whose schema is not this version's."""
    current, head = _current(engine), SCHEMA_REVISION
    if current is None:
        raise DatabaseError(
            f"database {display_url(engine.url)} is not initialised (run `mssecure db upgrade`, "
            "or `mssecure init` for a new operator)"
        )
    if current != head:
        raise DatabaseError(
            f"database {display_url(engine.url)} has schema revision {current}, this mssecure needs {head} "
            "(run `mssecure db upgrade`)"
        )


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the default clock)."""
    return datetime.now(UTC)
