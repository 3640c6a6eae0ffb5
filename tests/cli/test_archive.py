"""``mssecure archive``: verify (exit codes, the first bad sequence), checkpoint, search and show, with --json."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mssecure.archive import Archive
from mssecure.config import load_config
from mssecure.db import make_engine
from mssecure.smtp.events import Event
from tests.cli.test_cli import assert_one_line_error
from tests.conftest import Operator

START = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
DOCTOR = "camille.lefevre@chu-nord.mssante.test"
PHARMACY = "pharmacie.centrale@officine.mssante.test"


@pytest.fixture
def engine(operator: Operator) -> Iterator[Engine]:
    engine = make_engine(load_config(operator.config).database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def archived(operator: Operator, engine: Engine) -> Operator:
    """A prescription submitted, signed, delivered; a refused message; a checkpoint after the first three."""
    archive = Archive(engine)
    message = {"queue_id": "Q1", "message_id": "<rx-1@chu-nord.mssante.test>", "sha256": "ab" * 32}
    archive.append_many([
        Event("submission.accepted", "ok", actor=DOCTOR, peer="192.0.2.7", sender=DOCTOR, recipients=(PHARMACY,),
              reply="250 2.0.0 queued as Q1", time=START, **message),
        Event("signed", "ok", actor="relay", time=START + timedelta(seconds=1), **message),
        Event("delivered", "ok", actor="relay", recipients=(PHARMACY,), queue_id="Q1",
              reply="250 2.0.0 Ok", time=START + timedelta(seconds=2)),
    ])  # fmt: skip
    result = operator.run("archive", "checkpoint")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Checkpoint #1 at sequence 3: root ")
    archive.append(Event("submission.refused", "refused", actor=DOCTOR, sender=DOCTOR,
                         recipients=("someone@gmail.com",), reason="recipient domain outside the trust space",
                         reply="550 5.7.1 recipient is not a certified health address",
                         time=START + timedelta(minutes=5)))  # fmt: skip
    return operator


def test_verify_passes_on_an_intact_archive(archived: Operator) -> None:
    result = archived.run("archive", "verify")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(
        "Archive verified: 4 event(s), 1 checkpoint(s) valid (last checkpoint at sequence 3"
    )
    assert "Verifying" not in result.output  # no progress bar when stderr is not a terminal


def test_verify_json(archived: Operator) -> None:
    result = archived.run("archive", "verify", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert (report["events"], report["checkpoints"], report["checkpoints_matched"]) == (4, 1, 1)
    assert report["first"] is None
    assert report["findings"] == []
    assert report["latest_checkpoint"]["sequence"] == 3
    assert len(report["root"]) == 64


def test_verify_an_empty_archive(operator: Operator) -> None:
    result = operator.run("archive", "verify")
    assert result.exit_code == 0, result.output
    assert "0 event(s), 0 checkpoint(s) valid (no checkpoint yet)" in result.stdout


@pytest.mark.parametrize(
    ("sql", "where"),
    [
        ("UPDATE archive_events SET reason = 'nothing happened' WHERE sequence = 4", "sequence 4: edited"),
        ("DELETE FROM archive_events WHERE sequence = 2", "sequence 2: missing"),
        ("DELETE FROM archive_events WHERE sequence >= 2", "sequence 2: truncated"),
        ("UPDATE archive_checkpoints SET hash = root", "sequence 3: checkpoint: checkpoint #1: signature invalid"),
    ],
)
def test_verify_fails_naming_the_first_bad_sequence(archived: Operator, engine: Engine, sql: str, where: str) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text(sql))
    result = archived.run("archive", "verify")
    assert result.exit_code == 1
    assert_one_line_error(result.output, "archive verification FAILED at", where)
    as_json = archived.run("archive", "verify", "--json")
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert f"sequence {report['first']['sequence']}: {report['first']['kind']}" in where
    assert set(report["first"]) == {"sequence", "kind", "detail", "checkpoint"}


def test_verify_with_another_public_key_fails(archived: Operator) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public = load_config(archived.config).data_dir / "archive.pub"
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    public.write_bytes(other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    result = archived.run("archive", "verify")
    assert result.exit_code == 1
    assert_one_line_error(result.output, "checkpoint #1: signed by another key")


def test_checkpoint_json(archived: Operator) -> None:
    result = archived.run("archive", "checkpoint", "--json")
    assert result.exit_code == 0, result.output
    checkpoint = json.loads(result.stdout)
    assert (checkpoint["id"], checkpoint["sequence"], checkpoint["tree_size"]) == (2, 4, 4)
    assert checkpoint["origin"] == "chu-nord.mssante.test"
    assert set(checkpoint) == {"id", "sequence", "tree_size", "hash", "root", "time", "origin", "key_id", "signature"}


def test_search_table_and_json(archived: Operator) -> None:
    result = archived.run("archive", "search", "--address", PHARMACY)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["SEQ", "TIME", "(UTC)", "TYPE"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "3"]
    assert "2 event(s)" in result.stderr

    result = archived.run("archive", "search", "--type", "submission.", "--since", "2026-11-23T09:31:00", "--json")
    assert result.exit_code == 0, result.output
    (refused,) = json.loads(result.stdout)
    assert refused["sequence"] == 4
    assert refused["reply"] == "550 5.7.1 recipient is not a certified health address"
    assert set(refused) == {"sequence", "time", "type", "outcome", "actor", "peer", "queue_id", "message_id",
                            "sha256", "sender", "recipients", "reason", "reply", "prev_hash", "hash"}  # fmt: skip

    result = archived.run("archive", "search", "--message-id", "nothing@x", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []


def test_show_by_sequence_and_by_message_id(archived: Operator) -> None:
    result = archived.run("archive", "show", "4")
    assert result.exit_code == 0, result.output
    assert "reason      recipient domain outside the trust space" in result.stdout

    result = archived.run("archive", "show", "rx-1@chu-nord.mssante.test", "--json")
    assert result.exit_code == 0, result.output
    history = json.loads(result.stdout)
    assert [(e["sequence"], e["type"]) for e in history] == [(1, "submission.accepted"), (2, "signed"),
                                                             (3, "delivered")]  # fmt: skip

    result = archived.run("archive", "show", "<rx-1@chu-nord.mssante.test>")
    assert result.exit_code == 0, result.output
    assert "250 2.0.0 queued as Q1" in result.stdout

    result = archived.run("archive", "show", "99")
    assert result.exit_code == 1
    assert_one_line_error(result.output, "no archived event 99")
    result = archived.run("archive", "show", "<nothing@x>")
    assert result.exit_code == 1
    assert_one_line_error(result.output, "no archived event for Message-ID <nothing@x>")


def test_verify_against_a_checkpoint_kept_elsewhere(archived: Operator, engine: Engine, tmp_path: Path) -> None:
    kept = tmp_path / "checkpoint.json"
    result = archived.run("archive", "checkpoint", "--json")
    assert result.exit_code == 0, result.output
    kept.write_text(result.stdout)
    result = archived.run("archive", "verify", "--checkpoint", str(kept))
    assert result.exit_code == 0, result.output
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM archive_checkpoints"))
        connection.execute(sa.text("DELETE FROM archive_events WHERE sequence = 4"))
        connection.execute(sa.text("UPDATE archive_head SET sequence = 3, hash = "
                                   "(SELECT hash FROM archive_events WHERE sequence = 3)"))  # fmt: skip
    result = archived.run("archive", "verify", "--checkpoint", str(kept))
    assert result.exit_code == 1, result.output
    assert_one_line_error(result.output, "FAILED at sequence 4: checkpoint: the kept checkpoint of sequence 4")
    kept.write_text("{}")
    result = archived.run("archive", "verify", "--checkpoint", str(kept))
    assert result.exit_code == 1
    assert_one_line_error(result.output, "not a checkpoint as `mssecure archive checkpoint --json` writes it")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from mssecure.cli.archive import _progress

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with _progress(10) as update:
        assert update is not None
        update(10)
    assert "Verifying" in terminal.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with _progress(10) as update:
        assert update is None
