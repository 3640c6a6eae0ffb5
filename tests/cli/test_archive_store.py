"""``mssecure archive purge``, ``archive show --body`` and ``archive store-key`` on an operator made by ``init``."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mssecure.archive import Archive, ArchivedEvent, MessageStore, load_store_public_key, store_key_id
from mssecure.cli.archive import _is_text
from mssecure.config import load_config
from mssecure.db import make_engine, utcnow
from mssecure.smtp.events import Event
from tests.cli.test_cli import assert_one_line_error
from tests.conftest import Operator

DOCTOR = "camille.lefevre@chu-nord.mssante.test"
PHARMACY = "pharmacie.centrale@officine.mssante.test"
MESSAGE_ID = "<rx-1@chu-nord.mssante.test>"
RECEIVED = (
    f"From: {DOCTOR}\r\nTo: {PHARMACY}\r\nMessage-ID: {MESSAGE_ID}\r\nSubject: ordonnance\r\n\r\n"
    "Amoxicilline 1 g, 3 fois par jour pendant 7 jours.\r\n"
).encode()
DELIVERED = RECEIVED.replace(b"\r\n\r\n", b"\r\nX-Mssecure-Verified: yes\r\n\r\n", 1)
LONG_AGO = timedelta(days=400)


@pytest.fixture
def engine(operator: Operator) -> Iterator[Engine]:
    engine = make_engine(load_config(operator.config).database_url)
    yield engine
    engine.dispose()


def data_dir(operator: Operator) -> Path:
    return load_config(operator.config).data_dir


def writer(operator: Operator, engine: Engine, age: timedelta) -> MessageStore:
    """The store as the relay has it: the public key only, a clock ``age`` in the past."""
    public = load_store_public_key(data_dir(operator) / "archive-store.pub")
    return MessageStore(engine, public_key=public, clock=lambda: utcnow() - age)


def relay(operator: Operator, engine: Engine, *, age: timedelta = LONG_AGO, delivered: bytes = DELIVERED) -> None:
    """A prescription received and delivered ``age`` ago, as the relay stores and archives it."""
    store = writer(operator, engine, age)
    received = store.put(RECEIVED, kind="received", queue_id="Q1", message_id=MESSAGE_ID)
    sent = store.put(delivered, kind="delivered", queue_id="Q1", message_id=MESSAGE_ID, recipient=PHARMACY)
    when = utcnow() - age
    Archive(engine).append_many([
        Event("submission.accepted", "ok", actor=DOCTOR, queue_id="Q1", message_id=MESSAGE_ID, sha256=received,
              sender=DOCTOR, recipients=(PHARMACY,), time=when),
        Event("delivered", "ok", actor="relay", queue_id="Q1", sha256=sent, recipients=(PHARMACY,), time=when),
    ])  # fmt: skip


def events(engine: Engine, type: str) -> list[ArchivedEvent]:
    return list(Archive(engine).search(type=type))


def bodies_left(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(sa.text("SELECT count(*) FROM archive_bodies WHERE ciphertext IS NOT NULL")).scalar_one()
        )


# -- the store key


def test_init_creates_the_store_key_beside_the_archive_key(operator: Operator) -> None:
    public = data_dir(operator) / "archive-store.pub"
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    private = data_dir(operator) / "keys" / "archive-store.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    result = operator.run("archive", "store-key", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "key_id": store_key_id(load_store_public_key(public)),
        "public_key": str(public),
    }


def test_an_operator_initialised_before_the_store_gets_its_key(operator: Operator) -> None:
    (data_dir(operator) / "archive-store.pub").unlink()
    (data_dir(operator) / "keys" / "archive-store.key").unlink()
    result = operator.run("archive", "store-key")
    assert result.exit_code == 0, result.output
    key_id = store_key_id(load_store_public_key(data_dir(operator) / "archive-store.pub"))
    assert result.stdout.startswith(f"Message store key {key_id}: public key ")
    again = operator.run("archive", "store-key")
    assert again.stdout == result.stdout  # created once


# -- show --body


def test_show_body_writes_the_copy_and_archives_the_reading_first(operator: Operator, engine: Engine,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    relay(operator, engine, delivered=RECEIVED)  # delivered as received: one body
    out = tmp_path / "rx-1.eml"
    result = operator.run("archive", "show", MESSAGE_ID, "--body", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == RECEIVED
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # patient data
    assert "submission.accepted" in result.stdout  # the history is still shown
    assert f"Wrote the stored copy as received and as delivered to {PHARMACY}" in result.stderr
    (read,) = events(engine, "archive.body_read")
    assert (read.outcome, read.actor, read.message_id, read.queue_id) == ("ok", "test-operator", MESSAGE_ID, "Q1")
    assert read.sha256 == sha(RECEIVED)
    assert read.reason is not None
    assert str(out) in read.reason
    assert b"Amoxicilline" not in json.dumps(read.to_json()).encode()  # the event names the message, never its body

    result = operator.run("archive", "show", MESSAGE_ID, "--body", "--out", str(out))
    assert result.exit_code == 1
    assert_one_line_error(result.output, f"{out} already exists: refusing to replace it")
    assert len(events(engine, "archive.body_read")) == 1  # refused before anything was read
    assert out.read_bytes() == RECEIVED


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_show_body_of_a_message_stored_twice_writes_both_copies(operator: Operator, engine: Engine,
                                                                tmp_path: Path) -> None:  # fmt: skip
    relay(operator, engine)
    out = tmp_path / "copies"
    result = operator.run("archive", "show", "1", "--body", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sequence"] == 1
    received = out / f"received-{sha(RECEIVED)[:16]}.eml"
    delivered = out / f"delivered-{sha(DELIVERED)[:16]}.eml"
    assert sorted(out.iterdir()) == sorted([received, delivered])
    assert (received.read_bytes(), delivered.read_bytes()) == (RECEIVED, DELIVERED)
    reads = events(engine, "archive.body_read")
    assert [e.sha256 for e in reads] == [sha(RECEIVED), sha(DELIVERED)]


def test_show_body_to_standard_output(operator: Operator, engine: Engine) -> None:
    relay(operator, engine, delivered=RECEIVED)
    result = operator.run("archive", "show", MESSAGE_ID, "--body")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.endswith(RECEIVED)
    assert "==> stored copy as received" in result.stderr
    assert "written to standard output" in (events(engine, "archive.body_read")[0].reason or "")


def test_show_body_refusals(operator: Operator, engine: Engine) -> None:
    result = operator.run("archive", "show", "1", "--out", "x.eml")
    assert result.exit_code == 2
    assert "--out goes with --body" in result.output
    result = operator.run("archive", "show", "1", "--body", "--json")
    assert result.exit_code == 2
    Archive(engine).append(Event("auth.failed", "refused", actor="x@y"))
    result = operator.run("archive", "show", "1", "--body")
    assert result.exit_code == 1
    assert_one_line_error(result.output, "no stored copy of 1 in the message store")


def test_a_tampered_copy_is_refused_and_the_attempt_archived(operator: Operator, engine: Engine,
                                                             tmp_path: Path) -> None:  # fmt: skip
    relay(operator, engine, delivered=RECEIVED)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE archive_bodies SET nonce = :n"), {"n": b"\x00" * 12})
    result = operator.run("archive", "show", MESSAGE_ID, "--body", "--out", str(tmp_path / "x.eml"))
    assert result.exit_code == 1
    # The history was shown before the reading failed; the error is one line, the last.
    assert "Traceback" not in result.output
    assert_one_line_error(result.stderr, f"the stored copy of {sha(RECEIVED)} fails its integrity check")
    assert not (tmp_path / "x.eml").exists()
    (read,) = events(engine, "archive.body_read")
    assert read.outcome == "failed"


def test_only_text_goes_to_a_terminal() -> None:
    assert _is_text(RECEIVED)
    assert _is_text("Ordonnance : Dr Lefèvre\r\n\tsuite".encode())
    assert not _is_text(b"\x00\x01binary")
    assert not _is_text(b"\xff\xfe")
    assert not _is_text(b"Subject: \x1b]0;pwned\x07")  # a terminal escape sequence


# -- purge


def test_purge_dry_run_then_before_a_date(operator: Operator, engine: Engine) -> None:
    relay(operator, engine)
    relay_recent = writer(operator, engine, timedelta(days=1))
    relay_recent.put(b"recent message\r\n", kind="received", queue_id="Q2", message_id="<recent@x>")
    before = (utcnow() - timedelta(days=30)).strftime("%Y-%m-%d")

    result = operator.run("archive", "purge", "--before", before, "--dry-run")
    assert result.exit_code == 0, result.output
    size = len(RECEIVED) + len(DELIVERED)
    assert result.stdout == f"Would purge 2 message body(ies) ({size:,} bytes) stored before {before} 00:00:00 UTC.\n"
    assert bodies_left(engine) == 3
    assert events(engine, "archive.purge") == []

    result = operator.run("archive", "purge", "--before", before)  # no --yes, nobody to confirm
    assert result.exit_code == 1
    assert "Aborted" in result.output
    assert bodies_left(engine) == 3

    result = operator.run("archive", "purge", "--before", before, input="y\n")
    assert result.exit_code == 0, result.output
    assert f"Purged 2 message body(ies) ({size:,} bytes) stored before {before}" in result.stdout
    assert bodies_left(engine) == 1
    (purge,) = events(engine, "archive.purge")
    assert (purge.outcome, purge.actor) == ("ok", "test-operator")
    assert purge.reason == f"2 bodies ({size:,} bytes) stored before {before} 00:00:00 UTC"

    verified = operator.run("archive", "verify")
    assert verified.exit_code == 0, verified.output  # events, hashes and proofs stay verifiable

    result = operator.run("archive", "show", MESSAGE_ID, "--body")
    assert result.exit_code == 1
    assert_one_line_error(result.output, f"the stored copy of {MESSAGE_ID} as received", "was purged on ")
    assert events(engine, "archive.body_read") == []
    shown = operator.run("archive", "show", MESSAGE_ID)
    assert shown.exit_code == 0  # the history stays
    assert "submission.accepted" in shown.stdout


def test_purge_follows_the_retention_of_each_kind(operator: Operator, engine: Engine) -> None:
    text = operator.config.read_text()
    text = re.sub(r"(?m)^retention_received = \d+$", "retention_received = 30", text)
    text = re.sub(r"(?m)^retention_delivered = \d+$", "retention_delivered = 0", text)
    assert "retention_received = 30" in text
    assert "retention_delivered = 0" in text
    operator.config.write_text(text)
    relay(operator, engine)  # one body received only, one delivered (kept forever)
    result = operator.run("archive", "purge", "--yes", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["sha256"] == [sha(RECEIVED)]
    assert report["before"]["delivered"] is None
    assert report["dry_run"] is False
    assert "delivered kept forever" in (events(engine, "archive.purge")[0].reason or "")
    result = operator.run("archive", "show", MESSAGE_ID, "--body")
    assert result.exit_code == 0, result.output  # the delivered copy is still there
    assert result.stdout_bytes.endswith(DELIVERED)
    assert "was purged on" in result.stderr


def test_purge_refusals(operator: Operator) -> None:
    result = operator.run("archive", "purge", "--before", (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%d"))
    assert result.exit_code == 1
    assert_one_line_error(result.output, "is in the future: refusing to purge every message")
    result = operator.run("archive", "purge", "--before", "yesterday")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_nothing_to_purge_when_everything_is_kept_forever(operator: Operator, engine: Engine) -> None:
    text = operator.config.read_text()
    for key in ("retention_received", "retention_delivered"):
        text = re.sub(rf"(?m)^{key} = \d+$", f"{key} = 0", text)
    assert "retention_received = 0" in text
    assert "retention_delivered = 0" in text
    operator.config.write_text(text)
    relay(operator, engine)
    result = operator.run("archive", "purge", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Nothing to purge")
    assert bodies_left(engine) == 2


def test_evidence_of_a_purged_message_is_still_made_and_valid(operator: Operator, engine: Engine,
                                                              tmp_path: Path) -> None:  # fmt: skip
    relay(operator, engine)
    before_purge = tmp_path / "before.json"
    result = operator.run("archive", "evidence", MESSAGE_ID, "--out", str(before_purge))
    assert result.exit_code == 0, result.output
    result = operator.run("archive", "purge", "--before", utcnow().strftime("%Y-%m-%d"), "--yes")
    assert result.exit_code == 0, result.output
    assert bodies_left(engine) == 0
    after_purge = tmp_path / "after.json"
    result = operator.run("archive", "evidence", MESSAGE_ID, "--out", str(after_purge))
    assert result.exit_code == 0, result.output
    public = str(data_dir(operator) / "archive.pub")
    for evidence in (before_purge, after_purge):
        checked = operator.run("archive", "verify-evidence", str(evidence), "--operator-key", public)
        assert checked.exit_code == 0, checked.output
    stated = json.loads(after_purge.read_text())["statement"]
    assert sha(RECEIVED) in json.dumps(stated)  # the hash of the purged message is still what is proven
