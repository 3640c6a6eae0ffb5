"""The PostgreSQL the suite starts is real: a server answering SQL on loopback."""

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def test_each_database_runs_our_schema(engine: Engine) -> None:
    with engine.connect() as connection:
        tables = set(sa.inspect(connection).get_table_names())
    assert {"directory_entries", "directory_changes", "alembic_version"} <= tables
