"""Security review of the relay (mssecure/smtp): each problem found is a test.

Each test either shows that something checked is fine, or pins a problem the review found and that is now fixed:
a signer other than the sender, a delivered From other than the signer, forged notices settling tracking, MDNs to
third parties, parallel password guesses, lock-out from elsewhere, the bare CR/LF scan on the event loop, odd
enhanced codes from peers, control characters in envelope addresses. Messages that a malicious peer operator (or
a professional holding their own key, end-to-end mode) could send are crafted here with ``mssecure.crypto.smime``
and the operators' real keys.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.smtp import Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from mssecure.config import load_config
from mssecure.crypto import smime
from mssecure.db import make_engine, make_sessionmaker, upgrade_schema
from mssecure.smtp import notifications
from mssecure.smtp.delivery import _enhanced
from mssecure.smtp.maildir import Maildirs
from mssecure.smtp.queue import Queue, Spool
from tests.integration.test_relay import A_DOMAIN, B_DOMAIN, Pair, client_context, plain, prescription, submit
from tests.support.relay import PASSWORD, RelayOperator

# Helpers: the operators' keys, and a raw SMTP client that can send what smtplib refuses to


def identity(operator: RelayOperator, address: str) -> tuple[x509.Certificate, Any]:
    """The S/MIME certificate and key of ``address`` (as its owner holds them after ``certs export-p12``)."""
    secret = operator.directory / ".p12-password"
    secret.write_text("p12-password\n", encoding="utf-8")
    out = operator.directory / f"{address}.p12"
    if out.exists():
        out.unlink()
    operator.ok("certs", "export-p12", address, "--out", str(out), "--password-file", str(secret))
    key, certificate, _ = pkcs12.load_key_and_certificates(out.read_bytes(), b"p12-password")
    assert certificate is not None
    assert key is not None
    return certificate, key


def ca_of(operator: RelayOperator) -> x509.Certificate:
    return x509.load_pem_x509_certificate((operator.directory / "data" / "pki" / "ca.crt").read_bytes())


def relay_identity(operator: RelayOperator, where: Path) -> tuple[Path, Path]:
    """The operator's relay TLS certificate and its key in clear PEM (what a peer operator holds for itself)."""
    data = operator.directory / "data"
    secret = (data / "master.key").read_text().strip().encode()
    key = serialization.load_pem_private_key((data / "keys" / "tls.key").read_bytes(), password=secret)
    path = where / f"{operator.domain}-tls.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return data / "pki" / "tls.crt", path


def personal_identity(operator: RelayOperator, address: str, where: Path) -> tuple[Path, Path]:
    certificate, key = identity(operator, address)
    cert_path, key_path = where / f"{address}.crt", where / f"{address}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class RawClient:
    """SMTP over STARTTLS, byte for byte (smtplib refuses CR or LF in a command, which is what is tested here)."""

    def __init__(self, port: int, certificate: tuple[Path, Path] | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock: socket.socket = sock
        self.reader = sock.makefile("rb")
        self.reply()
        self.command(b"EHLO peer.test")
        assert self.command(b"STARTTLS").startswith(b"220")
        context = client_context()
        if certificate is not None:
            context.load_cert_chain(*certificate)
        self.reader.close()
        self.sock = context.wrap_socket(sock)
        self.reader = self.sock.makefile("rb")
        self.command(b"EHLO peer.test")

    def reply(self) -> bytes:
        text = b""
        while True:
            line = self.reader.readline()
            text += line
            if line[3:4] != b"-":
                return text

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def data(self, message: bytes) -> bytes:
        assert self.command(b"DATA").startswith(b"354")
        lines = [b"." + line if line.startswith(b".") else line for line in message.split(b"\r\n")]
        body = b"\r\n".join(lines)
        self.sock.sendall(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.command(b"QUIT")
        finally:
            self.reader.close()
            self.sock.close()


def signed_and_encrypted(inner: bytes, signer: tuple[x509.Certificate, Any], ca: x509.Certificate,
                         recipients: list[x509.Certificate]) -> bytes:  # fmt: skip
    """What a sending relay puts on the wire (without DKIM): ``inner`` signed by ``signer``, encrypted."""
    return smime.encrypt(smime.sign(inner, signer[0], signer[1], chain=[ca]), recipients)


def head_of(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[0]


def arrived(operator: RelayOperator, address: str, before: list[bytes], timeout: float = 30) -> bytes:
    """The one message that reached ``address`` since ``before`` (Maildir names are not in arrival order)."""
    operator.wait_for(address, len(before) + 1, timeout=timeout)
    (new,) = [m for m in operator.messages(address) if m not in before]
    return new


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    operators = Pair(tmp_path_factory.mktemp("review"))
    operators.a.start()
    operators.b.start()
    yield operators
    operators.stop()


# 1. Submission: the relay vouches for a signer who is not the authenticated sender


def test_submitter_cannot_pass_off_a_colleagues_signed_message(pair: Pair) -> None:
    """The nurse's signed message (the bytes any recipient of it holds) re-submitted by the doctor, with the unsigned
    outer From set to the doctor: the relay verifies the nurse's signature, never compares the signer with the
    authenticated sender, and the pharmacy's relay then certifies the nurse in Authentication-Results."""
    nurse = identity(pair.a, pair.nurse)
    inner = prescription(pair.nurse, pair.pharmacy, subject="Ordonnance rejouee", mdn=False)
    signed = smime.sign(inner, nurse[0], nurse[1], chain=[ca_of(pair.a)])
    outer_from = f"From: Dr Camille Lefèvre <{pair.nurse}>".encode()
    assert signed.index(outer_from) < signed.index(b"Content-Type: message/rfc822")  # the unsigned outer header
    replayed = signed.replace(outer_from, f"From: <{pair.doctor}>".encode(), 1)
    before = pair.b.messages(pair.pharmacy)
    try:
        submit(pair.a, pair.doctor, pair.doctor, [pair.pharmacy], replayed)
    except smtplib.SMTPDataError:
        return  # refused: the signer is not the authenticated sender
    delivered = arrived(pair.b, pair.pharmacy, before)
    head = head_of(delivered).decode()
    assert f"Return-Path: <{pair.doctor}>" in head
    assert f"smime-identifier={pair.nurse}" not in head, head


# 2. Inbound: what the recipient sees as From is not what was verified


def test_inbound_outer_from_must_be_the_verified_signer(pair: Pair, tmp_path: Path) -> None:
    """A peer (or an end-to-end client, whose encrypted entity the sending relay cannot read) signs as its own user
    but sets the unsigned outer From to a colleague of the recipient's own operator: delivered as is."""
    doctor = identity(pair.a, pair.doctor)
    pharmacy_cert, _ = identity(pair.b, pair.pharmacy)
    wire = signed_and_encrypted(prescription(pair.doctor, pair.pharmacy, mdn=False), doctor, ca_of(pair.a),
                                [pharmacy_cert])  # fmt: skip
    forged = wire.replace(f"From: Dr Camille Lefèvre <{pair.doctor}>".encode(),
                          f"From: =?utf-8?q?L=C3=A9a_DURAND?= <{pair.pharmacist}>".encode(), 1)  # fmt: skip
    assert forged != wire
    before = pair.b.messages(pair.pharmacy)
    client = RawClient(pair.b.ports["inbound"], relay_identity(pair.a, tmp_path))
    try:
        assert client.command(f"MAIL FROM:<{pair.doctor}>".encode()).startswith(b"250")
        assert client.command(f"RCPT TO:<{pair.pharmacy}>".encode()).startswith(b"250")
        reply = client.data(forged)
    finally:
        client.close()
    if reply.startswith(b"5"):
        return
    head = head_of(arrived(pair.b, pair.pharmacy, before)).decode()
    assert f"smime-identifier={pair.doctor}" in head
    assert f"<{pair.pharmacist}>" not in head, head


# 3. Inbound: CR inside MAIL FROM ends up in the delivered header


def test_inbound_mail_from_with_a_bare_cr_is_refused(pair: Pair, tmp_path: Path) -> None:
    doctor = identity(pair.a, pair.doctor)
    pharmacy_cert, _ = identity(pair.b, pair.pharmacy)
    wire = signed_and_encrypted(prescription(pair.doctor, pair.pharmacy, mdn=False), doctor, ca_of(pair.a),
                                [pharmacy_cert])  # fmt: skip
    injected = f'"x\rAuthentication-Results: {pair.b.hostname}; smime=pass"@{A_DOMAIN}'.encode()
    before = pair.b.messages(pair.pharmacy)
    client = RawClient(pair.b.ports["inbound"], relay_identity(pair.a, tmp_path))
    try:
        reply = client.command(b"MAIL FROM:<" + injected + b">")
        if reply.startswith(b"5"):
            return  # refused: the fix
        assert client.command(f"RCPT TO:<{pair.pharmacy}>".encode()).startswith(b"250")
        assert client.data(wire).startswith(b"250")
    finally:
        client.close()
    head = head_of(arrived(pair.b, pair.pharmacy, before))
    assert b"\r" not in head.replace(b"\r\n", b""), head[:300]


# 4. Notices: anyone of a peer settles the tracking of a message that never left


def test_a_peer_users_forged_notice_does_not_settle_a_tracked_message(tmp_path: Path) -> None:
    """The doctor's message to the pharmacy is still in A's queue (B is down). A pharmacist of B (any certified
    address of the peer) signs an MDN claiming the pharmacy's mailbox has it ("dispatched"): A marks the message
    final for the pharmacy, delivers the forged notice, and would suppress the genuine ones."""
    operators = Pair(tmp_path)
    a, b = operators.a, operators.b
    a.start()  # B never starts
    try:
        message_id = f"<review-mdn-1@{A_DOMAIN}>"
        data = f"Message-ID: {message_id}\r\n".encode() + prescription(operators.doctor, operators.pharmacy,
                                                                         final=True)  # fmt: skip
        assert submit(a, operators.doctor, operators.doctor, [operators.pharmacy], data) == {}
        mdn = notifications.build_mdn(final_recipient=operators.pharmacy, to_address=operators.doctor,
                                      original_message_id=message_id, disposition="dispatched",
                                      reporting_ua=b.hostname, now=datetime.now(UTC))  # fmt: skip
        mdn = mdn.replace(f"From: {operators.pharmacy}".encode(), f"From: {operators.pharmacist}".encode(), 1)
        doctor_cert, _ = identity(a, operators.doctor)
        wire = signed_and_encrypted(mdn, identity(b, operators.pharmacist), ca_of(b), [doctor_cert])
        client = RawClient(a.ports["inbound"], relay_identity(b, tmp_path))
        try:
            assert client.command(f"MAIL FROM:<{operators.pharmacist}>".encode()).startswith(b"250")
            assert client.command(f"RCPT TO:<{operators.doctor}>".encode()).startswith(b"250")
            reply = client.data(wire)
        finally:
            client.close()
        if reply.startswith(b"250"):
            a.wait_for(operators.doctor, 1)
        engine = sa.create_engine(load_config(a.config).database_url)
        try:
            with engine.connect() as connection:
                outcome = connection.execute(
                    sa.text("SELECT outcome FROM notification_tracking WHERE message_id = :m AND recipient = :r"),
                    {"m": message_id, "r": operators.pharmacy},
                ).scalar_one()
        finally:
            engine.dispose()
        assert '"deferred"' in a.ok("queue", "list", "--json").output or "queued" in a.ok("queue", "list").output
        assert outcome is None, f"the message never left A, yet its tracking says {outcome!r}"
    finally:
        operators.stop()


# 5. MDNs are sent to whoever Disposition-Notification-To names


def test_mdn_is_not_sent_to_a_third_party(pair: Pair) -> None:
    """RFC 8098 §2.1: a Disposition-Notification-To that is not the Return-Path must not get an automatic MDN. The
    nurse names the doctor: the pharmacy's relay signs, as the pharmacy, an MDN to the doctor with the nurse's
    Subject and Original-Message-ID (a chosen Message-ID also settles the doctor's tracking of that message)."""
    before = pair.a.messages(pair.doctor)
    data = prescription(pair.nurse, pair.pharmacy, subject="Rappel: appelez le 0800", mdn=False)
    data = f"Disposition-Notification-To: {pair.doctor}\r\n".encode() + data
    assert submit(pair.a, pair.nurse, pair.nurse, [pair.pharmacy], data) == {}
    try:
        notice = arrived(pair.a, pair.doctor, before, timeout=15)
    except AssertionError:
        return  # no MDN to the third party
    assert f"smime-identifier={pair.pharmacy}".encode() not in notice


# 6. AUTH: the rate limit is checked before the (slow) password check and counted after it


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayOperator]:
    operator = RelayOperator(tmp_path_factory.mktemp("limited") / "a", A_DOMAIN)
    operator.person("camille.lefevre", 1)
    operator.person("alex.martin", 2, first="Alex", last="MARTIN")
    operator.config.write_text(operator.config.read_text().replace("max_failures = 5", "max_failures = 3"))
    operator.start()
    yield operator
    operator.stop()


def _auth_in_parallel(operator: RelayOperator, login: str, passwords: list[str], source: str) -> list[int]:
    barrier = threading.Barrier(len(passwords))
    codes: list[int] = [0] * len(passwords)

    def attempt(index: int) -> None:
        with smtplib.SMTP("127.0.0.1", operator.ports["submission"], timeout=60, source_address=(source, 0)) as c:
            c.starttls(context=client_context())
            c.ehlo()
            barrier.wait()
            codes[index] = plain(c, login, passwords[index])[0]

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(passwords))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def test_parallel_guesses_are_rate_limited_too(limited: RelayOperator) -> None:
    """max_failures = 3, one client IP, twelve connections guessing at once: every guess is checked."""
    login = f"camille.lefevre@{A_DOMAIN}"
    codes = _auth_in_parallel(limited, login, [f"guess number {i:02d}" for i in range(12)], "127.0.0.4")
    assert codes.count(535) <= 3, codes


def test_failures_from_another_ip_do_not_lock_the_owner_out(limited: RelayOperator) -> None:
    """The directory is public: anyone can keep every professional locked out by failing 3 logins each."""
    login = f"alex.martin@{A_DOMAIN}"
    for _ in range(3):
        with smtplib.SMTP("127.0.0.1", limited.ports["submission"], timeout=30, source_address=("127.0.0.2", 0)) as c:
            c.starttls(context=client_context())
            c.ehlo()
            assert plain(c, login, "attacker guess")[0] == 535
    with smtplib.SMTP("127.0.0.1", limited.ports["submission"], timeout=30, source_address=("127.0.0.3", 0)) as c:
        c.starttls(context=client_context())
        c.ehlo()
        assert plain(c, login, PASSWORD)[0] == 235


# 7. Delivery: a peer's reply the DSN builder cannot represent


def test_a_peer_reply_with_an_odd_enhanced_code_still_makes_a_dsn() -> None:
    """delivery._failed → _bounce → Processor.dsn → build_dsn raises ValueError; _guarded defers (without the expiry
    check of _defer), the next attempt gets the same 5xx: the message is re-sent to the peer forever, no DSN."""
    error = "550 5.7.1000 refused by policy"
    status = _enhanced(error) or "5.0.0"
    notifications.build_dsn(
        reporting_mta="mail.chu-nord.mssante.test", from_address=f"mailer-daemon@{A_DOMAIN}",
        to_address=f"camille.lefevre@{A_DOMAIN}", original_message_id="<x@y>", original_headers=b"",
        recipients=[notifications.FailedRecipient(f"pharmacie@{B_DOMAIN}", status, f"smtp; {error}")],
        arrival=datetime.now(UTC), now=datetime.now(UTC),
    )  # fmt: skip


# 8. DoS: the bare CR/LF scan of the whole message runs on the event loop


def test_the_bare_line_ending_scan_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """server._accept_data calls check_bare_line_endings(data) in the loop thread: its look-behind regex takes about
    1.5 s on a message of max_message_size (50 MiB, measured here), during which every session of the relay
    stands still; any authenticated client or peer can repeat it."""
    from mssecure.smtp import server

    seen: list[threading.Thread] = []
    real = server.check_bare_line_endings

    def spy(data: bytes) -> None:
        seen.append(threading.current_thread())
        real(data)

    monkeypatch.setattr(server, "check_bare_line_endings", spy)

    engine = make_engine(f"sqlite:///{tmp_path / 'queue.db'}")
    upgrade_schema(engine)
    queue = Queue(make_sessionmaker(engine), Spool(tmp_path / "spool"), retry_schedule=(60,), max_lifetime=3600)
    handler = server.SubmissionHandler(None, None, queue, lambda event: None, limiter=None)  # type: ignore[arg-type]
    session = Session(loop=None)  # type: ignore[arg-type]
    session.peer = ("127.0.0.1", 1)
    envelope = Envelope()
    envelope.original_content = b"From: a@b.test\r\n\r\nx\r\n"
    envelope.mail_from, envelope.rcpt_tos = "a@b.test", ["c@d.test"]
    reply = asyncio.run(handler._accept_data(None, session, envelope, lambda relay_envelope: []))  # type: ignore[arg-type]
    assert reply.startswith("250"), reply
    assert seen
    assert seen[0] is not threading.main_thread()


# Checked and fine


def test_a_peers_personal_certificate_is_not_a_relay_certificate(pair: Pair, tmp_path: Path) -> None:
    """An S/MIME certificate of A (it has clientAuth, and chains to a trusted CA) does not open B's inbound."""
    client = RawClient(pair.b.ports["inbound"], personal_identity(pair.a, pair.doctor, tmp_path))
    try:
        reply = client.command(f"MAIL FROM:<{pair.doctor}>".encode())
    finally:
        client.close()
    assert reply.startswith(b"550 5.7.1"), reply


def test_two_from_fields_or_two_addresses_are_refused_at_submission(pair: Pair) -> None:
    for extra in (f"From: <{pair.nurse}>\r\n", None):
        data = prescription(pair.doctor, pair.nurse, mdn=False)
        if extra is None:
            data = data.replace(f"<{pair.doctor}>".encode(), f"<{pair.doctor}>, <{pair.nurse}>".encode(), 1)
        else:
            data = extra.encode() + data
        with pytest.raises(smtplib.SMTPDataError) as refused:
            submit(pair.a, pair.doctor, pair.doctor, [pair.nurse], data)
        assert refused.value.smtp_code == 550


def test_forged_authentication_results_are_removed_on_local_delivery(pair: Pair) -> None:
    before = pair.a.messages(pair.nurse)
    forged = f"Authentication-Results: {pair.a.hostname}; smime=pass body.smime-identifier=chef@{A_DOMAIN}\r\n"
    data = forged.encode() + prescription(pair.doctor, pair.nurse, mdn=False)
    assert submit(pair.a, pair.doctor, pair.doctor, [pair.nurse], data) == {}
    delivered = arrived(pair.a, pair.nurse, before)
    assert b"chef@" not in head_of(delivered)
    assert head_of(delivered).count(b"Authentication-Results:") == 1


@pytest.mark.parametrize("address", ["../x@a.test", "x@..", "x@a/../b", "a/b@c.test", ".x@a.test", "x@.a"])
def test_maildir_paths_stay_under_the_root(tmp_path: Path, address: str) -> None:
    with pytest.raises(ValueError, match="cannot make a mailbox path"):
        Maildirs(tmp_path).path(address)


def test_serve_logs_carry_no_subject_body_or_password(pair: Pair) -> None:
    """Runs last: everything above went through these two relays."""
    for operator in (pair.a, pair.b):
        log = operator.log.read_text(encoding="utf-8", errors="replace")
        for secret in (PASSWORD, "DUPONT", "Amoxicilline", "Ordonnance", "guess number"):
            assert secret not in log, (operator.domain, secret)
