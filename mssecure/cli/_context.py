"""What every command shares: the configuration it found, the database, the operator account it acts as."""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from mssecure.config import Config, find_config_file, load_config
from mssecure.crypto.authority import CertificateService, OperatorMaterial
from mssecure.db import check_schema, make_engine, make_sessionmaker
from mssecure.directory import Directory, Status

if TYPE_CHECKING:
    from mssecure.smtp.events import Journal

__all__ = ["CliContext"]


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@dataclass
class CliContext:
    """Lazily loaded: ``init`` needs no configuration, read commands need no write access."""

    config_path: str | None = None
    actor: str | None = None
    debug: bool = False
    _engines: list[Engine] = field(default_factory=list)

    @cached_property
    def config(self) -> Config:
        return load_config(find_config_file(self.config_path))

    @cached_property
    def engine(self) -> Engine:
        engine = make_engine(self.config.database_url)
        self._engines.append(engine)
        check_schema(engine)
        return engine

    @property
    def operator_account(self) -> str:
        return self.actor or _default_actor()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed when the block succeeds, rolled back otherwise."""
        with make_sessionmaker(self.engine)() as session, session.begin():
            yield session

    @cached_property
    def material(self) -> OperatorMaterial:
        return OperatorMaterial(self.config)

    def certificates(self, session: Session) -> CertificateService:
        return CertificateService(session, self.material)

    def status_listener(self, session: Session) -> Callable[[str, Status], None] | None:
        """Directory status changes move the entry's certificates (hold, release, revoke) when we have a PKI."""
        if not self.material.ca_cert_path.exists():
            return None
        return self.certificates(session).entry_status_changed

    def directory(self, session: Session, source: str) -> Directory:
        return Directory(
            session,
            local_domains=self.config.operator.domains,
            actor=self.operator_account,
            source=source,
            on_status_change=self.status_listener(session),
        )

    @cached_property
    def journal(self) -> Journal:
        """Operator actions go to the archive (and the log), as the relay's decisions do."""
        from mssecure.archive.log import Archive
        from mssecure.smtp.events import Journal

        archive = Archive(self.engine, origin=self.config.operator.domain)
        return Journal(archive=archive, transactional=lambda connection, events: archive.append_many(
            events, connection=connection))  # fmt: skip

    def record(self, session: Session | None, type: str, outcome: str = "ok", **fields: Any) -> None:
        """Archive an operator action done by this command, in ``session``'s transaction when one is given (the
        change and its record commit together), else on its own."""
        from mssecure.smtp.events import Event

        event = Event(type, outcome, actor=self.operator_account, **fields)
        if session is None:
            self.journal(event)
        else:
            self.journal.within(session.connection(), [event])
            self.journal.logged([event])

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()
