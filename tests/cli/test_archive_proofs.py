"""``mssecure archive export / verify-export / evidence / verify-evidence``: the operator makes the files, an auditor
checks them in an empty directory with no configuration and only the public key; exit codes and --json."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.engine import Engine

from mssecure.archive import Archive, MessageStore, load_store_public_key
from mssecure.cli import main
from mssecure.config import load_config
from mssecure.db import make_engine
from mssecure.smtp.events import Event
from tests.cli.test_cli import assert_one_line_error
from tests.conftest import Operator

START = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
DOCTOR = "camille.lefevre@chu-nord.mssante.test"
PHARMACY = "pharmacie.centrale@officine.mssante.test"
RX = "<rx-1@chu-nord.mssante.test>"


@pytest.fixture
def engine(operator: Operator) -> Iterator[Engine]:
    engine = make_engine(load_config(operator.config).database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def archived(operator: Operator, engine: Engine) -> Operator:
    """A prescription submitted, relayed and displayed; other traffic around it."""
    Archive(engine).append_many([
        Event("auth.ok", "ok", actor=DOCTOR, time=START),
        Event("submission.accepted", "ok", actor=DOCTOR, queue_id="Q1", message_id=RX, sha256="ab" * 32,
              sender=DOCTOR, recipients=(PHARMACY,), time=START + timedelta(seconds=1)),
        Event("relayed", "ok", actor="relay", queue_id="Q1", message_id=RX, sender=DOCTOR, recipients=(PHARMACY,),
              reply="250 2.0.0 Ok", time=START + timedelta(seconds=2)),
        Event("mdn.received", "displayed", actor=PHARMACY, message_id=RX, sender=PHARMACY, recipients=(PHARMACY,),
              time=START + timedelta(minutes=3)),
        Event("auth.ok", "ok", actor=DOCTOR, time=START + timedelta(hours=1)),
    ])  # fmt: skip
    return operator


@pytest.fixture
def auditor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory, the working directory, with no configuration anywhere."""
    directory = tmp_path / "auditor"
    directory.mkdir()
    monkeypatch.chdir(directory)
    monkeypatch.delenv("MSSECURE_CONFIG", raising=False)
    return directory


def audit(*args: str) -> Result:
    """A command run as the auditor: no configuration (MSSECURE_CONFIG unset)."""
    return CliRunner().invoke(main, list(args), env={"MSSECURE_CONFIG": None}, catch_exceptions=False)


def public_key(operator: Operator) -> Path:
    return operator.directory / "data" / "archive.pub"


def test_export_then_verify_export_on_another_machine(archived: Operator, auditor: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = archived.run("archive", "export", "--since", "2026-11-23 09:30:01", "--until", "2026-11-23 09:40:00",
                          "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Exported events 2..4 (3 event(s)) to {out}")
    copy = auditor / "bundle"
    shutil.copytree(out, copy)
    shutil.copy(public_key(archived), auditor / "chu-nord.pub")
    assert not (auditor / "mssecure.toml").exists()
    result = audit("archive", "verify-export", "bundle", "--operator-key", "chu-nord.pub")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Export verified: events 2..4 (3 event(s)) of chu-nord.mssante.test")
    assert "(the operator key given)" in result.stdout
    assert result.stderr == ""
    result = audit("archive", "verify-export", "bundle", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["ok"], report["pinned"], report["events"], report["lines"]) == (True, False, 3, 5)
    assert "no --operator-key" in result.stderr
    assert "not that it comes from chu-nord.mssante.test" in result.stderr


def test_verify_export_names_the_bad_line(archived: Operator, auditor: Path) -> None:
    assert archived.run("archive", "export", "--out", str(auditor / "b")).exit_code == 0
    events = (auditor / "b" / "events.jsonl").read_text().splitlines(keepends=True)
    events[2] = events[2].replace('"outcome":"ok"', '"outcome":"refused"')
    (auditor / "b" / "events.jsonl").write_text("".join(events))
    shutil.copy(public_key(archived), auditor / "k.pub")
    result = audit("archive", "verify-export", "b", "--operator-key", "k.pub")
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "export verification FAILED at events.jsonl line 3 (sequence 3): edited",
                          "1 more finding(s)")  # fmt: skip
    result = audit("archive", "verify-export", "b", "--operator-key", "k.pub", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert (report["first"]["line"], report["first"]["kind"]) == (3, "edited")


def test_export_refusals(archived: Operator, tmp_path: Path) -> None:
    store_key = archived.directory / "data" / "keys" / "archive-store.key"
    store_key.rename(tmp_path / "away.key")
    result = archived.run("archive", "export", "--out", str(tmp_path / "x"), "--bodies")
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, f"missing key file {store_key}")
    assert not (tmp_path / "x").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("a")
    result = archived.run("archive", "export", "--out", str(tmp_path / "full"))
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "not an empty directory")
    result = archived.run("archive", "export", "--out", str(tmp_path / "y"), "--since", "2030-01-01")
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "no archived event between")
    result = archived.run("archive", "export", "--out", str(tmp_path / "y"), "--since", "2030-01-01",
                          "--until", "2029-01-01")  # fmt: skip
    assert_one_line_error(result.stderr, "--since must be before --until")


def test_verify_export_refusals(auditor: Path) -> None:
    result = audit("archive", "verify-export", "nothing")
    assert result.exit_code == 2  # click: the directory does not exist
    (auditor / "empty").mkdir()
    result = audit("archive", "verify-export", "empty")
    assert result.exit_code == 1
    assert_one_line_error(result.stderr.splitlines()[-1], "manifest.json: missing")
    (auditor / "k.pub").write_text("not a key")
    result = audit("archive", "verify-export", "empty", "--operator-key", "k.pub")
    assert_one_line_error(result.stderr, "k.pub is not a PEM public key")


def test_evidence_round_trip(archived: Operator, auditor: Path) -> None:
    result = archived.run("archive", "evidence", "rx-1@chu-nord.mssante.test", "--out", str(auditor / "rx.json"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:3] == [
        f"Message {RX}",
        f"  accepted (submission) 2026-11-23T09:30:01.000000+00:00 from {DOCTOR}, authenticated as {DOCTOR}",
        f"  SHA-256 {'ab' * 32}",
    ]
    assert "MDN displayed received 2026-11-23T09:33:00.000000+00:00" in result.stdout
    shutil.copy(public_key(archived), auditor / "chu-nord.pub")
    result = audit("archive", "verify-evidence", "rx.json", "--operator-key", "chu-nord.pub")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith("Evidence verified: signed by chu-nord.mssante.test's archive key")
    assert "  ok statement: the statement is exactly what the events say" in result.stdout
    result = audit("archive", "verify-evidence", "rx.json", "--operator-key", "chu-nord.pub", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["statement"]["recipients"][0]["outcome"] == "relayed"


def test_a_modified_evidence_file_fails(archived: Operator, auditor: Path) -> None:
    assert archived.run("archive", "evidence", RX, "--out", str(auditor / "rx.json")).exit_code == 0
    shutil.copy(public_key(archived), auditor / "k.pub")
    text = (auditor / "rx.json").read_text()
    (auditor / "rx.json").write_text(text.replace('"outcome": "relayed"', '"outcome": "delivered"'))
    result = audit("archive", "verify-evidence", "rx.json", "--operator-key", "k.pub")
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "evidence verification FAILED: signature:", "1 more failed check(s)")
    result = audit("archive", "verify-evidence", "rx.json", "--operator-key", "k.pub", "--json")
    assert result.exit_code == 1
    failed = [c["name"] for c in json.loads(result.stdout)["checks"] if not c["ok"]]
    assert failed == ["signature", "statement"]


def test_evidence_checked_with_another_key_fails(archived: Operator, auditor: Path) -> None:
    assert archived.run("archive", "evidence", RX, "--out", str(auditor / "rx.json")).exit_code == 0
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (auditor / "other.pub").write_bytes(pem)
    result = audit("archive", "verify-evidence", "rx.json", "--operator-key", "other.pub")
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "evidence verification FAILED: key: signed by another key")


def test_evidence_refusals(archived: Operator, auditor: Path) -> None:
    result = archived.run("archive", "evidence", "<nothing@x>", "--out", str(auditor / "n.json"))
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "no archived event for Message-ID <nothing@x>")
    assert not (auditor / "n.json").exists()
    (auditor / "taken.json").write_text("mine")
    result = archived.run("archive", "evidence", RX, "--out", str(auditor / "taken.json"))
    assert_one_line_error(result.stderr, "exists: choose a new file name")
    assert (auditor / "taken.json").read_text() == "mine"
    result = archived.run("archive", "evidence", RX, "--recipient", "x@y.test", "--out", str(auditor / "r.json"))
    assert_one_line_error(result.stderr, "x@y.test is not a recipient of")
    result = archived.run("archive", "evidence", RX, "--out", "-")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["type"] == "mssecure.archive.evidence"


def test_verify_evidence_refusals(archived: Operator, auditor: Path) -> None:
    shutil.copy(public_key(archived), auditor / "k.pub")
    (auditor / "notjson.json").write_text("{")
    result = audit("archive", "verify-evidence", "notjson.json", "--operator-key", "k.pub")
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "notjson.json is not JSON")
    result = audit("archive", "verify-evidence", "missing.json", "--operator-key", "k.pub")
    assert_one_line_error(result.stderr, "cannot read evidence file missing.json")
    (auditor / "other.json").write_text('{"type": "something else"}')
    result = audit("archive", "verify-evidence", "other.json", "--operator-key", "k.pub")
    assert_one_line_error(result.stderr, "format: not an mssecure evidence document")
    result = audit("archive", "verify-evidence", "other.json")
    assert result.exit_code == 2  # --operator-key is required: evidence without the origin's key proves nothing
    assert "--operator-key" in result.output


# -- export --bodies, on SQLite and PostgreSQL

PRESCRIPTION = (
    f"From: {DOCTOR}\r\nTo: {PHARMACY}\r\nMessage-ID: {RX}\r\nSubject: ordonnance\r\n\r\n"
    "Amoxicilline 1 g, 3 fois par jour pendant 7 jours.\r\n"
).encode()


@pytest.fixture
def relayed(operator_on: Operator) -> Iterator[tuple[Operator, Engine]]:
    """A prescription stored by the relay's store (public key only) and relayed; one earlier message never stored."""
    engine = make_engine(load_config(operator_on.config).database_url)
    public = load_store_public_key(operator_on.directory / "data" / "archive-store.pub")
    sha256 = MessageStore(engine, public_key=public).put(PRESCRIPTION, kind="received", queue_id="Q1", message_id=RX)
    Archive(engine).append_many([
        Event("submission.accepted", "ok", actor=DOCTOR, queue_id="Q0", sha256="cd" * 32, sender=DOCTOR,
              recipients=(PHARMACY,), time=START),
        Event("submission.accepted", "ok", actor=DOCTOR, queue_id="Q1", message_id=RX, sha256=sha256,
              sender=DOCTOR, recipients=(PHARMACY,), time=START + timedelta(seconds=1)),
        Event("relayed", "ok", actor="relay", queue_id="Q1", message_id=RX, sha256=sha256, recipients=(PHARMACY,),
              reply="250 2.0.0 Ok", time=START + timedelta(seconds=2)),
    ])  # fmt: skip
    yield operator_on, engine
    engine.dispose()


def test_export_bodies_round_trip(relayed: tuple[Operator, Engine], auditor: Path, tmp_path: Path) -> None:
    operator, engine = relayed
    out = tmp_path / "bundle"
    result = operator.run("archive", "export", "--bodies", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Exported events 1..3 (3 event(s)) to {out}")
    warning = result.stderr.strip()
    assert warning.startswith(f"mssecure: warning: {out} holds 1 DECRYPTED message body(ies) ({len(PRESCRIPTION)} ")
    assert "health data in clear" in warning
    assert "1 body(ies) the events name are not in it" in warning
    name = f"{hashlib.sha256(PRESCRIPTION).hexdigest()}.eml"
    assert (out / "bodies" / name).read_bytes() == PRESCRIPTION
    assert stat.S_IMODE((out / "bodies").stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "bodies" / name).stat().st_mode) == 0o600
    (exported,) = Archive(engine).search(type="archive.exported")
    assert (exported.sequence, exported.actor, exported.outcome) == (4, "test-operator", "ok")
    assert exported.reason is not None
    assert f"1 message body(ies) ({len(PRESCRIPTION)} bytes) decrypted, 1 absent, written to {out}" in exported.reason

    shutil.copytree(out, auditor / "bundle")
    shutil.copy(public_key(operator), auditor / "chu-nord.pub")
    result = audit("archive", "verify-export", "bundle", "--operator-key", "chu-nord.pub")
    assert result.exit_code == 0, result.output
    verified, bodies = result.stdout.splitlines()
    assert verified.startswith("Export verified: events 1..3 (3 event(s))")
    assert bodies.startswith(f"Bodies verified: 1 message body(ies) ({len(PRESCRIPTION)} bytes), each the one its "
                             "event names; 1 named by the events absent")  # fmt: skip
    result = audit("archive", "verify-export", "bundle", "--operator-key", "chu-nord.pub", "--json")
    report = json.loads(result.stdout)
    assert report["bodies"]["files"] == 1
    assert [(a["sha256"], a["why"]) for a in report["bodies"]["absent"]] == [("cd" * 32, "not stored")]

    (auditor / "bundle" / "bodies" / name).write_bytes(PRESCRIPTION.replace(b"1 g", b"3 g"))
    result = audit("archive", "verify-export", "bundle", "--operator-key", "chu-nord.pub")
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, f"export verification FAILED at bodies/{name}: edited: its SHA-256 is")


def test_export_bodies_json_still_warns(relayed: tuple[Operator, Engine], tmp_path: Path) -> None:
    operator, _engine = relayed
    result = operator.run("archive", "export", "--bodies", "--since", "2026-11-23 09:30:01", "--out",
                          str(tmp_path / "b"), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["bodies"]["files"], summary["bodies"]["absent"], summary["bodies"]["exported_event"]) == (1, [], 4)
    assert "DECRYPTED" in result.stderr
    result = operator.run("archive", "export", "--out", str(tmp_path / "c"), "--json")
    assert json.loads(result.stdout)["bodies"] is None
    assert result.stderr == ""
