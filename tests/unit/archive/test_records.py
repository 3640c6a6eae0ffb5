"""The canonical form of events and checkpoints, and checkpoint signatures."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from mssecure.archive import ArchivedEvent, canonical_event, event_hash, key_id, sign_checkpoint
from mssecure.archive.records import GENESIS_HASH, canonical_json, format_time

texts = st.one_of(st.none(), st.text(st.characters(exclude_categories=("Cs",))))


@given(
    seq=st.integers(min_value=1, max_value=2**53),
    type_=st.text(st.characters(exclude_categories=("Cs",))),
    fields=st.lists(texts, min_size=8, max_size=8),
    recipients=st.lists(st.text(st.characters(exclude_categories=("Cs",))), max_size=3),
)
def test_the_fast_canonical_form_is_sorted_compact_json(
    seq: int, type_: str, fields: list[str | None], recipients: list[str]
) -> None:
    actor, peer, queue_id, message_id, sha256, sender, reason, reply = fields
    time = "2026-11-23T12:00:00.000001+00:00"
    document = {"seq": seq, "time": time, "type": type_, "outcome": "ok", "actor": actor, "peer": peer,
                "queue_id": queue_id, "message_id": message_id, "sha256": sha256, "sender": sender,
                "recipients": recipients, "reason": reason, "reply": reply, "prev": GENESIS_HASH, "v": 1}  # fmt: skip
    expected = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = canonical_event(seq, time, type_, "ok", actor, peer, queue_id, message_id, sha256, sender,
                           canonical_json(recipients), reason, reply, GENESIS_HASH)  # fmt: skip
    assert text == expected
    assert json.loads(text) == document


def test_event_hash_is_the_rfc_9162_leaf_hash_of_the_canonical_form() -> None:
    text = '{"a":1}'
    assert event_hash(text) == hashlib.sha256(b"\x00" + text.encode()).hexdigest()


def test_times_are_canonical_utc_with_microseconds() -> None:
    paris = timezone(timedelta(hours=1))
    assert format_time(datetime(2026, 11, 23, 13, 0, tzinfo=paris)) == "2026-11-23T12:00:00.000000+00:00"
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2026, 11, 23, 12, 0))


def _event() -> ArchivedEvent:
    event = ArchivedEvent(1, datetime(2026, 11, 23, tzinfo=UTC), "delivered", "ok", "relay", None, "Q1", "<1@x>",
                          None, "a@x.test", ("b@y.test",), None, "250 2.0.0 ok", GENESIS_HASH, "")  # fmt: skip
    return replace(event, hash=event.computed_hash())


def test_every_field_and_the_position_are_covered_by_the_hash() -> None:
    event = _event()
    for field, value in [("type", "bounced"), ("outcome", "failed"), ("actor", "x"), ("peer", "10.0.0.1"),
                         ("queue_id", "Q2"), ("message_id", "<2@x>"), ("sha256", "00"), ("sender", "c@x.test"),
                         ("recipients", ("c@y.test",)), ("reason", "r"), ("reply", "550"), ("prev_hash", "1" * 64),
                         ("time", event.time + timedelta(microseconds=1))]:  # fmt: skip
        assert replace(event, **{field: value}).computed_hash() != event.hash, field
    assert event.computed_hash(2) != event.hash


def test_checkpoints_verify_with_the_archive_key_only() -> None:
    key, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    checkpoint = sign_checkpoint(key, sequence=3, hash="a" * 64, root="b" * 64,
                                 time=datetime(2026, 11, 23, tzinfo=UTC), origin="chu.test")  # fmt: skip
    assert checkpoint.key_id == key_id(key.public_key())
    assert checkpoint.signature_problem(key.public_key()) is None
    assert "another key" in (checkpoint.signature_problem(other.public_key()) or "")
    for field, value in [("root", "c" * 64), ("hash", "c" * 64), ("sequence", 4), ("tree_size", 4),
                         ("origin", "evil.test"), ("time", checkpoint.time + timedelta(seconds=1))]:  # fmt: skip
        assert replace(checkpoint, **{field: value}).signature_problem(key.public_key()) == "signature invalid", field
    assert replace(checkpoint, signature="not base64!").signature_problem(key.public_key()) == "signature invalid"
    statement = json.loads(checkpoint.statement())
    assert statement["type"] == "mssecure.archive.checkpoint"
    key.public_key().verify(base64.b64decode(checkpoint.signature), checkpoint.statement())


def test_openssl_verifies_a_checkpoint_as_docs_archive_md_says(tmp_path: Path) -> None:
    """An auditor's independent check: the statement rebuilt from the JSON form, and `openssl pkeyutl`."""
    key = ed25519.Ed25519PrivateKey.generate()
    public = tmp_path / "archive.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    checkpoint = sign_checkpoint(key, sequence=3, hash="a" * 64, root="b" * 64,
                                 time=datetime(2026, 11, 23, tzinfo=UTC), origin="chu.test")  # fmt: skip
    document = checkpoint.to_json()
    del document["id"]
    signature = base64.b64decode(document.pop("signature"))
    document |= {"type": "mssecure.archive.checkpoint", "v": 1}
    (tmp_path / "statement").write_text(json.dumps(document, sort_keys=True, separators=(",", ":")))
    (tmp_path / "sig").write_bytes(signature)
    command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(public), "-rawin",
               "-in", str(tmp_path / "statement"), "-sigfile", str(tmp_path / "sig")]  # fmt: skip
    assert subprocess.run(command, capture_output=True, check=False).returncode == 0
    (tmp_path / "statement").write_text(json.dumps(document | {"sequence": 4}, sort_keys=True, separators=(",", ":")))
    assert subprocess.run(command, capture_output=True, check=False).returncode != 0
