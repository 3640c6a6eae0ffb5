"""Two operators of the trust space exchanging trust bundles, then signed and encrypted mail."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mssecure.cli import main
from mssecure.directory.identifiers import luhn_check_digit
from tests.cli.test_certs import DOCTOR, RPPS
from tests.cli.test_cli import assert_one_line_error
from tests.cli.test_smime import PRESCRIPTION
from tests.conftest import Operator

PHARMACIST = "pharmacie@ght-sud.mssante.test"
SECRET = "confidentiel@chu-nord.mssante.test"


class PeerOperator(Operator):
    def __init__(self, directory: Path, domain: str) -> None:
        self.directory = directory
        self.config = directory / "mssecure.toml"
        self.runner = CliRunner()
        result = self.runner.invoke(main, ["init", str(directory), "--domain", domain], catch_exceptions=False)
        assert result.exit_code == 0, result.output


def ok(op: Operator, *args: str) -> str:
    result = op.run(*args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Operator, Operator]:
    a = PeerOperator(tmp_path / "a", "chu-nord.mssante.test")
    b = PeerOperator(tmp_path / "b", "ght-sud.mssante.test")
    ok(a, "directory", "add", DOCTOR, "--kind", "personal", "--rpps", RPPS, "--last-name", "LEFÈVRE",
       "--first-name", "Camille", "--profession", "10")  # fmt: skip
    ok(a, "directory", "add", SECRET, "--kind", "applicative", "--unlisted")
    ok(a, "certs", "issue", DOCTOR)
    finess = "69000001" + luhn_check_digit("69000001")
    ok(b, "directory", "add", PHARMACIST, "--kind", "organizational", "--finess", finess, "--organization", "Pharmacie")
    ok(b, "certs", "issue", PHARMACIST)
    return a, b


def exchange(source: Operator, target: Operator, tmp_path: Path, name: str) -> dict[str, object]:
    bundle = tmp_path / name
    output = ok(source, "trust", "export", "--out", str(bundle))
    match = re.search(r"--fingerprint ([0-9A-F:]+)", output)
    assert match is not None, output
    imported: dict[str, object] = json.loads(ok(target, "trust", "import", str(bundle), "--fingerprint",
                                                match.group(1), "--json"))  # fmt: skip
    return imported


def test_a_peer_bundle_brings_its_directory_certificates_and_keys(pair: tuple[Operator, Operator],
                                                                 tmp_path: Path) -> None:  # fmt: skip
    a, b = pair
    imported = exchange(a, b, tmp_path, "a.bundle")
    assert imported["directory"] == {"created": 1, "updated": 0, "unchanged": 0, "duplicates": 0, "rejected": []}
    doctor = json.loads(ok(b, "directory", "show", DOCTOR, "--json"))
    assert (doctor["local"], doctor["status"], doctor["national_id"]) == (False, "active", "8" + RPPS)
    assert b.run("directory", "show", SECRET).exit_code == 1  # liste rouge stays home
    listed = json.loads(ok(b, "trust", "list", "--json"))
    assert [(o["domain"], o["relay"]) for o in listed] == [("chu-nord.mssante.test", "mail.chu-nord.mssante.test:25")]
    assert json.loads(ok(b, "trust", "show", "chu-nord.mssante.test", "--json"))["entries"] == 1
    certificates = json.loads(ok(b, "certs", "list", "--address", DOCTOR, "--json"))
    assert len(certificates) == 1
    # the second import of an unchanged bundle changes nothing
    again = exchange(a, b, tmp_path, "a2.bundle")
    assert again["directory"]["unchanged"] == 1  # type: ignore[index]


def test_signed_and_encrypted_mail_crosses_operators(pair: tuple[Operator, Operator], tmp_path: Path) -> None:
    a, b = pair
    exchange(a, b, tmp_path, "a.bundle")
    exchange(b, a, tmp_path, "b.bundle")
    source = tmp_path / "rx.eml"
    source.write_bytes(PRESCRIPTION.replace(b"pharmacie@chu-nord.mssante.test", PHARMACIST.encode()))
    ok(a, "smime", "sign", "--as", DOCTOR, str(source), str(tmp_path / "signed"))
    ok(a, "smime", "encrypt", "--to", PHARMACIST, str(tmp_path / "signed"), str(tmp_path / "wire"))
    ok(b, "smime", "decrypt", "--as", PHARMACIST, str(tmp_path / "wire"), str(tmp_path / "clear"))
    report = json.loads(ok(b, "smime", "verify", str(tmp_path / "clear"), "--json"))
    assert report["valid"] is True
    signer = report["signers"][0]
    assert signer["address"] == DOCTOR
    assert signer["identity"]["national_id"] == "8" + RPPS
    # A revokes the doctor: once B has A's new bundle (and CRL), the same message no longer verifies.
    ok(a, "directory", "revoke", DOCTOR, "--reason", "left")
    imported = exchange(a, b, tmp_path, "a3.bundle")
    assert imported["revoked"] == []
    assert json.loads(ok(b, "directory", "show", DOCTOR, "--json"))["status"] == "revoked"
    result = b.run("smime", "verify", str(tmp_path / "clear"), "--json")
    assert result.exit_code == 1
    assert "certificate revoked" in " ".join(json.loads(result.output)["signers"][0]["reasons"])


def test_entries_gone_from_the_bundle_are_revoked(pair: tuple[Operator, Operator], tmp_path: Path) -> None:
    a, b = pair
    exchange(a, b, tmp_path, "a.bundle")
    ok(a, "directory", "revoke", DOCTOR, "--reason", "left")
    # A revoked entry still travels (as revoked); an entry that disappears from the bundle is revoked too.
    imported = exchange(a, b, tmp_path, "a2.bundle")
    assert json.loads(ok(b, "directory", "show", DOCTOR, "--json"))["status"] == "revoked"
    assert imported["directory"]["updated"] == 1  # type: ignore[index]


def test_a_wrong_fingerprint_is_refused(pair: tuple[Operator, Operator], tmp_path: Path) -> None:
    a, b = pair
    bundle = tmp_path / "a.bundle"
    ok(a, "trust", "export", "--out", str(bundle))
    result = b.run("trust", "import", str(bundle), "--fingerprint", "00:" * 31 + "00")
    assert result.exit_code == 1
    assert_one_line_error(result.output, "is not the one confirmed")
    assert json.loads(ok(b, "trust", "list", "--json")) == []


def test_a_tampered_bundle_is_refused(pair: tuple[Operator, Operator], tmp_path: Path) -> None:
    a, b = pair
    bundle = tmp_path / "a.bundle"
    output = ok(a, "trust", "export", "--out", str(bundle))
    fingerprint = re.search(r"--fingerprint ([0-9A-F:]+)", output).group(1)  # type: ignore[union-attr]
    data = bundle.read_bytes()
    tampered = tmp_path / "tampered.bundle"
    tampered.write_bytes(data.replace(b"LEF\xc3\x88VRE", b"MALLORY!"))  # same length: the DER stays readable
    assert tampered.read_bytes() != data
    result = b.run("trust", "import", str(tampered), "--fingerprint", fingerprint)
    assert result.exit_code == 1
    assert_one_line_error(result.output, "signature does not verify")


def test_garbage_is_not_a_bundle(pair: tuple[Operator, Operator], tmp_path: Path) -> None:
    _, b = pair
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x30\x82\x01\x00not a bundle")
    result = b.run("trust", "import", str(garbage), "--fingerprint", "AA")
    assert result.exit_code == 1
    assert_one_line_error(result.output, "not a trust bundle")


def test_a_bundle_over_the_size_limit_is_refused_unless_the_limit_is_raised(pair: tuple[Operator, Operator],
                                                                            tmp_path: Path) -> None:  # fmt: skip
    a, b = pair
    bundle = tmp_path / "a.bundle"
    ok(a, "trust", "export", "--out", str(bundle))
    big = tmp_path / "big.bundle"
    big.write_bytes(bundle.read_bytes() + b"\0" * (1024 * 1024))  # over 1 MiB: refused before anything is read
    result = b.run("trust", "import", str(big), "--fingerprint", fingerprint_of(a), "--max-size", "1")
    assert result.exit_code == 1
    assert_one_line_error(result.output, "larger than the limit of 1 MiB", "--max-size")
    assert b.run("trust", "import", str(big), "--fingerprint", fingerprint_of(a), "--max-size", "0").exit_code == 2
    ok(b, "trust", "import", str(bundle), "--fingerprint", fingerprint_of(a), "--max-size", "1")


def test_a_bundle_claiming_our_domain_is_refused(pair: tuple[Operator, Operator], tmp_path: Path) -> None:
    a, _ = pair
    bundle = tmp_path / "own.bundle"
    output = ok(a, "trust", "export", "--out", str(bundle))
    fingerprint = re.search(r"--fingerprint ([0-9A-F:]+)", output).group(1)  # type: ignore[union-attr]
    result = a.run("trust", "import", str(bundle), "--fingerprint", fingerprint)
    assert result.exit_code == 1
    assert_one_line_error(result.output, "claims our own domain")


def test_remove_takes_the_operator_out_and_revokes_its_entries(pair: tuple[Operator, Operator],
                                                               tmp_path: Path) -> None:  # fmt: skip
    a, b = pair
    exchange(a, b, tmp_path, "a.bundle")
    assert "1 of its entries revoked" in ok(b, "trust", "remove", "chu-nord.mssante.test")
    assert json.loads(ok(b, "trust", "list", "--json")) == []
    assert json.loads(ok(b, "directory", "show", DOCTOR, "--json"))["status"] == "revoked"
    assert json.loads(ok(b, "certs", "list", "--address", DOCTOR, "--json")) == []
    result = b.run("trust", "show", "chu-nord.mssante.test")
    assert_one_line_error(result.output, "not in the trust space")


def fingerprint_of(op: Operator) -> str:
    output = ok(op, "trust", "export", "--out", str(op.directory / "probe.bundle"))
    (op.directory / "probe.bundle").unlink()
    return re.search(r"--fingerprint ([0-9A-F:]+)", output).group(1)  # type: ignore[union-attr]


def test_an_older_bundle_is_refused_as_a_replay(pair: tuple[Operator, Operator], tmp_path: Path) -> None:
    a, b = pair
    old, new = tmp_path / "old.bundle", tmp_path / "new.bundle"
    ok(a, "trust", "export", "--out", str(old))
    ok(a, "trust", "export", "--out", str(new))
    fingerprint = fingerprint_of(a)
    ok(b, "trust", "import", str(new), "--fingerprint", fingerprint)
    result = b.run("trust", "import", str(old), "--fingerprint", fingerprint)
    assert result.exit_code == 1
    assert_one_line_error(result.output, "refusing a replay")


def test_another_ca_cannot_take_over_a_trusted_domain(pair: tuple[Operator, Operator], tmp_path: Path) -> None:
    a, b = pair
    exchange(a, b, tmp_path, "a.bundle")
    impostor = PeerOperator(tmp_path / "impostor", "chu-nord.mssante.test")
    bundle = tmp_path / "impostor.bundle"
    ok(impostor, "trust", "export", "--out", str(bundle))
    fingerprint = fingerprint_of(impostor)
    result = b.run("trust", "import", str(bundle), "--fingerprint", fingerprint)
    assert result.exit_code == 1
    assert_one_line_error(result.output, "is trusted with another CA", "--replace-ca")
    assert json.loads(ok(b, "trust", "show", "chu-nord.mssante.test", "--json"))["ca_fingerprint"] == fingerprint_of(a)
    ok(b, "trust", "import", str(bundle), "--fingerprint", fingerprint, "--replace-ca")
    assert json.loads(ok(b, "trust", "show", "chu-nord.mssante.test", "--json"))["ca_fingerprint"] == fingerprint


def test_a_bundle_signed_by_a_professional_of_the_peer_is_refused(pair: tuple[Operator, Operator],
                                                                  tmp_path: Path) -> None:  # fmt: skip
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12

    from mssecure.crypto.cms import encapsulated_content

    a, b = pair
    genuine = tmp_path / "a.bundle"
    ok(a, "trust", "export", "--out", str(genuine))
    password = tmp_path / "pw"
    password.write_text("p12-password\n")
    ok(a, "certs", "export-p12", DOCTOR, "--out", str(tmp_path / "d.p12"), "--password-file", str(password))
    key, certificate, (ca, *_) = pkcs12.load_key_and_certificates((tmp_path / "d.p12").read_bytes(), b"p12-password")
    assert key is not None
    assert certificate is not None
    content = encapsulated_content(genuine.read_bytes()).replace(b"mail.chu-nord.mssante.test:25", b"attacker.test:25")
    forged = tmp_path / "forged.bundle"
    forged.write_bytes(
        pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(certificate, key, hashes.SHA256())  # type: ignore[arg-type]
        .add_certificate(ca).sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )  # fmt: skip
    result = b.run("trust", "import", str(forged), "--fingerprint", fingerprint_of(a))
    assert result.exit_code == 1
    assert_one_line_error(result.output, "not signed by the relay certificate of mail.chu-nord.mssante.test",
                          "does not include serverAuth", "includes emailProtection", "has an rfc822Name")  # fmt: skip


def test_a_peer_ca_cannot_sign_for_another_domain(pair: tuple[Operator, Operator], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from mssecure.config import load_config
    from mssecure.crypto.authority import OperatorMaterial
    from mssecure.crypto.pki import issue_smime
    from mssecure.db import utcnow
    from mssecure.directory.records import EntryData, Kind

    a, b = pair
    exchange(b, a, tmp_path, "b.bundle")  # A trusts B
    # B's CA (the peer) issues a certificate for an address of A's domain, and signs with it.
    material = OperatorMaterial(load_config(b.config))
    victim = EntryData(address=DOCTOR, kind=Kind.PERSONAL, identifier_type="RPPS", identifier=RPPS).validated()
    forged = issue_smime(material.ca(), victim, now=utcnow(), crl_url="http://x.test/ca.crl")
    (tmp_path / "forged.crt").write_bytes(forged.certificate.public_bytes(serialization.Encoding.PEM))
    from mssecure.crypto import smime

    message = PRESCRIPTION.replace(b"pharmacie@chu-nord.mssante.test", PHARMACIST.encode())
    (tmp_path / "signed").write_bytes(smime.sign(message, forged.certificate, forged.key))
    result = a.run("smime", "verify", str(tmp_path / "signed"), "--json")
    assert result.exit_code == 1
    reasons = " ".join(json.loads(result.output)["signers"][0]["reasons"])
    assert "no certificate chain to a trust anchor" in reasons


def test_a_suspended_sender_no_longer_verifies(pair: tuple[Operator, Operator], tmp_path: Path) -> None:
    a, _ = pair
    source = tmp_path / "rx.eml"
    source.write_bytes(PRESCRIPTION)
    ok(a, "smime", "sign", "--as", DOCTOR, str(source), str(tmp_path / "signed"))
    assert a.run("smime", "verify", str(tmp_path / "signed")).exit_code == 0
    ok(a, "directory", "revoke", DOCTOR, "--reason", "left")
    result = a.run("smime", "verify", str(tmp_path / "signed"), "--json")
    assert result.exit_code == 1
    assert "the signer's directory entry is revoked" in json.loads(result.output)["signers"][0]["reasons"]
