"""The message store on a real SQLite file: sealing and opening, what tampering looks like, dedup, purge per kind,
the store key. (Both databases, rollbacks, races and ``verify`` after a purge: tests/integration/test_message_store.)
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import x25519
from sqlalchemy.engine import Engine

from mssecure.archive import (
    ArchiveError,
    MessageStore,
    ensure_store_key,
    load_store_public_key,
    retention_limits,
    store_key_id,
)
from mssecure.archive.store import _seal
from mssecure.archive.store_models import ArchiveBody
from mssecure.crypto.keys import KeyStore, new_master_secret
from mssecure.db import make_engine, upgrade_schema

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
KEY = x25519.X25519PrivateKey.generate()
PRESCRIPTION = (
    b"From: camille.lefevre@chu-nord.mssante.test\r\nTo: pharmacie.centrale@officine.mssante.test\r\n"
    b"Message-ID: <rx-1@chu-nord.mssante.test>\r\nSubject: ordonnance\r\n\r\nAmoxicilline 1 g, 3 fois par jour.\r\n"
)
DELIVERED = PRESCRIPTION.replace(b"Subject: ordonnance", b"Subject: ordonnance (delivered)")


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def store(engine: Engine, clock: Clock) -> MessageStore:
    return MessageStore(engine, private_key=KEY, clock=clock)


def body_row(engine: Engine, sha256: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(sa.select(ArchiveBody).where(ArchiveBody.sha256 == sha256)).one_or_none()


def count(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())  # noqa: S608


def set_column(engine: Engine, sha256: str, column: str, value: object) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(f"UPDATE archive_bodies SET {column} = :v WHERE sha256 = :s"),  # noqa: S608
            {"v": value, "s": sha256},
        )


def flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


# -- sealing and opening


def test_a_stored_message_comes_back_and_is_sealed_at_rest(store: MessageStore, engine: Engine) -> None:
    sha256 = store.put(PRESCRIPTION, kind="received", queue_id="Q1", message_id="<rx-1@chu-nord.mssante.test>")
    assert sha256 == hashlib.sha256(PRESCRIPTION).hexdigest()
    assert store.get(sha256) == PRESCRIPTION
    assert store.get(sha256.upper()) == PRESCRIPTION  # addresses are hex, either case
    row = body_row(engine, sha256)
    assert (row.size, row.version, row.key_id) == (len(PRESCRIPTION), 1, store_key_id(KEY.public_key()))
    assert len(row.ephemeral_key) == 32
    assert len(row.wrapped_key) == 40  # RFC 3394: the 32-byte key plus its 8-byte integrity block
    assert len(row.nonce) == 12
    assert len(row.ciphertext) == len(PRESCRIPTION) + 16  # AES-GCM tag
    assert b"Amoxicilline" not in row.ciphertext
    # Two seals of the same bytes share nothing: a fresh data key, nonce and ephemeral key each time.
    again = _seal(PRESCRIPTION, sha256, KEY.public_key())
    assert again.ciphertext != row.ciphertext
    assert again.ephemeral_key != row.ephemeral_key
    assert again.nonce != row.nonce


def test_a_writer_needs_only_the_public_key_and_cannot_read(engine: Engine) -> None:
    writer = MessageStore(engine, public_key=KEY.public_key())
    sha256 = writer.put(PRESCRIPTION, kind="received", queue_id="Q1", message_id=None)
    with pytest.raises(ArchiveError, match="no archive store private key"):
        writer.get(sha256)
    assert MessageStore(engine, private_key=KEY).get(sha256) == PRESCRIPTION
    with pytest.raises(ArchiveError, match="no archive store public key"):
        MessageStore(engine).put(PRESCRIPTION, kind="received", queue_id="Q1", message_id=None)


def test_an_empty_message_is_stored_too(store: MessageStore) -> None:
    sha256 = store.put(b"", kind="delivered", queue_id="Q1", message_id=None, recipient="a@b.test")
    assert store.get(sha256) == b""


@pytest.mark.parametrize(
    ("column", "damage"),
    [
        ("ciphertext", lambda v: flip(v, 10)),
        ("ciphertext", lambda v: flip(v, len(v) - 1)),  # the GCM tag
        ("ciphertext", lambda v: v[:-1]),
        ("nonce", flip),
        ("wrapped_key", flip),
        ("wrapped_key", lambda v: v[:24]),
        ("ephemeral_key", flip),
        ("ephemeral_key", lambda v: b"\x00" * 32),  # a low-order point: X25519 gives an all-zero secret
        ("ephemeral_key", lambda v: v[:31]),
        ("size", lambda v: v + 1),
    ],
)
def test_tampering_fails_the_integrity_check(store: MessageStore, engine: Engine, column: str, damage: Any) -> None:
    sha256 = store.put(PRESCRIPTION, kind="received", queue_id="Q1", message_id=None)
    set_column(engine, sha256, column, damage(getattr(body_row(engine, sha256), column)))
    with pytest.raises(ArchiveError) as caught:
        store.get(sha256)
    assert str(caught.value) == f"the stored copy of {sha256} fails its integrity check"


def test_bytes_sealed_under_another_hash_are_refused(store: MessageStore, engine: Engine) -> None:
    """Anyone with the public key can seal: what proves a body is the hash, checked after opening."""
    sha256 = store.put(PRESCRIPTION, kind="received", queue_id="Q1", message_id=None)
    forged = _seal(b"Morphine 100 mg", sha256, KEY.public_key())  # a consistent seal, under the real address
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE archive_bodies SET ciphertext = :c, nonce = :n, wrapped_key = :w, ephemeral_key = :e, "
                    "size = 15 WHERE sha256 = :s"),
            {"c": forged.ciphertext, "n": forged.nonce, "w": forged.wrapped_key, "e": forged.ephemeral_key,
             "s": sha256},
        )  # fmt: skip
    with pytest.raises(ArchiveError, match="fails its integrity check"):
        store.get(sha256)


def test_a_hash_given_by_the_caller_is_used_and_a_wrong_one_is_caught(store: MessageStore) -> None:
    data = b"Subject: x\r\n\r\nprescription\r\n"
    right = hashlib.sha256(data).hexdigest()
    assert store.put(data, kind="received", queue_id="Q1", message_id=None, sha256=right) == right
    assert store.get(right) == data
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    store.put(data, kind="received", queue_id="Q2", message_id=None, sha256=wrong)  # a caller's bug
    with pytest.raises(ArchiveError, match=f"the stored copy of {wrong} fails its integrity check"):
        store.get(wrong)


def test_swapping_two_bodies_fails_the_integrity_check(store: MessageStore, engine: Engine) -> None:
    one = store.put(PRESCRIPTION, kind="received", queue_id="Q1", message_id=None)
    two = store.put(DELIVERED, kind="delivered", queue_id="Q1", message_id=None, recipient="a@b.test")
    first, second = body_row(engine, one), body_row(engine, two)
    for column in ("ciphertext", "nonce", "wrapped_key", "ephemeral_key", "size"):
        set_column(engine, one, column, getattr(second, column))
        set_column(engine, two, column, getattr(first, column))
    for sha256 in (one, two):
        with pytest.raises(ArchiveError, match=f"the stored copy of {sha256} fails its integrity check"):
            store.get(sha256)


def test_another_private_key_cannot_open(store: MessageStore, engine: Engine) -> None:
    sha256 = store.put(PRESCRIPTION, kind="received", queue_id="Q1", message_id=None)
    other = x25519.X25519PrivateKey.generate()
    with pytest.raises(ArchiveError, match="was sealed for another archive store key"):
        MessageStore(engine, private_key=other).get(sha256)
    # Even when the row is made to name that key, the key cannot unwrap the data key.
    set_column(engine, sha256, "key_id", store_key_id(other.public_key()))
    with pytest.raises(ArchiveError, match="fails its integrity check"):
        MessageStore(engine, private_key=other).get(sha256)


def test_unknown_and_malformed_addresses(store: MessageStore) -> None:
    with pytest.raises(ArchiveError, match=f"no stored copy of {'ab' * 32}"):
        store.get("ab" * 32)
    with pytest.raises(ArchiveError, match="not a SHA-256"):
        store.get("../../etc/passwd")
    assert store.body("ab" * 32) is None


def test_an_unknown_kind_is_a_bug_of_the_caller(store: MessageStore) -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        store.put(PRESCRIPTION, kind="sent", queue_id="Q1", message_id=None)  # type: ignore[arg-type]


# -- dedup and copies


def test_the_same_bytes_cost_one_body_and_one_copy_row_each(store: MessageStore, engine: Engine, clock: Clock) -> None:
    first = store.put(PRESCRIPTION, kind="received", queue_id="Q1", message_id="<rx-1@chu-nord.mssante.test>")
    sealed = body_row(engine, first).ciphertext
    clock.now = NOW + timedelta(minutes=1)
    for recipient in ("a@officine.mssante.test", "b@officine.mssante.test"):
        again = store.put(PRESCRIPTION, kind="delivered", queue_id="Q1", message_id="<rx-1@chu-nord.mssante.test>",
                          recipient=recipient)  # fmt: skip
        assert again == first
    other = store.put(DELIVERED, kind="delivered", queue_id="Q2", message_id="<rx-1@chu-nord.mssante.test>",
                      recipient="c@officine.mssante.test")  # fmt: skip
    assert (count(engine, "archive_bodies"), count(engine, "archive_copies")) == (2, 4)
    row = body_row(engine, first)
    assert row.ciphertext == sealed  # not sealed again
    assert (row.last_received_at, row.last_delivered_at) == (NOW, NOW + timedelta(minutes=1))

    copies = store.copies("rx-1@chu-nord.mssante.test")
    assert [(c.kind, c.recipient, c.sha256) for c in copies] == [
        ("received", None, first),
        ("delivered", "a@officine.mssante.test", first),
        ("delivered", "b@officine.mssante.test", first),
        ("delivered", "c@officine.mssante.test", other),
    ]
    assert [c.queue_id for c in store.copies("Q2")] == ["Q2"]
    assert [c.id for c in store.copies(["Q2", "<nothing@x>"])] == [copies[-1].id]
    assert copies[0].size == len(PRESCRIPTION)
    assert copies[0].purged_at is None
    assert copies[0].to_json()["stored_at"] == NOW.isoformat()


# -- purge


def stored(store: MessageStore, clock: Clock, data: bytes, *copies: tuple[str, int]) -> str:
    """Store ``data`` once per (kind, days ago)."""
    sha256 = ""
    for kind, days in copies:
        clock.now = NOW - timedelta(days=days)
        sha256 = store.put(data, kind=kind, queue_id=f"Q{days}", message_id=None,  # type: ignore[arg-type]
                           recipient="r@x.test" if kind == "delivered" else None)  # fmt: skip
    clock.now = NOW
    return sha256


def test_purge_deletes_only_bodies_all_of_whose_copies_are_past_their_kind(
    store: MessageStore, engine: Engine, clock: Clock
) -> None:
    old_received = stored(store, clock, b"1", ("received", 400))
    old_both = stored(store, clock, b"2", ("received", 400), ("delivered", 200))
    recent_delivery = stored(store, clock, b"3", ("received", 400), ("delivered", 10))
    recent = stored(store, clock, b"4", ("received", 10))
    old_delivered = stored(store, clock, b"5", ("delivered", 400))
    limits = retention_limits(365, 100, NOW)
    assert limits == {"received": NOW - timedelta(days=365), "delivered": NOW - timedelta(days=100)}

    preview = store.purge(limits, dry_run=True)
    assert preview.dry_run
    assert set(preview.sha256s) == {old_received, old_both, old_delivered}
    assert (preview.bodies, preview.bytes) == (3, 3)
    assert store.get(old_received) == b"1"  # a dry run purges nothing

    clock.now = NOW + timedelta(seconds=5)
    report = store.purge(limits)
    assert set(report.sha256s) == {old_received, old_both, old_delivered}
    assert not report.dry_run
    assert report.to_json()["bodies"] == 3
    for sha256 in report.sha256s:
        with pytest.raises(ArchiveError) as caught:
            store.get(sha256)
        assert str(caught.value) == f"the stored copy of {sha256} was purged on 2026-11-23 12:00:05 UTC"
        row = body_row(engine, sha256)
        assert (row.ciphertext, row.nonce, row.wrapped_key, row.ephemeral_key) == (None, None, None, None)
        assert row.size == 1  # the hash, the size and the times stay
        assert store.body(sha256).purged_at == NOW + timedelta(seconds=5)  # type: ignore[union-attr]
    assert store.get(recent_delivery) == b"3"
    assert store.get(recent) == b"4"
    assert store.purge(limits).bodies == 0  # nothing left to purge: a purged body is not counted again


def test_a_kind_kept_forever_keeps_every_body_with_such_a_copy(store: MessageStore, clock: Clock) -> None:
    only_received = stored(store, clock, b"1", ("received", 4000))
    with_delivery = stored(store, clock, b"2", ("received", 4000), ("delivered", 4000))
    limits = retention_limits(365, 0, NOW)
    assert limits["delivered"] is None
    assert store.purge(limits).sha256s == (only_received,)
    assert store.get(with_delivery) == b"2"
    assert retention_limits(0, 0, NOW) == {"received": None, "delivered": None}
    assert store.purge({"received": None}).bodies == 0  # an absent kind is kept forever too


def test_one_date_for_every_kind(store: MessageStore, clock: Clock) -> None:
    old = stored(store, clock, b"1", ("received", 30), ("delivered", 20))
    recent = stored(store, clock, b"2", ("received", 30), ("delivered", 5))
    report = store.purge(NOW - timedelta(days=10))
    assert report.sha256s == (old,)
    assert report.before == {"received": NOW - timedelta(days=10), "delivered": NOW - timedelta(days=10)}
    assert store.get(recent) == b"2"
    with pytest.raises(ValueError, match="naive"):
        store.purge(datetime(2026, 1, 1))


def test_bytes_stored_again_after_their_purge_are_sealed_again(store: MessageStore, clock: Clock) -> None:
    sha256 = stored(store, clock, PRESCRIPTION, ("received", 400))
    assert store.purge(NOW - timedelta(days=1)).sha256s == (sha256,)
    assert store.put(PRESCRIPTION, kind="received", queue_id="Q9", message_id=None) == sha256
    assert store.get(sha256) == PRESCRIPTION
    assert store.body(sha256).purged_at is None  # type: ignore[union-attr]
    assert store.purge(NOW - timedelta(days=1)).bodies == 0  # the new copy is recent


def test_times_from_a_clock_in_another_zone_are_compared_in_utc(engine: Engine) -> None:
    paris = timezone(timedelta(hours=1))
    store = MessageStore(engine, private_key=KEY, clock=lambda: datetime(2026, 11, 23, 12, 30, tzinfo=paris))
    sha256 = store.put(b"1", kind="received", queue_id="Q1", message_id=None)
    store.put(b"1", kind="received", queue_id="Q2", message_id=None)  # the CASE that keeps the newest time
    assert body_row(engine, sha256).last_received_at == datetime(2026, 11, 23, 11, 30, tzinfo=UTC)
    assert store.purge(datetime(2026, 11, 23, 11, 30, tzinfo=UTC)).bodies == 0  # stored at 11:30 UTC: not before
    assert store.purge(datetime(2026, 11, 23, 12, 31, tzinfo=paris)).bodies == 1


# -- the store key


def test_the_store_key_is_created_once_with_its_public_key(tmp_path: Path) -> None:
    keystore = KeyStore(tmp_path, environ={"MSSECURE_MASTER_KEY": new_master_secret().decode()})
    key = ensure_store_key(keystore)
    public = tmp_path / "archive-store.pub"
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert stat.S_IMODE(keystore.key_path("archive-store").stat().st_mode) == 0o600
    assert store_key_id(load_store_public_key(public)) == store_key_id(key.public_key())
    assert b"PRIVATE" not in keystore.key_path("archive-store").read_bytes().replace(b"ENCRYPTED PRIVATE", b"")
    public.unlink()  # lost: written again from the private key, which is never replaced
    again = ensure_store_key(KeyStore(tmp_path, environ=keystore.environ))
    assert store_key_id(again.public_key()) == store_key_id(key.public_key())
    assert public.exists()


def test_a_store_public_key_file_must_be_x25519(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="missing archive store public key"):
        load_store_public_key(tmp_path / "archive-store.pub")
    (tmp_path / "garbage.pub").write_text("not a key")
    with pytest.raises(ArchiveError, match="is not a PEM public key"):
        load_store_public_key(tmp_path / "garbage.pub")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "archive.pub").write_bytes(pem)
    with pytest.raises(ArchiveError, match="is not an X25519 public key"):
        load_store_public_key(tmp_path / "archive.pub")


def test_a_hostile_message_id_is_stored_as_the_event_log_would_name_it(store: MessageStore) -> None:
    hostile = "<a\x00b\ud800@x>" + "y" * 2000
    store.put(b"1", kind="received", queue_id="Q1", message_id=hostile, recipient="r\x00@x")
    (copy,) = store.copies("Q1")
    assert copy.message_id is not None
    assert copy.message_id.startswith("<a\ufffdb?@x>")
    assert len(copy.message_id) == 998
    assert copy.recipient == "r\ufffd@x"
