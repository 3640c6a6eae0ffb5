"""The archive trail the relay leaves: two real ``mssecure serve`` processes, their archives read back with the CLI.

A delivered prescription (both operators' sides, down to the MDN), a refused one, a bounced one, failed logins and
the operator's own actions; the chain verifies afterwards and the relay signs a checkpoint when it stops.
"""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_relay import Pair, client_context, plain, prescription, submit
from tests.support.relay import RelayOperator


def events(operator: RelayOperator, *args: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(operator.ok("archive", "search", "--json", *args).output)
    return found


def wait_for_event(operator: RelayOperator, type_: str, *args: str, timeout: float = 20) -> list[dict[str, Any]]:
    """The events of ``type_`` matching ``args``, once there is at least one (the relay archives refusals and logins
    from a background thread, within a second)."""
    deadline = time.monotonic() + timeout
    while True:
        found = events(operator, "--type", type_, *args)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def with_message_id(data: bytes, message_id: str) -> bytes:
    return f"Message-ID: {message_id}\r\n".encode() + data


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    operators = Pair(tmp_path_factory.mktemp("archive-trail"))
    operators.a.start()
    operators.b.start()
    yield operators
    operators.stop()


def test_a_delivered_prescription_leaves_its_whole_trail_on_both_sides(pair: Pair) -> None:
    message_id = "<trail-delivered@chu-nord.mssante.test>"
    mdn_before = len(pair.a.messages(pair.doctor))
    data = with_message_id(prescription(pair.doctor, pair.pharmacy), message_id)
    assert submit(pair.a, pair.doctor, pair.doctor, [pair.pharmacy], data) == {}
    pair.b.wait_for(pair.pharmacy, 1)
    pair.a.wait_for(pair.doctor, mdn_before + 1)  # the processed MDN is back at A
    wait_for_event(pair.a, "mdn.received", "--message-id", message_id)

    sent = events(pair.a, "--message-id", message_id)
    types = [e["type"] for e in sent]
    assert types[:3] == ["signed", "encrypted", "submission.accepted"], types
    assert "relayed" in types
    assert types.index("relayed") > types.index("submission.accepted")
    accepted = sent[types.index("submission.accepted")]
    assert accepted["actor"] == pair.doctor
    assert accepted["sender"] == pair.doctor
    assert accepted["recipients"] == [pair.pharmacy]
    assert accepted["reply"].startswith("250 ")
    assert len(accepted["sha256"]) == 64
    relayed = sent[types.index("relayed")]
    assert relayed["queue_id"] == accepted["queue_id"]
    assert relayed["recipients"] == [pair.pharmacy]
    (mdn,) = [e for e in sent if e["type"] == "mdn.received"]
    assert mdn["outcome"] == "processed"
    assert mdn["actor"] == pair.pharmacy  # who signed the notice
    assert mdn["recipients"] == [pair.pharmacy]
    # The body is never in an event.
    assert "Amoxicilline" not in json.dumps(sent)

    received = events(pair.b, "--message-id", message_id)
    types = [e["type"] for e in received]
    assert types[:2] == ["verified", "mdn.sent"] or types[:2] == ["mdn.sent", "verified"], types
    assert "inbound.accepted" in types
    assert "delivered" in types
    inbound = received[types.index("inbound.accepted")]
    assert inbound["actor"] == "chu-nord.mssante.test"  # the peer operator, authenticated by its certificate
    verified = received[types.index("verified")]
    assert verified["actor"] == pair.doctor
    assert "decrypted" in verified["reason"]
    assert "DKIM pass" in verified["reason"]
    delivered = received[types.index("delivered")]
    assert delivered["recipients"] == [pair.pharmacy]
    assert delivered["queue_id"] in inbound["queue_id"].split(",")  # with the MDN queued alongside
    # `archive show` gives that history, with the events of the queue entries it names (the MDN's delivery).
    shown = json.loads(pair.a.ok("archive", "show", message_id, "--json").output)
    assert {e["sequence"] for e in sent} <= {e["sequence"] for e in shown}


def test_the_message_store_keeps_the_copies_as_received_and_as_delivered(pair: Pair, tmp_path: Path) -> None:
    message_id = "<trail-stored@chu-nord.mssante.test>"
    data = with_message_id(prescription(pair.doctor, pair.pharmacy, mdn=False), message_id)
    assert submit(pair.a, pair.doctor, pair.doctor, [pair.pharmacy], data) == {}
    wait_for_event(pair.b, "delivered", "--message-id", message_id)
    out = tmp_path / "copies"
    out.mkdir()
    pair.b.ok("--actor", "auditor", "archive", "show", message_id, "--body", "--out", str(out))
    copies = {path.name.split("-")[0]: path.read_bytes() for path in out.iterdir()}
    assert set(copies) == {"received", "delivered"}
    assert b"application/pkcs7-mime" in copies["received"]  # as it came from A: encrypted
    assert b"Amoxicilline" not in copies["received"]
    assert b"Amoxicilline 1 g" in copies["delivered"]  # as it went into the mailbox: decrypted, still signed
    assert copies["delivered"] in pair.b.messages(pair.pharmacy)
    reads = events(pair.b, "--type", "archive.body_read", "--message-id", message_id)
    assert len(reads) == 2  # one per copy read
    assert {r["actor"] for r in reads} == {"auditor"}
    # A keeps what the doctor's client sent, and what left for B.
    out_a = tmp_path / "copies-a"
    out_a.mkdir()
    pair.a.ok("archive", "show", message_id, "--body", "--out", str(out_a))
    kinds = sorted(path.name.split("-")[0] for path in out_a.iterdir())
    assert kinds == ["delivered", "received"]
    (received,) = [p.read_bytes() for p in out_a.iterdir() if p.name.startswith("received")]
    assert received == data


def test_a_refused_submission_is_archived_with_the_reply_sent(pair: Pair) -> None:
    stranger = "nobody@chu-nord.mssante.test"
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        submit(pair.a, pair.doctor, pair.doctor, [stranger], prescription(pair.doctor, stranger))
    code, text = refused.value.recipients[stranger]
    found = wait_for_event(pair.a, "submission.refused", "--address", stranger)
    assert found, "no submission.refused event"
    event = found[-1]
    assert event["outcome"] == "refused"
    assert event["actor"] == pair.doctor
    assert event["reply"] == f"{code} {text.decode()}"
    assert event["recipients"] == [stranger]


def test_failed_logins_are_archived_without_the_password(pair: Pair) -> None:
    with smtplib.SMTP("127.0.0.1", pair.a.ports["submission"], timeout=30) as client:
        client.starttls(context=client_context())
        client.ehlo()
        code, _ = plain(client, pair.nurse, "not-the-password-Zx81")
        assert code == 535
    found = wait_for_event(pair.a, "auth.failed", "--address", pair.nurse)
    assert found
    assert found[-1]["reason"] == "bad credentials"
    assert "not-the-password-Zx81" not in pair.a.ok("archive", "search", "--json").output


def test_operator_actions_are_archived_with_the_operator_account(pair: Pair) -> None:
    pair.a.ok("--actor", "alice.admin", "directory", "suspend", pair.nurse, "--reason", "left the hospital")
    pair.a.ok("--actor", "alice.admin", "directory", "reactivate", pair.nurse)
    (suspended,) = events(pair.a, "--type", "directory.suspend")
    assert suspended["actor"] == "alice.admin"
    assert suspended["recipients"] == [pair.nurse]
    assert suspended["reason"] == "left the hospital"
    assert events(pair.a, "--type", "directory.reactivate")
    assert events(pair.a, "--type", "mailbox.password_set", "--address", pair.doctor)  # set by the test harness
    assert events(pair.a, "--type", "trust.imported")


def test_a_bounced_message_and_its_dsn_are_archived(tmp_path: Path) -> None:
    operators = Pair(tmp_path, max_lifetime=3)  # B never starts: A defers, then bounces
    operators.a.start()
    try:
        message_id = "<trail-bounced@chu-nord.mssante.test>"
        data = with_message_id(prescription(operators.doctor, operators.pharmacy, mdn=False), message_id)
        assert submit(operators.a, operators.doctor, operators.doctor, [operators.pharmacy], data) == {}
        operators.a.wait_for(operators.doctor, 1)  # the DSN
        found = wait_for_event(operators.a, "bounced", "--message-id", message_id)
        assert found
        (bounced,) = found
        assert bounced["recipients"] == [operators.pharmacy]
        assert bounced["reason"].startswith("4.4.7 ")
        types = [e["type"] for e in events(operators.a, "--message-id", message_id)]
        assert "deferred" in types
        assert types.index("submission.accepted") < types.index("deferred") < types.index("bounced")
        assert "dsn.sent" in types
        assert "relayed" not in types
        assert "delivered" not in types
    finally:
        operators.stop()
    # Stopping signs a last checkpoint; the whole chain verifies.
    report = json.loads(operators.a.ok("archive", "verify", "--json").output)
    assert report["ok"] is True
    assert report["checkpoints"] >= 1


def test_the_archive_verifies_after_the_relays_stop(pair: Pair) -> None:
    pair.stop()
    for operator in (pair.a, pair.b):
        report = json.loads(operator.ok("archive", "verify", "--json").output)
        assert report["ok"] is True, report
        assert report["checkpoints"] >= 1
        (stopped,) = events(operator, "--type", "relay.stopped")
        assert stopped["actor"] == "relay"
