"""Fixtures shared by the whole suite: databases (SQLite and a real PostgreSQL), operators made with ``init``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from mssecure.cli import main
from mssecure.db import make_engine, upgrade_schema
from tests.support.postgres import PostgresCluster, find_server_binaries, postgres_cluster

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    bindir = find_server_binaries()
    if bindir is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) not found; Debian: apt-get install postgresql"
        if IN_CI:
            pytest.fail(message + " (CI must install them: see .ci/run)")
        pytest.skip(message)
    with postgres_cluster(bindir) as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("pg_cluster")
    with cluster.database() as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A database at the newest schema."""
    engine = make_engine(database_url)
    upgrade_schema(engine)
    yield engine
    engine.dispose()


class Operator:
    """An operator created by ``mssecure init`` in a temporary directory, and a runner for its commands."""

    def __init__(self, directory: Path, database_url: str | None = None) -> None:
        self.directory = directory
        self.config = directory / "mssecure.toml"
        self.runner = CliRunner()
        args = ["init", str(directory), "--domain", "chu-nord.mssante.test"]
        if database_url:
            args += ["--database-url", database_url]
        result = self.runner.invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output

    def run(self, *args: str, input: str | None = None) -> Result:
        env = {"MSSECURE_CONFIG": str(self.config), "MSSECURE_ACTOR": "test-operator"}
        return self.runner.invoke(main, list(args), env=env, input=input, catch_exceptions=False)


@pytest.fixture
def operator(tmp_path: Path) -> Operator:
    """An operator on the embedded defaults (SQLite)."""
    return Operator(tmp_path / "operator")


@pytest.fixture
def operator_on(tmp_path: Path, database_url: str) -> Operator:
    """An operator on each database (SQLite, then PostgreSQL)."""
    return Operator(tmp_path / "operator", None if database_url.startswith("sqlite") else database_url)
