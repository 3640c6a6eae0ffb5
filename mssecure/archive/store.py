"""The message store: every accepted message, as received and as delivered, sealed in the database.

Why in the database: several relay nodes share one PostgreSQL, and a copy kept in files on one node would be
missing on the others (and from the backups the database already has).

What is stored. A message is addressed by the SHA-256 of its bytes — the hash the archived events name, so an
event, a checkpoint and an evidence document all point at the same body. The same bytes stored twice (the copy
for each of three recipients of one message, a retry) cost one body row; each storage adds a copy row saying which
message (queue id, Message-ID, recipient) those bytes were, and whether as received or as delivered.

The key scheme (version 1). The operator's archive key is Ed25519, which signs and cannot encrypt; the store has
its own X25519 key pair (RFC 7748), ``keys/archive-store.key`` sealed under the master secret like every key, its
public half in ``data/archive-store.pub``. To seal one message:

1. a random 256-bit data key and a random 96-bit nonce; ciphertext = AES-256-GCM(data key, nonce, plaintext,
   associated data = ``b"mssecure archive store v1 " + sha256_hex``), the 16-byte tag appended;
2. an ephemeral X25519 key pair; shared = X25519(ephemeral, store public); KEK = HKDF-SHA256(shared, no salt,
   info = ``b"mssecure archive store v1" || ephemeral public || store public``, 32 bytes); wrapped key = AES key
   wrap (RFC 3394) of the data key under the KEK — ephemeral-static ECDH, a KDF and a key wrap, as CMS does for
   X25519 recipients (RFC 8418).

Writers therefore need only the public key: a relay archives without being able to read what it archived. Reading
needs the private key, that is the master secret. Each row names the store key it was sealed for (``key_id``, the
SHA-256 of the raw public key), so a body sealed for another key is reported as such rather than as damage.

What the seal does not prove. Anyone holding the public key can seal bytes under any hash; what makes a body
authentic is its hash, which ``get`` recomputes after decrypting and compares with the address — the address that
the hash-chained, signed events name. A body that fails either check is refused as failing its integrity check.

Retention and purge. ``purge`` deletes the sealed bytes of every body all of whose copies are older than the limit
for their kind (received, delivered; ``None``: kept forever): ciphertext, nonce, wrapped and ephemeral keys are set
to NULL in the same UPDATE that decides, and the row keeps its hash, size and times, so ``get`` answers "purged
on …". The events, their hashes, the checkpoints and the Merkle proofs never depended on the bodies: they stay
verifiable. On SQLite the purge overwrites the freed pages (``secure_delete``) and checkpoints the WAL; on
PostgreSQL the old row versions are reclaimed by (auto)VACUUM, and only ``VACUUM FULL archive_bodies`` rewrites the
table file — see docs/archive.md.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from mssecure.archive.records import ArchiveError
from mssecure.archive.store_models import ArchiveBody, ArchiveCopy
from mssecure.crypto.keys import KeyStore, write_private_file
from mssecure.crypto.pki import new_archive_store_key
from mssecure.db import utcnow
from mssecure.errors import KeyStoreError
from mssecure.smtp.events import Event

__all__ = [
    "KINDS",
    "STORE_KEY_NAME",
    "STORE_PUBLIC_FILE",
    "Kind",
    "MessageStore",
    "PurgeReport",
    "StoredBody",
    "StoredCopy",
    "ensure_store_key",
    "load_store_public_key",
    "retention_limits",
    "store_key_id",
]

Kind = Literal["received", "delivered"]
KINDS: tuple[Kind, ...] = ("received", "delivered")
STORE_KEY_NAME = "archive-store"  # keys/archive-store.key in the operator's KeyStore
STORE_PUBLIC_FILE = "archive-store.pub"  # next to archive.pub in the data directory

VERSION = 1
_INFO = b"mssecure archive store v1"
_AAD_PREFIX = b"mssecure archive store v1 "
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_SHORT = 998
_PUT_ATTEMPTS = 3  # a concurrent writer can win the insert of the same body at most once, a purge once more

_bodies = cast(sa.Table, ArchiveBody.__table__)
_copies = cast(sa.Table, ArchiveCopy.__table__)
_LAST = {"received": _bodies.c.last_received_at, "delivered": _bodies.c.last_delivered_at}
# Built once: the relay stores copies for every message (a body inserted unless the same bytes are stored already).
_INSERT_BODY: dict[str, Any] = {
    "postgresql": postgresql.insert(_bodies).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(_bodies).on_conflict_do_nothing(),
}
_INSERT_COPY = sa.insert(_copies)


def _clean(value: str | None) -> str | None:
    """A value from a message (a Message-ID, an address) that PostgreSQL accepts in text — no NUL, no lone
    surrogate — and of sane length (RFC 5322 §2.1.1: 998 characters a line): a hostile Message-ID must not make the
    relay's transaction fail. The same rule as the event log's, so a copy and its events name the message alike."""
    if value is None:
        return None
    value = value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return value if len(value) <= _MAX_SHORT else value[: _MAX_SHORT - 1] + "…"


# -- the store key


def _raw(public_key: x25519.X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def store_key_id(public_key: x25519.X25519PublicKey) -> str:
    """The hex SHA-256 of the raw public key: names the store key a body was sealed for."""
    return hashlib.sha256(_raw(public_key)).hexdigest()


def load_store_public_key(path: Path) -> x25519.X25519PublicKey:
    """The store's public key from a PEM file (``data/archive-store.pub``): all a writer needs."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise ArchiveError(f"missing archive store public key {path} (run `mssecure archive store-key`)") from None
    except ValueError:
        raise ArchiveError(f"{path} is not a PEM public key") from None
    if not isinstance(key, x25519.X25519PublicKey):
        raise ArchiveError(f"{path} is not an X25519 public key")
    return key


def _write_public(path: Path, key: x25519.X25519PublicKey) -> None:
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    write_private_file(path, pem, mode=0o644)


def ensure_store_key(keystore: KeyStore) -> x25519.X25519PrivateKey:
    """The store's private key, created (with ``archive-store.pub`` beside ``archive.pub``) for an operator that
    has none: ``mssecure init`` calls it; operators initialised before the store get their key from
    ``mssecure archive store-key`` (or from the relay, if it calls this when it starts).

    Two processes creating it at once: the key file is created exclusively, the loser loads the winner's key.
    """
    path = keystore.key_path(STORE_KEY_NAME)
    if not path.exists():
        try:
            keystore.save(STORE_KEY_NAME, new_archive_store_key())
        except KeyStoreError:
            if not path.exists():
                raise
    key = keystore.load(STORE_KEY_NAME)
    if not isinstance(key, x25519.X25519PrivateKey):
        raise ArchiveError(f"{path} is not an X25519 key: it cannot be the archive store key")
    public_path = keystore.data_dir / STORE_PUBLIC_FILE
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        current = public_path.read_bytes()
    except FileNotFoundError:
        current = None
    if current != public_pem:
        _write_public(public_path, key.public_key())
    return key


# -- sealing


@dataclass(frozen=True)
class _Sealed:
    key_id: str
    ephemeral_key: bytes
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes


def _aad(sha256: str) -> bytes:
    return _AAD_PREFIX + sha256.encode("ascii")


def _kek(shared: bytes, ephemeral: bytes, store: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + ephemeral + store).derive(shared)


def _seal(data: bytes, sha256: str, public_key: x25519.X25519PublicKey) -> _Sealed:
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    ciphertext = AESGCM(data_key).encrypt(nonce, data, _aad(sha256))
    ephemeral = x25519.X25519PrivateKey.generate()
    ephemeral_raw, store_raw = _raw(ephemeral.public_key()), _raw(public_key)
    kek = _kek(ephemeral.exchange(public_key), ephemeral_raw, store_raw)
    return _Sealed(store_key_id(public_key), ephemeral_raw, aes_key_wrap(kek, data_key), nonce, ciphertext)


def _open(row: Any, private_key: x25519.X25519PrivateKey) -> bytes:
    """The plaintext of a sealed body row, or ArchiveError; the hash is checked by the caller."""
    sha256 = row.sha256
    damaged = ArchiveError(f"the stored copy of {sha256} fails its integrity check")
    public = private_key.public_key()
    if row.version != VERSION:
        raise ArchiveError(f"the stored copy of {sha256} uses sealing version {row.version}, unknown to this mssecure")
    if row.key_id != store_key_id(public):
        raise ArchiveError(
            f"the stored copy of {sha256} was sealed for another archive store key ({row.key_id[:16]}…), "
            f"not this operator's ({store_key_id(public)[:16]}…)"
        )
    try:
        ephemeral = x25519.X25519PublicKey.from_public_bytes(bytes(row.ephemeral_key))
        shared = private_key.exchange(ephemeral)  # ValueError on a low-order point (all-zero shared secret)
        kek = _kek(shared, bytes(row.ephemeral_key), _raw(public))
        data_key = aes_key_unwrap(kek, bytes(row.wrapped_key))
        if len(data_key) != 32 or len(row.nonce) != 12:
            raise damaged
        return AESGCM(data_key).decrypt(bytes(row.nonce), bytes(row.ciphertext), _aad(sha256))
    except (InvalidTag, InvalidUnwrap, ValueError, TypeError):
        raise damaged from None


# -- values


@dataclass(frozen=True)
class StoredCopy:
    """One storage of a message, with the state of its body (``purged_at``: when its bytes were deleted)."""

    id: int
    sha256: str
    kind: str
    queue_id: str
    message_id: str | None
    recipient: str | None
    stored_at: datetime
    size: int
    purged_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "kind": self.kind,
            "queue_id": self.queue_id,
            "message_id": self.message_id,
            "recipient": self.recipient,
            "stored_at": self.stored_at.isoformat(),
            "size": self.size,
            "purged_at": None if self.purged_at is None else self.purged_at.isoformat(),
        }


@dataclass(frozen=True)
class StoredBody:
    """What the store knows of a body without opening it."""

    sha256: str
    size: int
    stored_at: datetime
    key_id: str
    purged_at: datetime | None


@dataclass(frozen=True)
class PurgeReport:
    """Bodies purged (or, ``dry_run``, that would be): their hashes and their plaintext bytes."""

    before: Mapping[str, datetime | None]
    sha256s: tuple[str, ...]
    bytes: int
    dry_run: bool

    @property
    def bodies(self) -> int:
        return len(self.sha256s)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "before": {kind: None if limit is None else limit.isoformat() for kind, limit in self.before.items()},
            "bodies": self.bodies,
            "bytes": self.bytes,
            "sha256": list(self.sha256s),
        }


def retention_limits(received_days: int, delivered_days: int, now: datetime) -> dict[str, datetime | None]:
    """Purge limits from retention periods in days (0: keep forever), as ``[archive] retention_*`` gives them."""
    days = {"received": received_days, "delivered": delivered_days}
    return {kind: (now - timedelta(days=days[kind])) if days[kind] > 0 else None for kind in KINDS}


# -- the store


class MessageStore:
    """The message store of one operator, on its database.

    ``public_key`` seals (``put``); ``private_key`` opens (``get``) — a writer needs only the public key.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        public_key: x25519.X25519PublicKey | None = None,
        private_key: x25519.X25519PrivateKey | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if public_key is None and private_key is not None:
            public_key = private_key.public_key()
        self.engine = engine
        self.public_key = public_key
        self.private_key = private_key
        self.clock = clock

    @contextmanager
    def _connection(self, connection: sa.Connection | None) -> Iterator[sa.Connection]:
        if connection is not None:
            yield connection  # the caller's transaction: committed or rolled back by the caller
            return
        with self.engine.begin() as own:
            yield own

    # -- writing

    def keep(self, connection: sa.Connection, event: Event) -> str | None:
        """Store the bytes an event carries (``event.body``) as a copy of its kind, in ``connection``'s transaction:
        the relay's journal does this for its acceptance and delivery events (``smtp.events.Journal``)."""
        if event.body is None or event.copy is None:
            return None
        return self.put(event.body, kind="delivered" if event.copy == "delivered" else "received",
                        queue_id=event.queue_id or "", message_id=event.message_id,
                        recipient=event.recipients[0] if len(event.recipients) == 1 else None,
                        connection=connection, sha256=event.sha256)  # fmt: skip

    def put(
        self,
        data: bytes,
        *,
        kind: Kind,
        queue_id: str,
        message_id: str | None,
        recipient: str | None = None,
        connection: sa.Connection | None = None,
        sha256: str | None = None,
    ) -> str:
        """Store ``data`` as a message ``kind`` (received, delivered); returns its SHA-256 (hex).

        ``connection``: an open connection whose transaction the storage joins (the relay stores a message in
        the transaction that queues it); otherwise the store commits on its own. Bytes already stored keep their
        first sealing: only a copy row is added. Bytes stored again after their purge are sealed again.
        ``sha256``: the caller's hash of ``data`` when it has one (the relay's events carry it), saving a pass over
        a large message; a wrong one cannot go unseen: ``get`` checks the decrypted bytes against their address.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown kind of stored message: {kind!r}")
        if self.public_key is None:
            raise ArchiveError("no archive store public key to seal messages with")
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        at = self.clock()
        # Most bodies are new: sealing first (AES-GCM, one X25519 agreement) and inserting is one statement, where
        # looking for a stored body first cost two that find nothing, each dearer than the sealing.
        sealed = _seal(data, sha256, self.public_key)
        with self._connection(connection) as conn:
            for _attempt in range(_PUT_ATTEMPTS):
                if (
                    self._insert(conn, sha256, len(data), sealed, kind, at)
                    or self._mark(conn, sha256, kind, at)
                    or self._reseal(conn, sha256, len(data), sealed, kind, at)
                ):
                    break
            else:  # pragma: no cover - needs three lost races in a row
                raise ArchiveError(f"could not store message {sha256}: the store kept changing under us")
            conn.execute(
                _INSERT_COPY,
                {"sha256": sha256, "kind": kind, "queue_id": _clean(queue_id) or "", "message_id": _clean(message_id),
                 "recipient": _clean(recipient), "stored_at": at},
            )  # fmt: skip
        return sha256

    @staticmethod
    def _newest(kind: str, at: datetime) -> sa.ColumnElement[Any]:
        column = _LAST[kind]
        when = sa.literal(at, type_=column.type)  # converted to UTC as the column is, whatever zone ``at`` has
        return sa.case((column.is_(None), when), (column < when, when), else_=column)

    def _mark(self, conn: sa.Connection, sha256: str, kind: str, at: datetime) -> bool:
        """Record a new copy on a live body (locking its row until our commit, so a purge cannot miss it)."""
        result = conn.execute(
            sa.update(_bodies)
            .where(_bodies.c.sha256 == sha256, _bodies.c.purged_at.is_(None))
            .values({_LAST[kind]: self._newest(kind, at)})
        )
        return result.rowcount == 1

    def _reseal(self, conn: sa.Connection, sha256: str, size: int, sealed: _Sealed, kind: str, at: datetime) -> bool:
        """Give a purged body its bytes again (a message identical to a purged one arrived)."""
        result = conn.execute(
            sa.update(_bodies)
            .where(_bodies.c.sha256 == sha256, _bodies.c.purged_at.is_not(None))
            .values(
                {**self._sealed_values(size, sealed, at), "purged_at": None, _LAST[kind].key: self._newest(kind, at)}
            )
        )
        return result.rowcount == 1

    def _insert(self, conn: sa.Connection, sha256: str, size: int, sealed: _Sealed, kind: str, at: datetime) -> bool:
        """Insert a new body; False if another writer inserted the same bytes first (nothing is aborted: the
        caller's transaction goes on, which a unique-key error would break on PostgreSQL)."""
        values = {"sha256": sha256, **self._sealed_values(size, sealed, at), _LAST[kind].key: at}
        statement = _INSERT_BODY.get(conn.dialect.name)
        if statement is None:  # pragma: no cover - mssecure runs on SQLite and PostgreSQL only
            raise ArchiveError(f"the message store does not support {conn.dialect.name} databases")
        return conn.execute(statement, values).rowcount == 1

    @staticmethod
    def _sealed_values(size: int, sealed: _Sealed, at: datetime) -> dict[str, Any]:
        return {
            "size": size,
            "stored_at": at,
            "version": VERSION,
            "key_id": sealed.key_id,
            "ephemeral_key": sealed.ephemeral_key,
            "wrapped_key": sealed.wrapped_key,
            "nonce": sealed.nonce,
            "ciphertext": sealed.ciphertext,
        }

    # -- reading

    def body(self, sha256: str) -> StoredBody | None:
        """What is known of a body without opening it (None: never stored)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    _bodies.c.sha256, _bodies.c.size, _bodies.c.stored_at, _bodies.c.key_id, _bodies.c.purged_at
                ).where(_bodies.c.sha256 == sha256.lower())
            ).one_or_none()
        return None if row is None else StoredBody(row.sha256, row.size, row.stored_at, row.key_id, row.purged_at)

    def get(self, sha256: str) -> bytes:
        """The message whose SHA-256 is ``sha256``, decrypted; ArchiveError if it was never stored, was purged,
        was sealed for another key, or fails its integrity check (decryption, or the hash of what it gives)."""
        if self.private_key is None:
            raise ArchiveError("no archive store private key to open stored messages with")
        sha256 = sha256.strip().lower()
        if not _SHA256_HEX.fullmatch(sha256):
            raise ArchiveError(f"not a SHA-256 (64 hexadecimal digits): {sha256[:80]!r}")
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_bodies).where(_bodies.c.sha256 == sha256)).one_or_none()
        if row is None:
            raise ArchiveError(f"no stored copy of {sha256}")
        if row.purged_at is not None:
            raise ArchiveError(f"the stored copy of {sha256} was purged on {row.purged_at:%Y-%m-%d %H:%M:%S} UTC")
        data = _open(row, self.private_key)
        if len(data) != row.size or hashlib.sha256(data).hexdigest() != sha256:
            raise ArchiveError(f"the stored copy of {sha256} fails its integrity check")
        return data

    def copies(self, reference: str | Iterable[str]) -> list[StoredCopy]:
        """Copies of the messages with this Message-ID (angle brackets optional) or queue id, oldest first; an
        iterable of references gives the copies of any of them."""
        wanted: set[str] = set()
        for item in [reference] if isinstance(reference, str) else reference:
            bare = item.strip().strip("<>")
            wanted |= {item, bare, f"<{bare}>"}
        query = (
            sa.select(_copies, _bodies.c.size, _bodies.c.purged_at)
            .join(_bodies, _bodies.c.sha256 == _copies.c.sha256)
            .where(sa.or_(_copies.c.message_id.in_(wanted), _copies.c.queue_id.in_(wanted)))
            .order_by(_copies.c.stored_at, _copies.c.id)
        )
        with self.engine.connect() as conn:
            return [
                StoredCopy(
                    row.id,
                    row.sha256,
                    row.kind,
                    row.queue_id,
                    row.message_id,
                    row.recipient,
                    row.stored_at,
                    row.size,
                    row.purged_at,
                )
                for row in conn.execute(query)
            ]

    # -- retention

    def purge(self, before: datetime | Mapping[str, datetime | None], *, dry_run: bool = False) -> PurgeReport:
        """Delete the bytes of every body all of whose copies were stored before the limit of their kind.

        ``before``: one limit for every kind, or a limit per kind (``None`` or absent: that kind is kept forever,
        and so is any body with a copy of it). ``dry_run``: report only.
        """
        limits: dict[str, datetime | None] = (
            dict.fromkeys(KINDS, before) if isinstance(before, datetime) else {k: before.get(k) for k in KINDS}
        )
        for limit in limits.values():
            if limit is not None and limit.tzinfo is None:
                raise ValueError("naive datetime given to the message store")
        due: list[sa.ColumnElement[bool]] = [_bodies.c.purged_at.is_(None)]
        for kind, limit in limits.items():
            column = _LAST[kind]
            due.append(column.is_(None) if limit is None else sa.or_(column.is_(None), column < limit))
        if dry_run:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(_bodies.c.sha256, _bodies.c.size).where(*due)).all()
            return PurgeReport(limits, tuple(sorted(r.sha256 for r in rows)), sum(r.size for r in rows), True)
        purge = (
            sa.update(_bodies)
            .where(*due)
            .values(ciphertext=None, nonce=None, wrapped_key=None, ephemeral_key=None, purged_at=self.clock())
            .returning(_bodies.c.sha256, _bodies.c.size)
        )
        sqlite_file = self.engine.dialect.name == "sqlite"
        with self.engine.begin() as conn:
            previous = conn.exec_driver_sql("PRAGMA secure_delete").scalar() if sqlite_file else None
            if sqlite_file:
                conn.exec_driver_sql("PRAGMA secure_delete = ON")  # freed pages are overwritten with zeros
            try:
                rows = conn.execute(purge).all()
            finally:
                if sqlite_file:
                    conn.exec_driver_sql(f"PRAGMA secure_delete = {int(previous or 0)}")
        if sqlite_file and rows:
            with self.engine.connect() as conn:
                # The WAL may still hold pages with the bytes: copy it back and empty it. Best effort: a reader
                # still in the WAL makes this a partial checkpoint, completed by SQLite's next automatic one.
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return PurgeReport(limits, tuple(sorted(r.sha256 for r in rows)), sum(r.size for r in rows), False)
