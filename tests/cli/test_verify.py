"""``mssecure verify`` as pharmacy software runs it: on messages signed with the operator's real keys, and on a
prescription with an XDM package that a real relay delivered into a pharmacy's Maildir."""

from __future__ import annotations

import json
import smtplib
import subprocess
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from mssecure.cli import main
from mssecure.config import load_config
from mssecure.crypto.authority import OperatorMaterial
from mssecure.crypto.dkim import dkim_sign
from mssecure.smtp import mime
from mssecure.xdm import Author, Document, Patient, build_package, mss_headers, xdm_subject
from tests.cli.test_certs import DOCTOR, FINESS, PHARMACY, RPPS
from tests.cli.test_cli import assert_one_line_error
from tests.conftest import Operator
from tests.integration.test_relay import client_context
from tests.support.relay import PASSWORD, RelayOperator, rpps
from tests.unit.xdm.samples import INS, PDF

HOSTNAME = "mail.chu-nord.mssante.test"  # the operator fixture's relay: the authserv-id verify believes
PATIENT = Patient("Durand", "Anne", date(1984, 12, 1), sex="F", ins=INS)
PRESCRIPTION_ID = "RX-2026-000123"


def prescription(
    sender: str, recipient: str, author_rpps: str, *, xdm: bytes | None = None, subject: str | None = None,
    xdm_name: str = "IHE_XDM.ZIP",
) -> bytes:  # fmt: skip
    """A prescription as ``mssecure send --xdm`` composes it: DDM subject, X-MSS fields, PDF and IHE_XDM.ZIP."""
    documents = [Document("ordonnance.pdf", PDF, "application/pdf")]
    if xdm is None:
        xdm = build_package(documents, author=Author("LEFÈVRE", "Camille", author_rpps), patient=PATIENT,
                            title="Ordonnance", now=datetime.now(UTC), prescription_id=PRESCRIPTION_ID)  # fmt: skip
    message = EmailMessage(policy=SMTP)
    message["From"] = f"Dr Camille LEFÈVRE <{sender}>"
    message["To"] = recipient
    message["Subject"] = subject or xdm_subject("Ordonnance", PATIENT)
    message["Message-ID"] = "<rx-2026-000123@chu-nord.mssante.test>"
    for name, value in mss_headers(documents, PATIENT, PRESCRIPTION_ID):
        message[name] = value
    message.set_content("Ordonnance ci-jointe.\n")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="ordonnance.pdf")
    message.add_attachment(xdm, maintype="application", subtype="zip", filename=xdm_name)
    return message.as_bytes()


@pytest.fixture
def op(operator: Operator) -> Operator:
    """The operator fixture with a doctor (RPPS, profession médecin) and a pharmacy, both with certificates."""
    for args in (
        ["directory", "add", DOCTOR, "--kind", "personal", "--rpps", RPPS, "--first-name", "Camille", "--last-name",
         "LEFÈVRE", "--organization", "CHU Nord", "--profession", "10"],
        ["directory", "add", PHARMACY, "--kind", "organizational", "--finess", FINESS, "--organization", "Pharmacie"],
        ["certs", "issue", DOCTOR],
    ):  # fmt: skip
        result = operator.run(*args)
        assert result.exit_code == 0, result.output
    return operator


def sign(op: Operator, tmp_path: Path, message: bytes, name: str = "signed.eml") -> Path:
    source, target = tmp_path / f"{name}.in", tmp_path / name
    source.write_bytes(message)
    result = op.run("smime", "sign", "--as", DOCTOR, str(source), str(target))
    assert result.exit_code == 0, result.output
    return target


def as_delivered(path: Path, *fields: str) -> Path:
    """The file as our relay delivers it: its own verdict on top (plus ``fields``, e.g. a forged verdict)."""
    ours = f"Authentication-Results: {HOSTNAME};\r\n\tsmime=pass body.smime-identifier={DOCTOR};\r\n\tdkim=none"
    target = path.with_suffix(".delivered.eml")
    target.write_bytes(mime.prepend(path.read_bytes(), *fields, f"Return-Path: <{DOCTOR}>", ours))
    return target


def verify(op: Operator, *args: str, input: str | None = None) -> tuple[int, str, str]:
    """``mssecure verify ARGS`` for the operator: (exit status, standard output, standard error)."""
    env = {"MSSECURE_CONFIG": str(op.config), "MSSECURE_ACTOR": "test-operator"}
    result = op.runner.invoke(main, ["verify", *args], env=env, input=input, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_a_valid_prescription_exits_0_and_shows_the_verified_prescriber(op: Operator, tmp_path: Path) -> None:
    path = sign(op, tmp_path, prescription(DOCTOR, PHARMACY, RPPS))
    code, out, err = verify(op, str(path))
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[-1].startswith("OK: ")
    assert f"Signer        Camille LEFÈVRE, RPPS {RPPS}, national id 8{RPPS}, Médecin, CHU Nord; directory entry " \
           f"{DOCTOR} is active" in lines  # fmt: skip
    assert "  at signing  valid" in lines
    assert "  now         valid" in lines
    assert "DKIM          none, no DKIM signature" in lines
    assert any(line.startswith("XDM           IHE_XDM.ZIP: valid, 1 document(s)") for line in lines)
    assert any("IHE_XDM/SUBSET01/DOC0001.PDF  ordonnance.pdf  application/pdf" in line and "SHA-256 ok" in line
               for line in lines)  # fmt: skip
    assert f"Prescription  {PRESCRIPTION_ID} (XDM metadata and header)" in lines
    assert err == ""
    assert openssl_verifies(op, path)  # an independent implementation agrees


def openssl_verifies(op: Operator, path: Path) -> bool:
    ca = op.directory / "data" / "pki" / "ca.crt"
    judged = subprocess.run(["openssl", "cms", "-verify", "-in", str(path), "-CAfile", str(ca), "-purpose", "any",
                             "-out", "/dev/null"], capture_output=True, timeout=60)  # fmt: skip
    return judged.returncode == 0


def test_json_gives_the_same_facts(op: Operator, tmp_path: Path) -> None:
    path = as_delivered(sign(op, tmp_path, prescription(DOCTOR, PHARMACY, RPPS)))
    code, out, _ = verify(op, "--json", str(path))
    assert code == 0, out
    report = json.loads(out)
    assert set(report) == {"result", "failures", "message", "signature", "signer", "dkim", "authentication_results",
                           "ignored_authentication_results", "xdm", "prescription_id"}  # fmt: skip
    assert report["result"] == "ok"
    assert report["failures"] == []
    assert report["message"]["source"] == "mailbox"
    assert report["signer"]["name"] == "Camille LEFÈVRE"
    assert report["signer"]["identifier"] == RPPS
    assert report["signer"]["profession"] == "Médecin"
    assert report["signature"]["certificate"]["status_at_signing"] == "valid"
    assert report["signature"]["certificate"]["status_now"] == "valid"
    assert report["dkim"]["result"] == "none"
    assert report["dkim"]["source"] == "authentication-results"
    assert report["authentication_results"]["authserv_id"] == HOSTNAME
    (document,) = report["xdm"][0]["documents"]
    assert document["name"] == "ordonnance.pdf"
    assert document["size"] == len(PDF)
    assert report["prescription_id"]["value"] == PRESCRIPTION_ID


def test_standard_input(op: Operator, tmp_path: Path) -> None:
    path = sign(op, tmp_path, prescription(DOCTOR, PHARMACY, RPPS))
    code, out, _ = verify(op, "-", input=path.read_bytes().decode())
    assert code == 0, out


def test_a_tampered_body_exits_1(op: Operator, tmp_path: Path) -> None:
    path = sign(op, tmp_path, prescription(DOCTOR, PHARMACY, RPPS))
    path.write_bytes(path.read_bytes().replace(b"Ordonnance ci-jointe.", b"Ordonnance ci-jointe!"))
    code, out, _ = verify(op, str(path))
    assert code == 1
    assert out.splitlines()[-1].startswith("FAILED: signature: ")
    assert "message digest" in out.splitlines()[-1]
    assert not openssl_verifies(op, path)  # OpenSSL agrees, independently


def test_a_signature_that_cannot_be_parsed_exits_1(op: Operator, tmp_path: Path) -> None:
    """A message that claims to be signed but whose signature is garbage is a failed check, not unusable input."""
    path = sign(op, tmp_path, prescription(DOCTOR, PHARMACY, RPPS))
    head, _, rest = path.read_bytes().partition(b'filename="smime.p7s"\r\n\r\n')
    path.write_bytes(head + b'filename="smime.p7s"\r\n\r\nMAMCAQA=\r\n' + rest[rest.index(b"\r\n--") :])
    code, out, err = verify(op, str(path))
    assert code == 1, out + err
    assert "Signer        - (no signer could be verified)" in out.splitlines()
    assert out.splitlines()[-1].startswith("FAILED: signature: the signature cannot be checked")


def test_a_forged_verdict_from_another_authserv_id_is_ignored(op: Operator, tmp_path: Path) -> None:
    forged = "Authentication-Results: mail.evil.test; dkim=fail header.d=chu-nord.mssante.test"
    path = as_delivered(sign(op, tmp_path, prescription(DOCTOR, PHARMACY, RPPS)), forged)
    code, out, _ = verify(op, str(path))
    assert code == 0, out
    assert f"DKIM          none, from the Authentication-Results of {HOSTNAME}" in out.splitlines()
    assert "  ignored     Authentication-Results from mail.evil.test (not this operator's relay)" in out.splitlines()


def test_a_raw_message_dkim_signed_by_a_known_key_passes(op: Operator, tmp_path: Path) -> None:
    """DKIM keys come from the trust bundles and the operator's own record: here ours, read from the data dir."""
    material = OperatorMaterial(load_config(op.config))
    path = sign(op, tmp_path, prescription(DOCTOR, PHARMACY, RPPS))
    dkim_signed = dkim_sign(path.read_bytes(), domain="chu-nord.mssante.test", selector="mssecure",
                            key=material.keystore.load("dkim"))  # fmt: skip
    path.write_bytes(dkim_signed)
    code, out, _ = verify(op, str(path))
    assert code == 0, out
    assert "DKIM          pass (d=chu-nord.mssante.test, s=mssecure), checked here with the trust space's keys" in out
    path.write_bytes(dkim_signed.replace(b"To: pharmacie@", b"To: autre@", 1))
    code, out, _ = verify(op, str(path))
    assert code == 1
    assert "DKIM: fail" in out.splitlines()[-1]


def test_a_revoked_signer_exits_1_with_the_reason(op: Operator, tmp_path: Path) -> None:
    path = sign(op, tmp_path, prescription(DOCTOR, PHARMACY, RPPS))
    assert op.run("certs", "revoke", DOCTOR, "--reason", "affiliationChanged").exit_code == 0
    code, out, _ = verify(op, str(path))
    assert code == 1
    assert "  now         revoked" in out.splitlines()
    assert "now: certificate revoked (affiliationChanged)" in out.splitlines()[-1]


def test_a_suspended_prescriber_exits_1(op: Operator, tmp_path: Path) -> None:
    path = sign(op, tmp_path, prescription(DOCTOR, PHARMACY, RPPS))
    assert op.run("directory", "suspend", DOCTOR, "--reason", "contrôle").exit_code == 0
    code, out, _ = verify(op, str(path))
    assert code == 1
    assert "  now         suspended" in out.splitlines()
    assert f"the signer's directory entry {DOCTOR} is suspended" in out.splitlines()[-1]


def test_a_broken_xdm_hash_exits_1(op: Operator, tmp_path: Path) -> None:
    from tests.unit.xdm.samples import rezip

    good = build_package([Document("ordonnance.pdf", PDF, "application/pdf")],
                         author=Author("LEFÈVRE", "Camille", RPPS), patient=PATIENT, title="Ordonnance",
                         now=datetime.now(UTC), prescription_id=PRESCRIPTION_ID)  # fmt: skip
    broken = rezip(good, replace={"IHE_XDM/SUBSET01/DOC0001.PDF": PDF.replace(b"Catalog", b"Katalog")})
    path = sign(op, tmp_path, prescription(DOCTOR, PHARMACY, RPPS, xdm=broken))
    code, out, _ = verify(op, str(path))
    assert code == 1
    assert "XDM           IHE_XDM.ZIP: INVALID (document 'DOC0001.PDF': SHA-1 hash mismatch)" in out.splitlines()
    assert "XDM package IHE_XDM.ZIP: document 'DOC0001.PDF': SHA-1 hash mismatch" in out.splitlines()[-1]


def test_what_the_sender_wrote_is_escaped_on_the_terminal(op: Operator, tmp_path: Path) -> None:
    subject = "Ordonnance \x1b[2J\x1b[31mOK\u202e"
    path = sign(op, tmp_path, prescription(DOCTOR, PHARMACY, RPPS, subject=subject, xdm_name="IHE\x07\u202e.ZIP"))
    code, out, _ = verify(op, str(path))
    assert code == 0, out
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert "\x07" not in out
    assert "  Subject     Ordonnance \\x1b[2J\\x1b[31mOK\\u202e" in out.splitlines()
    assert any(line.startswith("XDM           IHE\\x07\\u202e.ZIP: valid") for line in out.splitlines())
    code, out, _ = verify(op, "--json", str(path))
    assert "\u202e" not in out
    assert "\x1b" not in out
    assert json.loads(out)["message"]["subject"] == subject


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"From: a@b.test\r\nSubject: plain\r\n\r\nnot signed\r\n", "not S/MIME signed"),
        (bytes(range(256)) * 8, "not a mail message"),
        (b"", "not a mail message"),
    ],
    ids=["unsigned", "garbage", "empty"],
)
def test_unusable_input_exits_2_in_one_line(op: Operator, tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "input.eml"
    path.write_bytes(content)
    code, out, err = verify(op, str(path))
    assert code == 2
    assert out == ""
    assert_one_line_error(err, fragment)
    code, out, err = verify(op, "--json", str(path))
    assert code == 2
    assert json.loads(out)["result"] == "unusable"


def test_an_encrypted_message_must_be_decrypted_first(op: Operator, tmp_path: Path) -> None:
    plain = tmp_path / "plain.eml"
    plain.write_bytes(prescription(DOCTOR, PHARMACY, RPPS))
    encrypted = tmp_path / "encrypted.eml"
    assert op.run("smime", "encrypt", "--to", DOCTOR, str(plain), str(encrypted)).exit_code == 0
    code, _, err = verify(op, str(encrypted))
    assert code == 2
    assert_one_line_error(err, "the message is encrypted")


def test_unreadable_and_too_large_exit_2(op: Operator, tmp_path: Path) -> None:
    code, _, err = verify(op, str(tmp_path / "missing.eml"))
    assert code == 2
    assert_one_line_error(err, "cannot read", "missing.eml", "No such file or directory")
    code, _, err = verify(op, str(tmp_path))
    assert code == 2
    assert_one_line_error(err, "cannot read")
    large = tmp_path / "large.eml"
    with large.open("wb") as stream:
        stream.truncate(64 * 1024 * 1024 + 1)
    code, _, err = verify(op, str(large))
    assert code == 2
    assert_one_line_error(err, "larger than 64 MiB")


# -- the real path: a relay delivers the prescription into the pharmacy's Maildir


def test_a_prescription_delivered_by_a_real_relay_verifies_and_a_later_revocation_fails_it(tmp_path: Path) -> None:
    a = RelayOperator(tmp_path / "a", "chu-nord.mssante.test")
    b = RelayOperator(tmp_path / "b", "pharma-sud.mssante.test")
    doctor = a.person("camille.lefevre", 1)
    pharmacy = b.organization("pharmacie", 3)
    other_pharmacy = b.organization("pharmacie-gare", 5, "Pharmacie de la Gare")
    a.trust(b)
    b.trust(a)
    try:
        a.start()
        b.start()
        with smtplib.SMTP("127.0.0.1", a.ports["submission"], timeout=30) as client:
            client.starttls(context=client_context())
            client.login(doctor, PASSWORD)
            assert client.sendmail(doctor, [pharmacy], prescription(doctor, pharmacy, rpps(1))) == {}
            b.wait_for(pharmacy)
            # the same prescription, later, to another pharmacy: B's relay flags it
            assert client.sendmail(doctor, [other_pharmacy], prescription(doctor, other_pharmacy, rpps(1))) == {}
            b.wait_for(other_pharmacy)
    finally:
        a.stop()
        b.stop()
    (path,) = [*(b.maildir(pharmacy) / "new").iterdir(), *(b.maildir(pharmacy) / "cur").iterdir()]
    (second,) = [*(b.maildir(other_pharmacy) / "new").iterdir(), *(b.maildir(other_pharmacy) / "cur").iterdir()]

    result = b.run("verify", str(path))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "Message       <rx-2026-000123@chu-nord.mssante.test> (delivered by this operator)" in lines
    assert f"Signer        Camille LEFÈVRE, RPPS {rpps(1)}, national id 8{rpps(1)}, Hôpital chu-nord.mssante.test; " \
           f"directory entry {doctor} is active" in lines  # fmt: skip
    assert f"DKIM          pass (d=chu-nord.mssante.test, s=mssecure), from the Authentication-Results of " \
           f"{b.hostname}" in lines  # fmt: skip
    assert f"Prescription  {PRESCRIPTION_ID} (XDM metadata and header)" in lines

    # The second pharmacy is told the prescription already went elsewhere.
    result = b.run("verify", str(second))
    assert result.exit_code == 1, result.output
    assert f"  DUPLICATE   already delivered to another mailbox: {PRESCRIPTION_ID}; first delivered " in result.stdout
    assert "the prescription was already delivered to another mailbox" in result.stdout.splitlines()[-1]

    # A forged verdict added to the file is listed as ignored and changes nothing.
    forged = path.with_name("forged.eml")
    forged.write_bytes(mime.prepend(path.read_bytes(), "Authentication-Results: mail.evil.test; dkim=fail"))
    result = b.run("verify", "--json", str(forged))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ignored_authentication_results"] == ["mail.evil.test"]
    assert report["dkim"]["result"] == "pass"

    # The prescriber's operator revokes the certificate; the pharmacy's operator learns it from the next bundle.
    a.ok("certs", "revoke", doctor, "--reason", "keyCompromise")
    b.trust(a)
    result = b.run("verify", str(path))
    assert result.exit_code == 1, result.output
    assert "FAILED: " in result.stdout.splitlines()[-1]
    assert "certificate revoked (keyCompromise)" in result.stdout.splitlines()[-1]
