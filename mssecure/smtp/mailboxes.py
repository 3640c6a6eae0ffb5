"""Mailboxes of local entries: passwords (argon2id), delegations of organizational mailboxes, end-to-end mode.

Each change is written to the entry's history (``directory history``): who, when, what — never the password or
its hash.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mssecure.config import Config
from mssecure.db import utcnow
from mssecure.directory.models import Entry, EntryChange
from mssecure.errors import DirectoryError, EntryNotFound
from mssecure.smtp.auth import hash_password
from mssecure.smtp.models import Delegation, Mailbox

__all__ = ["Mailboxes"]


class Mailboxes:
    def __init__(
        self, session: Session, config: Config, *, actor: str, source: str, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.session = session
        self.config = config
        self.actor = actor
        self.source = source
        self.clock = clock

    def _local(self, address: str) -> Entry:
        wanted = address.strip().lower()
        entry = self.session.scalars(sa.select(Entry).where(Entry.address == wanted)).one_or_none()
        if entry is None:
            raise EntryNotFound(f"no directory entry for {address}")
        if entry.domain not in self.config.operator.domains:
            raise DirectoryError(f"{entry.address} is a peer operator's address: its mailbox is not here")
        return entry

    def _mailbox(self, entry: Entry) -> Mailbox:
        mailbox = self.session.get(Mailbox, entry.address)
        if mailbox is None:
            mailbox = Mailbox(address=entry.address, password_hash=None, end_to_end=False, updated_at=self.clock())
            self.session.add(mailbox)
        return mailbox

    def _record(self, entry: Entry, action: str, changes: dict[str, list[object]] | None = None) -> None:
        self.session.add(EntryChange(entry_id=entry.id, at=self.clock(), actor=self.actor, action=action,
                                     source=self.source, reason=None, changes=changes))  # fmt: skip

    def set_password(self, address: str, password: str) -> Entry:
        entry = self._local(address)
        if entry.status == "revoked":
            raise DirectoryError(f"{entry.address} is revoked: it cannot log in any more")
        try:
            hashed = hash_password(password)
        except ValueError as exc:
            raise DirectoryError(str(exc)) from None
        mailbox = self._mailbox(entry)
        mailbox.password_hash = hashed
        mailbox.updated_at = self.clock()
        self._record(entry, "password set")
        return entry

    def has_password(self, address: str) -> bool:
        mailbox = self.session.get(Mailbox, address.strip().lower())
        return mailbox is not None and mailbox.password_hash is not None

    def set_end_to_end(self, address: str, enabled: bool) -> Entry:
        entry = self._local(address)
        mailbox = self._mailbox(entry)
        if mailbox.end_to_end != enabled:
            self._record(entry, "updated", {"end_to_end": [mailbox.end_to_end, enabled]})
        mailbox.end_to_end = enabled
        mailbox.updated_at = self.clock()
        return entry

    def delegate(self, organization: str, person: str) -> None:
        org = self._local(organization)
        delegate = self._local(person)
        if org.kind != "organizational":
            raise DirectoryError(f"{org.address} is a {org.kind} mailbox: only organizational ones have delegates")
        if delegate.kind != "personal":
            raise DirectoryError(f"{delegate.address} is a {delegate.kind} mailbox: a delegate is a person")
        exists = self.session.scalar(
            sa.select(Delegation.id).where(
                Delegation.organization == org.address, Delegation.delegate == delegate.address
            )
        )
        if exists is not None:
            raise DirectoryError(f"{delegate.address} is already a delegate of {org.address}")
        self.session.add(Delegation(organization=org.address, delegate=delegate.address, created_at=self.clock(),
                                    created_by=self.actor))  # fmt: skip
        self._record(org, "delegate added", {"delegate": [None, delegate.address]})

    def undelegate(self, organization: str, person: str) -> None:
        org = self._local(organization)
        found = self.session.scalars(
            sa.select(Delegation).where(Delegation.organization == org.address, Delegation.delegate == person.lower())
        ).one_or_none()
        if found is None:
            raise DirectoryError(f"{person} is not a delegate of {org.address}")
        self.session.delete(found)
        self._record(org, "delegate removed", {"delegate": [found.delegate, None]})

    def delegates(self, organization: str) -> list[Delegation]:
        org = self._local(organization)
        return list(
            self.session.scalars(
                sa.select(Delegation).where(Delegation.organization == org.address).order_by(Delegation.delegate)
            )
        )
