"""Directory operations: add, look up, list, search, change status, read history.

Every change is written with its history row (who, when, what, why) in the caller's transaction; the caller commits.
The lifecycle is: active ⇄ suspended, active or suspended → revoked, and revoked is final.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mssecure.db import utcnow
from mssecure.directory.identifiers import check_address
from mssecure.directory.models import Entry, EntryChange
from mssecure.directory.records import DATA_FIELDS, EntryData, Kind, Status, fold
from mssecure.errors import EntryExists, EntryNotFound, InvalidEntry, InvalidTransition

__all__ = ["Directory", "check_transition", "jsonable_diff", "row_values"]

# (from, to) → the action recorded in the history.
_TRANSITIONS = {
    (Status.ACTIVE, Status.SUSPENDED): "suspended",
    (Status.SUSPENDED, Status.ACTIVE): "reactivated",
    (Status.ACTIVE, Status.REVOKED): "revoked",
    (Status.SUSPENDED, Status.REVOKED): "revoked",
}


def check_transition(address: str, current: Status, new: Status) -> str:
    """The history action for moving ``address`` from ``current`` to ``new``, or InvalidTransition."""
    if current is Status.REVOKED:
        raise InvalidTransition(f"{address} is revoked; revocation is final")
    if current is new:
        raise InvalidTransition(f"{address} is already {current}")
    return _TRANSITIONS[(current, new)]


def row_values(data: EntryData, now: datetime, search_text: str | None = None) -> dict[str, Any]:
    """The column values of a validated entry (without ``id`` and ``created_at``)."""
    values = data.to_dict()
    values["kind"], values["status"] = str(data.kind), str(data.status)
    values.update(domain=data.domain, search_text=search_text or data.search_text(), updated_at=now)
    return values


class Directory:
    """The directory as seen by one operator account (``actor``), in one session."""

    def __init__(
        self,
        session: Session,
        *,
        local_domains: frozenset[str],
        actor: str,
        source: str = "cli",
        clock: Callable[[], datetime] = utcnow,
        on_status_change: Callable[[str, Status], None] | None = None,
    ) -> None:
        self.session = session
        self.on_status_change = on_status_change  # e.g. the certificates following the entry (held, revoked)
        self.local_domains = local_domains
        self.actor = actor
        self.source = source
        self.clock = clock

    # -- reading

    def is_local(self, entry: Entry | EntryData) -> bool:
        """Whether the entry is one of ours (its domain is one this operator serves) rather than a peer's."""
        return entry.domain in self.local_domains

    def find(self, address: str) -> Entry | None:
        try:
            key = check_address(address)
        except InvalidEntry:
            return None
        return self.session.scalars(sa.select(Entry).where(Entry.address == key)).one_or_none()

    def get(self, address: str) -> Entry:
        entry = self.find(address)
        if entry is None:
            raise EntryNotFound(f"no directory entry for {address}")
        return entry

    def _filtered(
        self,
        *,
        kind: Kind | None = None,
        status: Status | None = None,
        domain: str | None = None,
        local: bool | None = None,
    ) -> sa.Select[Any]:
        query = sa.select(Entry)
        if kind is not None:
            query = query.where(Entry.kind == str(kind))
        if status is not None:
            query = query.where(Entry.status == str(status))
        if domain is not None:
            query = query.where(Entry.domain == domain.lower())
        if local is True:
            query = query.where(Entry.domain.in_(sorted(self.local_domains)))
        elif local is False:
            query = query.where(Entry.domain.not_in(sorted(self.local_domains)))
        return query

    def entries(self, *, limit: int | None = None, **filters: Any) -> Iterator[Entry]:
        """Entries matching the filters, by address; streamed, so a whole national directory fits."""
        query = self._filtered(**filters).order_by(Entry.address).limit(limit)
        yield from self.session.scalars(query.execution_options(yield_per=1000))

    def count(self, **filters: Any) -> int:
        query = sa.select(sa.func.count()).select_from(self._filtered(**filters).subquery())
        return int(self.session.execute(query).scalar_one())

    def search(self, text: str, *, limit: int | None = 50) -> list[Entry]:
        """Entries whose name, address, identifiers or organization contain every word of ``text``.

        Case and accents are ignored: "lefevre" finds "Lefèvre".
        """
        words = fold(text).split()
        if not words:
            raise InvalidEntry("search needs at least one word")
        query = sa.select(Entry)
        for word in words:
            escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(Entry.search_text.like(f"%{escaped}%", escape="\\"))
        return list(self.session.scalars(query.order_by(Entry.last_name, Entry.address).limit(limit)))

    def history(self, address: str) -> list[EntryChange]:
        return list(self.get(address).changes)

    # -- changing

    def add(self, data: EntryData, *, reason: str | None = None) -> Entry:
        """Create an entry from ``data`` (validated here); refuses an address already in the directory."""
        data = data.validated()
        if self.find(data.address) is not None:
            raise EntryExists(f"{data.address} is already in the directory")
        now = self.clock()
        entry = Entry(**row_values(data, now), created_at=now)
        self.session.add(entry)
        self._record(entry, "created", None, reason, now)
        return entry

    def update(self, address: str, fields: Mapping[str, Any], *, reason: str | None = None) -> Entry:
        """Change identity fields of an entry (not its address or status); records what changed."""
        entry = self.get(address)
        forbidden = {"address", "status"} & set(fields)
        unknown = set(fields) - set(DATA_FIELDS)
        if forbidden or unknown:
            raise InvalidEntry(f"cannot update {', '.join(sorted(forbidden | unknown))}")
        current = entry.to_data()
        new = EntryData(**{**current.to_dict(), **fields}).validated()
        diff = {
            f: [getattr(current, f), getattr(new, f)] for f in DATA_FIELDS if getattr(current, f) != getattr(new, f)
        }
        if diff:
            now = self.clock()
            for name, value in row_values(new, now).items():
                setattr(entry, name, value)
            self._record(entry, "updated", jsonable_diff(diff), reason, now)
        return entry

    def suspend(self, address: str, *, reason: str) -> Entry:
        return self._set_status(address, Status.SUSPENDED, reason)

    def reactivate(self, address: str, *, reason: str | None = None) -> Entry:
        return self._set_status(address, Status.ACTIVE, reason)

    def revoke(self, address: str, *, reason: str) -> Entry:
        return self._set_status(address, Status.REVOKED, reason)

    def _set_status(self, address: str, status: Status, reason: str | None) -> Entry:
        entry = self.get(address)
        action = check_transition(entry.address, Status(entry.status), status)
        now = self.clock()
        changes = {"status": [entry.status, str(status)]}
        entry.status, entry.updated_at = str(status), now
        self._record(entry, action, changes, reason, now)
        if self.on_status_change is not None:
            self.on_status_change(entry.address, status)
        return entry

    def _record(
        self, entry: Entry, action: str, changes: dict[str, Any] | None, reason: str | None, now: datetime
    ) -> None:
        entry.changes.append(
            EntryChange(at=now, actor=self.actor, action=action, source=self.source, reason=reason, changes=changes)
        )


def jsonable_diff(diff: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """A field → [before, after] diff with enum values written as their text, for the history's JSON column."""
    return {k: [str(v) if isinstance(v, Kind | Status) else v for v in pair] for k, pair in diff.items()}
