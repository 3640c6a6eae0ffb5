"""Two operators on loopback, each running ``mssecure serve``: a doctor at A sends a prescription to a pharmacy at B.

Real TLS with the operators' generated certificates, real SMTP clients (smtplib, swaks), the wire copy judged by
``openssl cms``.
"""

from __future__ import annotations

import base64
import json
import shutil
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.support.postgres import PostgresCluster
from tests.support.relay import PASSWORD, RelayOperator

A_DOMAIN = "chu-nord.mssante.test"
B_DOMAIN = "pharma-sud.mssante.test"


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def prescription(sender: str, recipient: str, *, subject: str = "Ordonnance DUPONT Jean", mdn: bool = True,
                 final: bool = False, body: str = "Amoxicilline 1 g, 3 fois par jour, 7 jours") -> bytes:  # fmt: skip
    headers = [f"From: Dr Camille Lefèvre <{sender}>", f"To: {recipient}", f"Subject: {subject}"]
    if mdn:
        headers.append(f"Disposition-Notification-To: {sender}")
    if final:
        headers.append("Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true")
    headers += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
    return ("\r\n".join(headers) + "\r\n\r\n" + body + "\r\n").encode()


def submit(operator: RelayOperator, login: str, sender: str, recipients: list[str], data: bytes,
           password: str = PASSWORD) -> dict[str, tuple[int, bytes]]:  # fmt: skip
    with smtplib.SMTP("127.0.0.1", operator.ports["submission"], timeout=30) as client:
        client.starttls(context=client_context())
        client.login(login, password)
        return client.sendmail(sender, recipients, data)


def plain(client: smtplib.SMTP, login: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN (smtplib's login() tries every mechanism offered, each a failure of its own)."""
    return client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{login}\0{password}".encode()).decode())


class Pair:
    def __init__(self, root: Path, **delivery: object) -> None:
        self.a = RelayOperator(root / "a", A_DOMAIN, **delivery)
        self.b = RelayOperator(root / "b", B_DOMAIN)
        self.doctor = self.a.person("camille.lefevre", 1)
        self.nurse = self.a.person("alex.martin", 2, first="Alex", last="MARTIN")
        self.pharmacy = self.b.organization("pharmacie", 3)
        self.pharmacist = self.b.person("lea.durand", 4, first="Léa", last="DURAND")
        self.a.trust(self.b)
        self.b.trust(self.a)

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    operators = Pair(tmp_path_factory.mktemp("relay"))
    operators.a.start()
    operators.b.start()
    yield operators
    operators.stop()


def test_prescription_reaches_the_pharmacy_decrypted_with_the_prescriber_identity(pair: Pair) -> None:
    before = pair.b.messages(pair.pharmacy)
    mdn_before = pair.a.messages(pair.doctor)
    refused = submit(pair.a, pair.doctor, pair.doctor, [pair.pharmacy], prescription(pair.doctor, pair.pharmacy))
    assert refused == {}
    pair.b.wait_for(pair.pharmacy, len(before) + 1)
    (delivered,) = [m for m in pair.b.messages(pair.pharmacy) if m not in before]
    head = delivered.split(b"\r\n\r\n", 1)[0].decode()
    assert f"Authentication-Results: {pair.b.hostname};" in head
    assert f"smime=pass body.smime-identifier={pair.doctor}" in head
    assert 'policy.mssecure-name="Camille LEFÈVRE"' in head
    assert "policy.mssecure-national-id=" in head
    assert "dkim=pass header.d=chu-nord.mssante.test" in head
    assert "Subject: Ordonnance DUPONT Jean" in head
    assert b"Amoxicilline 1 g" in delivered  # decrypted: the prescription is readable
    assert b"application/pkcs7-mime" not in delivered
    assert b"multipart/signed" in delivered  # still signed: the pharmacy can verify it from the message alone
    # The doctor gets the "processed" MDN, signed by the pharmacy and verified by A.
    pair.a.wait_for(pair.doctor, len(mdn_before) + 1)
    (mdn,) = [m for m in pair.a.messages(pair.doctor) if m not in mdn_before]
    assert b"Disposition: automatic-action/MDN-sent-automatically; processed" in mdn
    assert f"smime=pass body.smime-identifier={pair.pharmacy}".encode() in mdn


def test_the_wire_copy_is_encrypted_and_signed_as_openssl_sees_it(pair: Pair, tmp_path: Path) -> None:
    """An end-to-end entry receives the message as it crossed the wire: openssl decrypts it with the recipient's
    key and verifies the doctor's signature against A's CA."""
    pair.b.ok("directory", "end-to-end", pair.pharmacist, "--on")
    before = len(pair.b.messages(pair.pharmacist))
    data = prescription(pair.doctor, pair.pharmacist, mdn=False)
    assert submit(pair.a, pair.doctor, pair.doctor, [pair.pharmacist], data) == {}
    wire = pair.b.wait_for(pair.pharmacist, before + 1)[-1]
    assert b"application/pkcs7-mime; smime-type=enveloped-data" in wire
    assert b"Amoxicilline" not in wire
    secret = tmp_path / "pw"
    secret.write_text("p12-password\n")
    p12 = tmp_path / "lea.p12"
    pair.b.ok("certs", "export-p12", pair.pharmacist, "--out", str(p12), "--password-file", str(secret))
    key = tmp_path / "lea.pem"
    subprocess.run(["openssl", "pkcs12", "-in", str(p12), "-nodes", "-passin", "pass:p12-password", "-out", str(key)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    (tmp_path / "wire.eml").write_bytes(wire)
    decrypted = subprocess.run(["openssl", "cms", "-decrypt", "-in", str(tmp_path / "wire.eml"), "-inkey", str(key),
                                "-recip", str(key)], capture_output=True, timeout=60)  # fmt: skip
    assert decrypted.returncode == 0, decrypted.stderr
    (tmp_path / "signed.eml").write_bytes(decrypted.stdout)
    ca = pair.a.directory / "data" / "pki" / "ca.crt"
    verified = subprocess.run(["openssl", "cms", "-verify", "-in", str(tmp_path / "signed.eml"), "-CAfile", str(ca),
                               "-purpose", "any"], capture_output=True, timeout=60)  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert b"Amoxicilline 1 g" in verified.stdout
    pair.b.ok("directory", "end-to-end", pair.pharmacist, "--off")


def test_local_recipient_gets_the_signed_message_without_leaving_the_operator(pair: Pair) -> None:
    before = len(pair.a.messages(pair.nurse))
    assert (
        submit(pair.a, pair.doctor, pair.doctor, [pair.nurse], prescription(pair.doctor, pair.nurse, mdn=False)) == {}
    )
    delivered = pair.a.wait_for(pair.nurse, before + 1)[-1]
    assert f"smime=pass body.smime-identifier={pair.doctor}".encode() in delivered
    assert b"dkim=none" in delivered


@pytest.mark.skipif(shutil.which("swaks") is None and not IN_CI, reason="swaks is not installed (the CI installs it)")
def test_swaks_submits_over_starttls_with_auth(pair: Pair) -> None:
    before = len(pair.b.messages(pair.pharmacy))
    data = prescription(pair.doctor, pair.pharmacy, subject="Compte rendu swaks", mdn=False)
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(pair.a.ports["submission"]), "--tls", "--auth", "PLAIN",
         "--auth-user", pair.doctor, "--auth-password", PASSWORD, "--from", pair.doctor, "--to", pair.pharmacy,
         "--data", "-", "--timeout", "30"],
        input=data, capture_output=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout.decode(errors="replace")[-2000:]
    assert b"250 2.0.0 queued as" in result.stdout
    pair.b.wait_for(pair.pharmacy, before + 1)
    assert any(b"Subject: Compte rendu swaks" in m for m in pair.b.messages(pair.pharmacy))


# Refusals at submission


def test_mail_before_starttls_is_refused(pair: Pair) -> None:
    with smtplib.SMTP("127.0.0.1", pair.a.ports["submission"], timeout=30) as client:
        client.ehlo()
        assert "auth" not in client.esmtp_features  # AUTH is only offered over TLS
        code, _message = client.docmd(
            "AUTH", "PLAIN " + base64.b64encode(f"\0{pair.doctor}\0{PASSWORD}".encode()).decode()
        )
        assert code == 530
        code, _ = client.mail(pair.doctor)
        assert code == 530


def test_mail_before_auth_is_refused(pair: Pair) -> None:
    with smtplib.SMTP("127.0.0.1", pair.a.ports["submission"], timeout=30) as client:
        client.starttls(context=client_context())
        client.ehlo()
        code, message = client.mail(pair.doctor)
        assert code == 530, message


def test_implicit_tls_submission_works_and_checks_the_password(pair: Pair) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", pair.a.ports["submissions"], timeout=30, context=client_context()) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(pair.nurse, "wrong password, clearly")
        assert refused.value.smtp_code == 535
        client.login(pair.nurse, PASSWORD)
        code, _ = client.mail(pair.nurse)
        assert code == 250


def test_failed_logins_are_rate_limited(tmp_path: Path) -> None:
    operator = RelayOperator(tmp_path / "a", A_DOMAIN)
    doctor = operator.person("camille.lefevre", 1)
    text = operator.config.read_text().replace("max_failures = 5", "max_failures = 3")
    operator.config.write_text(text)
    operator.start()
    try:
        codes = []
        with smtplib.SMTP("127.0.0.1", operator.ports["submission"], timeout=30) as client:
            client.starttls(context=client_context())
            client.ehlo()
            for _ in range(4):
                codes.append(plain(client, doctor, "not the password at all")[0])
            # Even the right password is refused while the address is blocked.
            blocked = plain(client, doctor, PASSWORD)
        assert codes == [535, 535, 535, 454]
        assert blocked[0] == 454
        log = operator.log.read_text()
        assert PASSWORD not in log
        assert "not the password at all" not in log
    finally:
        operator.stop()


@pytest.mark.parametrize(
    ("mail_from", "rcpt", "header_from", "expected"),
    [
        ("other", "pharmacy", "doctor", (550, b"5.7.1 sender address is not the authenticated address")),
        ("doctor", "unknown", "doctor", (550, b"5.1.1 recipient is not a certified health address")),
        ("doctor", "outside", "doctor", (550, b"5.7.1 recipient domain is not in the health trust space")),
        ("doctor", "pharmacy", "nurse", (550, b"5.7.1 header From is not the envelope sender")),
    ],
)
def test_submission_refusals_name_the_problem(
    pair: Pair, mail_from: str, rcpt: str, header_from: str, expected: tuple[int, bytes]
) -> None:
    names = {"doctor": pair.doctor, "nurse": pair.nurse, "other": pair.nurse, "pharmacy": pair.pharmacy,
             "unknown": f"nobody@{B_DOMAIN}", "outside": "someone@gmail.com"}  # fmt: skip
    with smtplib.SMTP("127.0.0.1", pair.a.ports["submission"], timeout=30) as client:
        client.starttls(context=client_context())
        client.login(pair.doctor, PASSWORD)
        code, message = client.mail(names[mail_from])
        if code != 250:
            assert (code, message) == expected
            return
        code, message = client.rcpt(names[rcpt])
        if code != 250:
            assert (code, message) == expected
            return
        code, message = client.data(prescription(names[header_from], names[rcpt], mdn=False))
        assert (code, message) == expected


def test_suspended_recipient_is_refused(pair: Pair) -> None:
    extra = pair.a.person("suspendu", 9, password=False)
    pair.a.ok("directory", "suspend", extra, "--reason", "départ")
    with smtplib.SMTP("127.0.0.1", pair.a.ports["submission"], timeout=30) as client:
        client.starttls(context=client_context())
        client.login(pair.doctor, PASSWORD)
        client.mail(pair.doctor)
        assert client.rcpt(extra) == (550, b"5.7.1 recipient is not an active certified health address")


@pytest.mark.parametrize(
    "payload",
    [
        b"Subject: x\r\n\r\nline\n.\nMAIL FROM:<evil@chu-nord.mssante.test>\r\n",  # bare LF smuggling
        b"Subject: x\r\n\r\nline\r.\rsecond\r\n",  # bare CR
    ],
)
def test_smuggling_payloads_are_refused(pair: Pair, payload: bytes) -> None:
    raw = socket.create_connection(("127.0.0.1", pair.a.ports["submissions"]), timeout=30)
    with raw, client_context().wrap_socket(raw) as tls:
        reader = tls.makefile("rb")

        def command(line: bytes) -> bytes:
            tls.sendall(line + b"\r\n")
            reply = b""
            while True:
                got = reader.readline()
                reply += got
                if got[3:4] != b"-":
                    return reply

        reader.readline()
        command(b"EHLO client.test")
        credentials = base64.b64encode(f"\0{pair.doctor}\0{PASSWORD}".encode())
        assert command(b"AUTH PLAIN " + credentials).startswith(b"235")
        assert command(f"MAIL FROM:<{pair.doctor}>".encode()).startswith(b"250")
        assert command(f"RCPT TO:<{pair.pharmacy}>".encode()).startswith(b"250")
        assert command(b"DATA").startswith(b"354")
        head = f"From: {pair.doctor}\r\nTo: {pair.pharmacy}\r\n".encode()
        reply = command(head + payload + b".")
        assert reply.startswith(b"550 5.6.11"), reply


def test_oversize_message_is_refused(pair: Pair) -> None:
    with smtplib.SMTP("127.0.0.1", pair.a.ports["submission"], timeout=30) as client:
        client.starttls(context=client_context())
        client.login(pair.doctor, PASSWORD)
        assert "size" in client.esmtp_features
        code, message = client.mail(pair.doctor, ["SIZE=999999999999"])
        assert code == 552, message


# Inbound from peers


def inbound_client(pair: Pair, certificate: tuple[Path, Path] | None) -> smtplib.SMTP:
    context = client_context()
    if certificate is not None:
        context.load_cert_chain(*certificate)
    client = smtplib.SMTP("127.0.0.1", pair.b.ports["inbound"], timeout=30)
    client.starttls(context=context)
    client.ehlo()
    return client


def test_inbound_requires_starttls(pair: Pair) -> None:
    with smtplib.SMTP("127.0.0.1", pair.b.ports["inbound"], timeout=30) as client:
        client.ehlo()
        assert "auth" not in client.esmtp_features
        code, _ = client.mail(pair.doctor)
        assert code == 530


def test_inbound_without_client_certificate_is_refused(pair: Pair) -> None:
    with inbound_client(pair, None) as client:
        assert client.mail(pair.doctor) == (550, b"5.7.1 a client certificate of a trusted operator is required")


def test_inbound_with_an_untrusted_certificate_is_refused(pair: Pair, tmp_path: Path) -> None:
    """A relay certificate of an operator nobody imported: TLS refuses it, or the relay does before MAIL."""
    stranger = RelayOperator(tmp_path / "c", "clinique-est.mssante.test")
    pki = stranger.directory / "data"
    key = tmp_path / "tls.pem"
    secret = (pki / "master.key").read_text().strip()
    subprocess.run(["openssl", "pkcs8", "-in", str(pki / "keys" / "tls.key"), "-passin", f"pass:{secret}",
                    "-out", str(key)], check=True, capture_output=True, timeout=60)  # fmt: skip
    try:
        with inbound_client(pair, (pki / "pki" / "tls.crt", key)) as client:
            code, message = client.mail("dr@clinique-est.mssante.test")
    except (ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionResetError):
        return  # refused during the handshake
    assert (code, message) == (550, b"5.7.1 a client certificate of a trusted operator is required") or code == 550


def test_inbound_from_a_peer_for_another_domain_is_refused(pair: Pair, tmp_path: Path) -> None:
    """A's relay certificate is trusted, but A may only send for A's domains, and only to B's addresses."""
    pki = pair.a.directory / "data"
    key = tmp_path / "tls.pem"
    secret = (pki / "master.key").read_text().strip()
    subprocess.run(["openssl", "pkcs8", "-in", str(pki / "keys" / "tls.key"), "-passin", f"pass:{secret}",
                    "-out", str(key)], check=True, capture_output=True, timeout=60)  # fmt: skip
    with inbound_client(pair, (pki / "pki" / "tls.crt", key)) as client:
        assert client.mail(pair.pharmacy)[0] == 550  # B's own address, not A's
        client.rset()
        assert client.mail(pair.doctor)[0] == 250
        assert client.rcpt(f"someone@{A_DOMAIN}") == (550, b"5.7.1 recipient is not served by this operator")
        assert client.rcpt(pair.pharmacy)[0] == 250
        # An unsigned, unencrypted message is refused even from a trusted peer.
        code, message = client.data(prescription(pair.doctor, pair.pharmacy, mdn=False))
        assert (code, message) == (550, b"5.7.1 message is not S/MIME encrypted")


# The queue: crash safety, retries, bounces


def test_kill_after_250_then_restart_delivers_exactly_once(tmp_path: Path) -> None:
    operators = Pair(tmp_path)
    operators.a.start()  # B is down: the message waits in A's queue
    try:
        data = prescription(operators.doctor, operators.pharmacy, mdn=False)
        assert submit(operators.a, operators.doctor, operators.doctor, [operators.pharmacy], data) == {}
        operators.a.kill()  # kill -9 right after 250
        listing = operators.a.ok("queue", "list", "--json").output
        assert operators.pharmacy in listing
        operators.b.start()
        operators.a.start()
        # Killed between its claim and its deferral, A's claim holds for its lease (a minute) before the restarted
        # relay takes the message again: wait longer than that.
        delivered = operators.b.wait_for(operators.pharmacy, 1, timeout=90)
        operators.a.ok("queue", "retry", "--all")
        import time

        time.sleep(3)  # room for a duplicate to show up, if the queue were to deliver twice
        assert len(operators.b.messages(operators.pharmacy)) == 1
        assert b"Amoxicilline" in delivered[0]
        assert "[]" in operators.a.ok("queue", "list", "--json").output
    finally:
        operators.stop()


def test_peer_down_is_deferred_then_delivered_when_it_comes_back(tmp_path: Path) -> None:
    operators = Pair(tmp_path)
    operators.a.start()
    try:
        data = prescription(operators.doctor, operators.pharmacy, mdn=False)
        assert submit(operators.a, operators.doctor, operators.doctor, [operators.pharmacy], data) == {}
        import time

        deadline = time.monotonic() + 30
        while '"deferred"' not in operators.a.ok("queue", "list", "--json").output:
            assert time.monotonic() < deadline, operators.a.log.read_text()
            time.sleep(0.2)
        shown = operators.a.ok("queue", "list", "--json").output
        assert "ConnectionRefusedError" in shown or "Connect call failed" in shown or "refused" in shown.lower()
        operators.b.start()
        operators.b.wait_for(operators.pharmacy, 1)
        assert operators.a.messages(operators.doctor) == []  # no DSN: it was delivered
    finally:
        operators.stop()


def test_peer_down_past_the_lifetime_bounces_exactly_one_signed_dsn(tmp_path: Path) -> None:
    operators = Pair(tmp_path, max_lifetime=3)
    operators.a.start()
    try:
        data = prescription(operators.doctor, operators.pharmacy)
        assert submit(operators.a, operators.doctor, operators.doctor, [operators.pharmacy], data) == {}
        dsn = operators.a.wait_for(operators.doctor, 1)[0]
        import time

        time.sleep(3)
        assert len(operators.a.messages(operators.doctor)) == 1
        assert b"multipart/report" in dsn
        assert b"report-type=delivery-status" in dsn
        assert b"Action: failed" in dsn
        assert b"Status: 4.4.7" in dsn
        assert f"smime=pass body.smime-identifier=mailer-daemon@{A_DOMAIN}".encode() in dsn
        assert b"Amoxicilline" not in dsn  # the original body never goes back in a DSN
        # Once B is back, nothing more reaches B or the doctor.
        operators.b.start()
        time.sleep(2)
        assert operators.b.messages(operators.pharmacy) == []
        assert len(operators.a.messages(operators.doctor)) == 1
    finally:
        operators.stop()


def test_final_delivery_requested_gives_exactly_one_dispatched_notice(pair: Pair) -> None:
    """Direct's delivery notification: with X-DIRECT-FINAL-DESTINATION-DELIVERY the sender gets "dispatched" once
    the message is in the mailbox, and the earlier "processed" is held back: one final notice per recipient."""
    import time

    before = pair.a.messages(pair.doctor)
    data = prescription(pair.doctor, pair.pharmacy, subject="Ordonnance suivi", final=True)
    assert submit(pair.a, pair.doctor, pair.doctor, [pair.pharmacy], data) == {}
    pair.a.wait_for(pair.doctor, len(before) + 1)
    time.sleep(3)  # the suppressed "processed" MDN has long arrived by now
    (notice,) = [m for m in pair.a.messages(pair.doctor) if m not in before]
    assert b"Disposition: automatic-action/MDN-sent-automatically; dispatched" in notice
    assert b"X-DIRECT-FINAL-DESTINATION-DELIVERY" in notice
    log = pair.a.log.read_text()
    assert "notice suppressed: processed" in log
    # The suppressed notice was still accepted (250): B does not keep offering it to A.
    deferred = json.loads(pair.b.ok("archive", "search", "--type", "deferred", "--json").output)
    assert [e for e in deferred if e["sender"] == pair.pharmacy] == [], deferred


def professional_pem(operator: RelayOperator, address: str, tmp_path: Path) -> Path:
    """The professional's certificate and key as PEM, as a mail client holds them after importing its PKCS#12."""
    secret = tmp_path / "p12.pw"
    secret.write_text("p12-password\n")
    p12 = tmp_path / f"{address}.p12"
    operator.ok("certs", "export-p12", address, "--out", str(p12), "--password-file", str(secret))
    pem = tmp_path / f"{address}.pem"
    subprocess.run(["openssl", "pkcs12", "-in", str(p12), "-nodes", "-passin", "pass:p12-password", "-out", str(pem)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return pem


def test_a_professional_certificate_authenticates_its_owner(pair: Pair, tmp_path: Path) -> None:
    pem = professional_pem(pair.a, pair.doctor, tmp_path)
    context = client_context()
    context.load_cert_chain(pem)
    with smtplib.SMTP("127.0.0.1", pair.a.ports["submission"], timeout=30) as client:
        client.starttls(context=context)
        client.ehlo()
        assert client.mail(pair.doctor)[0] == 250  # no AUTH: the certificate is the credential (SASL EXTERNAL-like)
        assert client.rcpt(pair.nurse)[0] == 250
        client.rset()
        assert client.mail(pair.nurse)[0] == 550  # but only for its own address


def test_required_client_certificate_mode(tmp_path: Path) -> None:
    operator = RelayOperator(tmp_path / "a", A_DOMAIN)
    doctor = operator.person("camille.lefevre", 1)
    nurse = operator.person("alex.martin", 2)
    text = operator.config.read_text().replace("require_client_cert = false", "require_client_cert = true")
    operator.config.write_text(text)
    pem = professional_pem(operator, doctor, tmp_path)
    operator.start()
    try:
        with smtplib.SMTP("127.0.0.1", operator.ports["submission"], timeout=30) as client:
            client.starttls(context=client_context())
            client.ehlo()
            assert plain(client, doctor, PASSWORD) == (
                530,
                b"5.7.14 a client certificate issued by this operator is required",
            )
            assert client.mail(doctor)[0] == 530
        context = client_context()
        context.load_cert_chain(pem)
        with smtplib.SMTP("127.0.0.1", operator.ports["submission"], timeout=30) as client:
            client.starttls(context=context)
            client.ehlo()
            assert client.mail(doctor)[0] == 530  # the certificate alone is not enough in this mode
            assert plain(client, nurse, PASSWORD) == (
                535,
                b"5.7.8 the client certificate does not belong to this login",
            )
            assert plain(client, doctor, PASSWORD)[0] == 235
            assert client.mail(doctor)[0] == 250
    finally:
        operator.stop()


def test_a_delegate_sends_as_the_organizational_mailbox(pair: Pair) -> None:
    service = pair.a.organization("cardiologie", 7, "Service de cardiologie", password=False)
    with smtplib.SMTP("127.0.0.1", pair.a.ports["submission"], timeout=30) as client:
        client.starttls(context=client_context())
        client.login(pair.nurse, PASSWORD)
        assert client.mail(service)[0] == 550  # not yet a delegate
    pair.a.ok("directory", "delegate", service, pair.nurse)
    pair.b.trust(pair.a)  # B learns A's new address (and its certificate) from A's next bundle
    before = pair.b.messages(pair.pharmacy)
    data = prescription(service, pair.pharmacy, mdn=False, subject="Compte rendu cardiologie")
    assert submit(pair.a, pair.nurse, service, [pair.pharmacy], data) == {}
    pair.b.wait_for(pair.pharmacy, len(before) + 1)
    (delivered,) = [m for m in pair.b.messages(pair.pharmacy) if m not in before]
    assert f"smime=pass body.smime-identifier={service}".encode() in delivered  # signed with the service's key


def test_revoked_recipient_is_refused(pair: Pair) -> None:
    gone = pair.a.person("parti", 8, password=False)
    pair.a.ok("directory", "revoke", gone, "--reason", "left the hospital")
    with smtplib.SMTP("127.0.0.1", pair.a.ports["submission"], timeout=30) as client:
        client.starttls(context=client_context())
        client.login(pair.doctor, PASSWORD)
        client.mail(pair.doctor)
        assert client.rcpt(gone) == (550, b"5.7.1 recipient is not an active certified health address")


def test_a_peer_professional_certificate_is_not_a_relay_certificate(pair: Pair, tmp_path: Path) -> None:
    """B's pharmacist holds a certificate from B's CA with clientAuth: it must not open A's inbound door."""
    pem = professional_pem(pair.b, pair.pharmacist, tmp_path)
    context = client_context()
    context.load_cert_chain(pem)
    with smtplib.SMTP("127.0.0.1", pair.a.ports["inbound"], timeout=30) as client:
        client.starttls(context=context)
        client.ehlo()
        assert client.mail(pair.pharmacist) == (
            550,
            b"5.7.1 the client certificate is not that of a trusted operator's relay",
        )


@pytest.mark.postgres
def test_two_relays_on_postgresql(tmp_path: Path, pg_cluster: PostgresCluster) -> None:
    """The same path with both operators' state in PostgreSQL (queue claims with FOR UPDATE SKIP LOCKED)."""
    with pg_cluster.database() as url_a, pg_cluster.database() as url_b:
        a = RelayOperator(tmp_path / "a", A_DOMAIN, database_url=url_a)
        b = RelayOperator(tmp_path / "b", B_DOMAIN, database_url=url_b)
        doctor = a.person("camille.lefevre", 1)
        pharmacy = b.organization("pharmacie", 3)
        a.trust(b)
        b.trust(a)
        a.start()
        b.start()
        try:
            assert submit(a, doctor, doctor, [pharmacy], prescription(doctor, pharmacy)) == {}
            (delivered,) = b.wait_for(pharmacy, 1)
            assert f"smime=pass body.smime-identifier={doctor}".encode() in delivered
            (mdn,) = a.wait_for(doctor, 1)
            assert b"MDN-sent-automatically; processed" in mdn
        finally:
            a.stop()
            b.stop()
