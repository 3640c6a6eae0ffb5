"""``mssecure send`` against real relays: a doctor at operator A sends to a pharmacy at operator B.

Both relays run ``mssecure serve`` as child processes (one pair for the module: they are slow to start). The
client verifies A's certificate against A's CA over real TLS, authenticates with a password file or a PKCS#12
client certificate, and what arrives in B's Maildir is checked with the XDM validator.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result

from mssecure.cli import main
from mssecure.xdm import find_xdm_parts, validate_package
from tests.support.relay import PASSWORD, RelayOperator, rpps
from tests.unit.xdm.samples import CDA, INS, PDF

A_DOMAIN = "chu-nord.mssante.test"
B_DOMAIN = "pharma-sud.mssante.test"
WRONG_PASSWORD = "not the doctor's password, clearly"


class Pair:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.a = RelayOperator(root / "a", A_DOMAIN)
        self.b = RelayOperator(root / "b", B_DOMAIN)
        self.doctor = self.a.person("camille.lefevre", 1)
        self.nurse = self.a.person("alex.martin", 2, first="Alex", last="MARTIN")
        self.service = self.a.organization("cardiologie", 5, "Service de cardiologie", password=False)
        self.a.ok("directory", "delegate", self.service, self.nurse)
        self.pharmacy = self.b.organization("pharmacie", 3)
        self.a.trust(self.b)
        self.b.trust(self.a)
        self.password_file = root / "doctor.password"
        self.password_file.write_text(PASSWORD + "\n", encoding="utf-8")
        self.pdf = root / "ordonnance.pdf"
        self.pdf.write_bytes(PDF)
        self.cda = root / "ordonnance.xml"
        self.cda.write_bytes(CDA)

    def send(self, *args: str, operator: RelayOperator | None = None) -> Result:
        """``mssecure send`` with A's configuration (the client on the operator's machine), no password in the
        environment unless a test puts one there."""
        operator = operator or self.a
        env: dict[str, str | None] = {**operator.env, "MSSECURE_PASSWORD": None}
        return operator.runner.invoke(main, ["send", *args], env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    operators = Pair(tmp_path_factory.mktemp("send"))
    operators.a.start()
    operators.b.start()
    yield operators
    operators.a.stop()
    operators.b.stop()


def new_messages(operator: RelayOperator, address: str, before: list[bytes], count: int = 1) -> list[bytes]:
    operator.wait_for(address, len(before) + count)
    return [m for m in operator.messages(address) if m not in before]


def test_an_xdm_prescription_reaches_the_pharmacy_and_the_doctor_gets_the_mdn(pair: Pair) -> None:
    before, mdn_before = pair.b.messages(pair.pharmacy), pair.a.messages(pair.doctor)
    result = pair.send(
        "--from", pair.doctor, "--to", pair.pharmacy, "--body", "Ordonnance de Mme Durand ci-jointe.",
        "--attach", str(pair.pdf), "--attach", str(pair.cda), "--xdm", "--patient-ins", INS,
        "--patient-name", "DURAND Anne", "--birth-date", "1984-12-01", "--patient-sex", "F",
        "--prescription-id", "RX-2026-000777", "--request-mdn", "--password-file", str(pair.password_file), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "sent"
    assert outcome["reply"]["code"] == 250
    assert outcome["queue_id"]
    assert f"queued as {outcome['queue_id']}" in outcome["reply"]["text"]
    assert (outcome["accepted"], outcome["refused"]) == ([pair.pharmacy], [])
    assert outcome["subject"] == "XDM/1.0/DDM+Ordonnance DURAND Anne 01/12/1984"
    assert outcome["subject_source"] == "xdm"
    assert outcome["xdm"]["prescription_id"] == "RX-2026-000777"
    assert outcome["xdm"]["headers"] == {"X-MSS-CODECDA": "57833-6", "X-MSS-INS": "O",
                                         "X-MSS-Prescription-Id": "RX-2026-000777"}  # fmt: skip
    assert outcome["server"] == f"127.0.0.1:{pair.a.ports['submission']}"  # from the configuration
    assert outcome["tls_name"] == pair.a.hostname

    (delivered,) = new_messages(pair.b, pair.pharmacy, before)
    head = delivered.split(b"\r\n\r\n", 1)[0].decode()
    assert f"Message-ID: {outcome['message_id']}" in head
    assert "Subject: XDM/1.0/DDM+Ordonnance DURAND Anne 01/12/1984" in head
    # The relay signs the message as it was submitted, wrapped in message/rfc822 (its outer header repeats only
    # the main fields): the X-MSS-* fields are in the signed message.
    assert b"\r\nX-MSS-Prescription-Id: RX-2026-000777\r\nContent-Type: multipart/mixed" in delivered
    assert f"smime=pass body.smime-identifier={pair.doctor}" in head  # signed at A, verified at B
    (part,) = find_xdm_parts(delivered)
    package = validate_package(part.data)
    assert package.prescription_id == "RX-2026-000777"
    assert package.author_rpps == rpps(1)  # the author from the doctor's directory entry
    assert [d.content for d in package.documents] == [PDF, CDA]
    assert PDF.split(b"\n")[0] not in delivered  # the PDF travels base64-encoded, in the zip and beside it

    (mdn,) = new_messages(pair.a, pair.doctor, mdn_before)
    assert b"Disposition: automatic-action/MDN-sent-automatically; processed" in mdn
    assert outcome["message_id"].encode() in mdn


def test_the_display_name_comes_from_the_directory_and_text_output_names_the_queue_id(pair: Pair) -> None:
    before = pair.b.messages(pair.pharmacy)
    result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "Compte rendu",
                       "--body", "Résultats normaux.", "--password-file", str(pair.password_file))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "250 2.0.0 queued as " in result.stdout
    assert f"Accepted: {pair.pharmacy}" in result.stdout
    (delivered,) = new_messages(pair.b, pair.pharmacy, before)
    assert f"From: Camille =?utf-8?q?LEF=C3=88VRE?= <{pair.doctor}>".encode() in delivered


def test_a_wrong_password_is_refused_with_the_servers_reply_and_never_shown(pair: Pair) -> None:
    wrong = pair.root / "wrong.password"
    wrong.write_text(WRONG_PASSWORD + "\n", encoding="utf-8")
    result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "x", "--body", "x",
                       "--password-file", str(wrong), "--json")  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "mssecure: error: the server refused AUTH: 535 5.7.8" in result.stderr
    refusal = json.loads(result.stdout)
    assert (refusal["status"], refusal["stage"], refusal["reply"]["code"]) == ("refused", "AUTH", 535)
    assert refusal["message_id"].endswith(f"@{A_DOMAIN}>")
    assert WRONG_PASSWORD not in result.output
    assert WRONG_PASSWORD not in pair.a.log.read_text()


def test_the_password_from_the_environment_works(pair: Pair) -> None:
    env: dict[str, str | None] = {**pair.a.env, "MSSECURE_PASSWORD": PASSWORD}
    result = pair.a.runner.invoke(main, ["send", "--from", pair.doctor, "--to", pair.nurse, "--subject", "Env",
                                         "--body", "x"], env=env, catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output


def test_an_unknown_attachment_is_an_input_error_and_nothing_is_sent(pair: Pair) -> None:
    missing = pair.root / "absent.pdf"
    result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "x", "--attach", str(missing),
                       "--password-file", str(pair.password_file))  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.strip() == f"mssecure: error: attachment {missing}: no such file"
    assert "Traceback" not in result.output


def test_a_directory_or_fifo_attachment_is_refused_without_hanging(pair: Pair) -> None:
    fifo = pair.root / "pipe.pdf"
    os.mkfifo(fifo)
    result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "x", "--attach", str(fifo),
                       "--password-file", str(pair.password_file))  # fmt: skip
    assert result.exit_code == 2
    assert "is not a regular file" in result.stderr
    result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "x", "--attach", str(pair.root),
                       "--password-file", str(pair.password_file))  # fmt: skip
    assert result.exit_code == 2
    assert f"attachment {pair.root} is not a regular file" in result.stderr


def test_some_recipients_refused_exit_1_and_the_others_get_the_message(pair: Pair) -> None:
    before = pair.a.messages(pair.nurse)
    unknown = f"inconnu@{A_DOMAIN}"
    result = pair.send("--from", pair.doctor, "--to", pair.nurse, "--cc", unknown, "--subject", "Partiel",
                       "--body", "x", "--password-file", str(pair.password_file), "--json")  # fmt: skip
    assert result.exit_code == 1, result.output
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "partial"
    assert outcome["accepted"] == [pair.nurse]
    assert [(r["address"], r["code"]) for r in outcome["refused"]] == [(unknown, 550)]
    assert unknown in result.stderr
    new_messages(pair.a, pair.nurse, before)


def test_a_pkcs12_client_certificate_submits_over_implicit_tls(pair: Pair) -> None:
    secret = pair.root / "p12.password"
    secret.write_text("p12-password\n", encoding="utf-8")
    p12 = pair.root / "camille.p12"
    pair.a.ok("certs", "export-p12", pair.doctor, "--out", str(p12), "--password-file", str(secret))
    before = pair.b.messages(pair.pharmacy)
    result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "Par certificat", "--body", "x",
                       "--p12", str(p12), "--p12-password-file", str(secret), "--implicit-tls", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["server"] == f"127.0.0.1:{pair.a.ports['submissions']}"
    (delivered,) = new_messages(pair.b, pair.pharmacy, before)
    assert b"Subject: Par certificat" in delivered
    wrong = pair.root / "p12.wrong"
    wrong.write_text("not-the-p12-password\n", encoding="utf-8")
    result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "x", "--body", "x",
                       "--p12", str(p12), "--p12-password-file", str(wrong))  # fmt: skip
    assert result.exit_code == 2
    assert f"cannot open {p12}: wrong password, or not a PKCS#12 file" in result.stderr


def test_a_delegate_sends_an_xdm_package_as_the_service_with_their_own_rpps(pair: Pair) -> None:
    before = pair.b.messages(pair.pharmacy)
    nurse_password = pair.password_file  # every test entry has the same password
    refused = pair.send("--from", pair.service, "--to", pair.pharmacy, "--attach", str(pair.pdf), "--xdm",
                        "--patient-ins", INS, "--patient-last", "Durand", "--patient-first", "Anne",
                        "--birth-date", "1984-12-01", "--password-file", str(nurse_password))  # fmt: skip
    assert refused.exit_code == 2
    assert "--xdm needs an author identified by RPPS" in refused.stderr
    assert "--login" in refused.stderr
    result = pair.send("--from", pair.service, "--login", pair.nurse, "--to", pair.pharmacy, "--attach",
                       str(pair.pdf), "--xdm", "--xdm-only", "--patient-ins", INS, "--patient-last", "Durand",
                       "--patient-first", "Anne", "--birth-date", "1984-12-01", "--label", "Compte rendu",
                       "--password-file", str(nurse_password))  # fmt: skip
    assert result.exit_code == 0, result.output
    (delivered,) = new_messages(pair.b, pair.pharmacy, before)
    (part,) = find_xdm_parts(delivered)
    assert validate_package(part.data).author_rpps == rpps(2)  # the nurse, who wrote it
    assert b"Subject: XDM/1.0/DDM+Compte rendu DURAND Anne 01/12/1984" in delivered


def test_the_server_certificate_must_name_the_relay(pair: Pair) -> None:
    result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "x", "--body", "x",
                       "--server", f"127.0.0.1:{pair.a.ports['submission']}", "--tls-name", "mail.ailleurs.test",
                       "--password-file", str(pair.password_file))  # fmt: skip
    assert result.exit_code == 2
    assert "cannot be trusted for mail.ailleurs.test" in result.stderr


def test_another_operators_ca_does_not_verify_the_relay(pair: Pair) -> None:
    """A client on another machine: no configuration, --server, --ca and --tls-name given. B's CA is not A's."""
    result = pair.a.runner.invoke(
        main,
        ["send", "--from", pair.doctor, "--to", pair.pharmacy, "--subject", "x", "--body", "x",
         "--server", f"127.0.0.1:{pair.a.ports['submission']}", "--tls-name", pair.a.hostname,
         "--ca", str(pair.b.directory / "data" / "pki" / "ca.crt"), "--password-file", str(pair.password_file)],
        env={"MSSECURE_CONFIG": None, "MSSECURE_PASSWORD": None},
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "cannot be trusted" in result.stderr


def test_a_client_without_configuration_sends_with_ca_and_server(pair: Pair) -> None:
    before = pair.a.messages(pair.nurse)
    result = pair.a.runner.invoke(
        main,
        ["send", "--from", pair.doctor, "--to", pair.nurse, "--subject", "Depuis un autre poste", "--body", "x",
         "--server", f"127.0.0.1:{pair.a.ports['submission']}", "--tls-name", pair.a.hostname,
         "--ca", str(pair.a.directory / "data" / "pki" / "ca.crt"), "--password-file", str(pair.password_file)],
        env={"MSSECURE_CONFIG": None, "MSSECURE_PASSWORD": None},
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (delivered,) = new_messages(pair.a, pair.nurse, before)
    assert b"Subject: Depuis un autre poste" in delivered


def test_nothing_listening_is_a_connection_error(pair: Pair) -> None:
    from tests.support.relay import free_port

    result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "x", "--body", "x",
                       "--server", f"127.0.0.1:{free_port()}", "--password-file", str(pair.password_file))  # fmt: skip
    assert result.exit_code == 2
    assert "cannot connect to 127.0.0.1:" in result.stderr


def test_dry_run_writes_the_message_and_sends_nothing(pair: Pair) -> None:
    out = pair.root / "dry-run.eml"
    result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "Essai", "--body", "x",
                       "--attach", str(pair.pdf), "--request-mdn", "--final-delivery", "--dry-run", "--out", str(out),
                       "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "dry-run"
    data = out.read_bytes()
    assert len(data) == outcome["size"]
    assert out.stat().st_mode & 0o777 == 0o600
    assert b"Disposition-Notification-Options:" in data
    again = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "Essai", "--body", "x",
                      "--dry-run", "--out", str(out))  # fmt: skip
    assert again.exit_code == 2
    assert "already exists" in again.stderr
    assert out.read_bytes() == data


def test_xdm_options_are_checked_before_anything_else(pair: Pair) -> None:
    result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "x", "--body", "x",
                       "--patient-ins", INS)  # fmt: skip
    assert result.exit_code == 2
    assert "--patient-ins only make(s) sense with --xdm" in result.output
    result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--attach", str(pair.pdf), "--xdm",
                       "--patient-ins", "123", "--patient-name", "DURAND Anne", "--birth-date", "1984-12-01",
                       "--password-file", str(pair.password_file))  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.startswith("mssecure: error: bad INS")


def test_a_message_over_the_relay_limit_is_refused_before_connecting(pair: Pair, tmp_path: Path) -> None:
    small = pair.a.directory / "small-limit.toml"  # beside A's: the same data directory and database
    config = pair.a.config.read_text(encoding="utf-8")
    small.write_text(config.replace("max_message_size = 52428800", "max_message_size = 2000"), encoding="utf-8")
    big = tmp_path / "scanner.pdf"
    big.write_bytes(PDF + b"\x00" * 1500)
    result = pair.a.runner.invoke(
        main,
        ["--config", str(small), "send", "--from", pair.doctor, "--to", pair.pharmacy, "--subject", "x",
         "--attach", str(big), "--server", "127.0.0.1:1"],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "over the relay's limit of 2000 bytes (smtp.max_message_size)" in result.stderr


def test_the_strong_mode_needs_the_certificate_and_the_password(tmp_path: Path) -> None:
    """``auth.require_client_cert``: the PKCS#12 alone is refused at MAIL FROM, with the password it submits."""
    operator = RelayOperator(tmp_path / "strong", A_DOMAIN)
    doctor = operator.person("camille.lefevre", 1)
    nurse = operator.person("alex.martin", 2, first="Alex", last="MARTIN")
    text = operator.config.read_text(encoding="utf-8")
    operator.config.write_text(text.replace("require_client_cert = false", "require_client_cert = true"))
    secret = tmp_path / "p12.password"
    secret.write_text("p12-password\n", encoding="utf-8")
    p12 = tmp_path / "camille.p12"
    operator.ok("certs", "export-p12", doctor, "--out", str(p12), "--password-file", str(secret))
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n", encoding="utf-8")
    operator.start()
    try:
        args = ["send", "--from", doctor, "--to", nurse, "--subject", "Mode fort", "--body", "x", "--p12", str(p12),
                "--p12-password-file", str(secret)]  # fmt: skip
        env: dict[str, str | None] = {**operator.env, "MSSECURE_PASSWORD": None}
        alone = operator.runner.invoke(main, args, env=env, catch_exceptions=False)
        assert alone.exit_code == 1, alone.output
        assert "the server refused MAIL FROM: 530" in alone.stderr
        both = operator.runner.invoke(main, [*args, "--password-file", str(password)], env=env, catch_exceptions=False)
        assert both.exit_code == 0, both.output
        assert b"Subject: Mode fort" in operator.wait_for(nurse)[-1]
    finally:
        operator.stop()


class _RecordingHandler:
    """An aiosmtpd handler that keeps what it is given: a server without STARTTLS must never receive it."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    async def handle_MAIL(
        self, server: object, session: object, envelope: object, address: str, options: list[str]
    ) -> str:
        self.commands.append(f"MAIL FROM:{address}")
        return "250 OK"


def test_a_server_without_starttls_gets_neither_the_password_nor_the_message(pair: Pair) -> None:
    from aiosmtpd.controller import Controller

    from tests.support.relay import free_port

    handler = _RecordingHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, auth_require_tls=False)
    controller.start()
    try:
        result = pair.send("--from", pair.doctor, "--to", pair.pharmacy, "--subject", "x", "--body", "x",
                           "--server", f"127.0.0.1:{port}", "--password-file", str(pair.password_file))  # fmt: skip
    finally:
        controller.stop()
    assert result.exit_code == 2, result.output
    assert f"127.0.0.1:{port} does not offer STARTTLS: refusing to submit in clear" in result.stderr
    assert handler.commands == []
