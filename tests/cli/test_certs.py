"""The operator PKI, checked with an independent implementation (OpenSSL) wherever it can judge."""

from __future__ import annotations

import base64
import json
import secrets
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mssecure.cli import main
from mssecure.directory.identifiers import luhn_check_digit
from tests.cli.test_cli import assert_one_line_error
from tests.conftest import Operator

RPPS = "1010001000" + luhn_check_digit("1010001000")
FINESS = "59000001" + luhn_check_digit("59000001")
DOCTOR = "camille.lefevre@chu-nord.mssante.test"
PHARMACY = "pharmacie@chu-nord.mssante.test"


def openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=check, timeout=60)


@pytest.fixture
def pki(operator: Operator) -> Operator:
    result = operator.run("directory", "add", DOCTOR, "--kind", "personal", "--rpps", RPPS, "--first-name",
                          "Camille", "--last-name", "LEFÈVRE", "--organization", "CHU Nord")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = operator.run("directory", "add", PHARMACY, "--kind", "organizational", "--finess", FINESS,
                          "--organization", "Pharmacie du Marché", "--service", "Officine")  # fmt: skip
    assert result.exit_code == 0, result.output
    return operator


def data(op: Operator) -> Path:
    return op.directory / "data"


def issue(op: Operator, address: str, *args: str) -> dict[str, object]:
    result = op.run("certs", "issue", address, "--json", *args)
    assert result.exit_code == 0, result.output
    issued: dict[str, object] = json.loads(result.output)
    return issued


def pem_of(op: Operator, address: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{address}.pem"
    path.write_text(op.run("certs", "show", address, "--pem").output)
    return path


def test_init_creates_private_keys_encrypted_under_a_private_master_secret(operator: Operator) -> None:
    root = data(operator)
    assert stat.S_IMODE((root / "master.key").stat().st_mode) == 0o600
    for name in ("ca", "tls", "dkim", "archive"):
        key = root / "keys" / f"{name}.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        # OpenSSL opens it with the master secret, and not without it.
        openssl("pkey", "-in", str(key), "-passin", f"file:{root / 'master.key'}", "-noout")
        assert openssl("pkey", "-in", str(key), "-passin", "pass:wrong", "-noout", check=False).returncode != 0
    ca = root / "pki" / "ca.crt"
    assert "CA:TRUE" in openssl("x509", "-in", str(ca), "-noout", "-ext", "basicConstraints").stdout
    tls = root / "pki" / "tls.crt"
    for purpose in ("sslserver", "sslclient"):
        assert openssl("verify", "-CAfile", str(ca), "-purpose", purpose, str(tls)).returncode == 0
    assert (
        "DNS:mail.chu-nord.mssante.test" in openssl("x509", "-in", str(tls), "-noout", "-ext", "subjectAltName").stdout
    )
    record = (root / "dkim" / "mssecure.txt").read_text()
    assert record.startswith('mssecure._domainkey.chu-nord.mssante.test. IN TXT "v=DKIM1; k=rsa; p=MII')
    assert (root / "archive.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_the_master_secret_is_never_printed(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", str(tmp_path / "op"), "--domain", "chu-nord.mssante.test"])
    secret = (tmp_path / "op" / "data" / "master.key").read_text().strip()
    assert secret not in result.output
    assert "mssecure._domainkey" in result.output


def test_a_master_key_file_readable_by_others_is_refused(pki: Operator) -> None:
    (data(pki) / "master.key").chmod(0o644)
    result = pki.run("certs", "issue", DOCTOR)
    assert result.exit_code == 1
    assert_one_line_error(result.output, "accessible to its group or others (mode 0644)", "chmod 600")


def test_master_secret_from_the_environment(tmp_path: Path) -> None:
    env = {"MSSECURE_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}  # openssl rand -base64 32
    runner = CliRunner()
    result = runner.invoke(main, ["init", str(tmp_path / "op"), "--domain", "chu-nord.mssante.test"], env=env)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "op" / "data" / "master.key").exists()
    config = str(tmp_path / "op" / "mssecure.toml")
    runner.invoke(main, ["--config", config, "directory", "add", DOCTOR, "--kind", "personal", "--rpps", RPPS])
    assert runner.invoke(main, ["--config", config, "certs", "issue", DOCTOR], env=env).exit_code == 0
    result = runner.invoke(main, ["--config", config, "certs", "issue", DOCTOR], env={"MSSECURE_MASTER_KEY": ""})
    assert result.exit_code == 1
    assert_one_line_error(result.output, "no master secret")


@pytest.mark.parametrize("value", ["a long operator secret from the vault", "0123456789abcdef0123"])
def test_a_passphrase_as_master_secret_is_refused_at_init(tmp_path: Path, value: str) -> None:
    result = CliRunner().invoke(main, ["init", str(tmp_path / "op"), "--domain", "chu-nord.mssante.test"],
                                env={"MSSECURE_MASTER_KEY": value})  # fmt: skip
    assert result.exit_code == 1
    assert_one_line_error(result.output, "$MSSECURE_MASTER_KEY is not a strong master secret", "openssl rand")
    assert value not in result.output
    assert not (tmp_path / "op").exists()


def test_init_imports_an_existing_ca(tmp_path: Path) -> None:
    key, cert = tmp_path / "ca.key", tmp_path / "ca.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "30",
            "-subj", "/C=FR/O=IGC Test/CN=Test national CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    op_dir = tmp_path / "op"
    result = CliRunner().invoke(main, ["init", str(op_dir), "--domain", "chu-nord.mssante.test",
                                       "--ca-cert", str(cert), "--ca-key", str(key)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (op_dir / "data" / "pki" / "ca.crt").read_bytes() == cert.read_bytes()
    assert openssl("verify", "-CAfile", str(cert), str(op_dir / "data" / "pki" / "tls.crt")).returncode == 0


def test_init_refuses_a_ca_that_is_not_a_ca_and_leaves_nothing(tmp_path: Path) -> None:
    key, cert = tmp_path / "leaf.key", tmp_path / "leaf.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "30",
            "-subj", "/CN=not a ca", "-addext", "basicConstraints=critical,CA:FALSE")  # fmt: skip
    result = CliRunner().invoke(main, ["init", str(tmp_path / "op"), "--domain", "chu-nord.mssante.test",
                                       "--ca-cert", str(cert), "--ca-key", str(key)])  # fmt: skip
    assert result.exit_code == 1
    assert_one_line_error(result.output, "not a CA")
    assert not (tmp_path / "op").exists()


def test_issued_smime_certificate_profile(pki: Operator, tmp_path: Path) -> None:
    issued = issue(pki, DOCTOR)
    pem = pem_of(pki, DOCTOR, tmp_path)
    ca = data(pki) / "pki" / "ca.crt"
    for purpose in ("smimesign", "smimeencrypt", "sslclient"):
        assert openssl("verify", "-CAfile", str(ca), "-purpose", purpose, str(pem)).returncode == 0
    certificate = x509.load_pem_x509_certificate(pem.read_bytes())
    assert f"{certificate.serial_number:X}" == issued["serial"]
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == [DOCTOR]
    assert certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "8" + RPPS
    assert certificate.subject.get_attributes_for_oid(NameOID.SURNAME)[0].value == "LEFÈVRE"
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment
    points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name[0].value == "http://mail.chu-nord.mssante.test/crl/ca.crl"
    assert certificate.public_key().key_size >= 2048  # type: ignore[union-attr]


def test_organizational_p256_certificate(pki: Operator, tmp_path: Path) -> None:
    help_text = " ".join(pki.run("certs", "issue", "--help").output.split())
    assert "p256: ECDSA P-256, signs only: mssecure (and any sender limited to RSA key transport) cannot encrypt" in (
        help_text
    )
    issue(pki, PHARMACY, "--key-type", "p256")
    certificate = x509.load_pem_x509_certificate(pem_of(pki, PHARMACY, tmp_path).read_bytes())
    assert certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Pharmacie du Marché"
    assert certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == FINESS
    assert json.loads(pki.run("certs", "show", PHARMACY, "--json").output)["key_type"] == "p256"


@pytest.mark.parametrize(
    ("prepare", "address", "fragment"),
    [
        ([], "nobody@chu-nord.mssante.test", "no directory entry"),
        (["directory", "add", "dr.x@ght-sud.mssante.test", "--kind", "personal", "--rpps", RPPS],
         "dr.x@ght-sud.mssante.test", "peer operator's address"),
        (["directory", "suspend", DOCTOR, "--reason", "x"], DOCTOR, "active entries only"),
    ],
)  # fmt: skip
def test_issue_refusals(pki: Operator, prepare: list[str], address: str, fragment: str) -> None:
    if prepare:
        assert pki.run(*prepare).exit_code == 0
    result = pki.run("certs", "issue", address)
    assert result.exit_code == 1
    assert_one_line_error(result.output, fragment)


def _crl_text(op: Operator) -> str:
    return openssl("crl", "-inform", "DER", "-in", str(data(op) / "pki" / "ca.crl"), "-noout", "-text").stdout


def _verify_with_crl(op: Operator, pem: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    crl = tmp_path / "ca.crl.pem"
    crl.write_text(openssl("crl", "-inform", "DER", "-in", str(data(op) / "pki" / "ca.crl")).stdout)
    return openssl("verify", "-crl_check", "-CAfile", str(data(op) / "pki" / "ca.crt"), "-CRLfile", str(crl),
                   str(pem), check=False)  # fmt: skip


def test_directory_lifecycle_moves_the_certificates_and_the_crl(pki: Operator, tmp_path: Path) -> None:
    serial = str(issue(pki, DOCTOR)["serial"])
    pem = pem_of(pki, DOCTOR, tmp_path)
    assert _verify_with_crl(pki, pem, tmp_path).returncode == 0
    pki.run("directory", "suspend", DOCTOR, "--reason", "card lost")
    assert serial in _crl_text(pki).replace(":", "")
    assert "Certificate Hold" in _crl_text(pki)
    assert _verify_with_crl(pki, pem, tmp_path).returncode != 0
    pki.run("directory", "reactivate", DOCTOR)
    assert serial not in _crl_text(pki).replace(":", "")
    assert _verify_with_crl(pki, pem, tmp_path).returncode == 0
    pki.run("directory", "revoke", DOCTOR, "--reason", "left")
    assert "Cessation Of Operation" in _crl_text(pki)
    listed = json.loads(pki.run("certs", "list", "--json").output)
    assert [(c["serial"], c["status"]) for c in listed] == [(serial, "revoked")]


def test_renew_supersedes_and_revoke_by_serial(pki: Operator) -> None:
    first = str(issue(pki, DOCTOR)["serial"])
    renewed = json.loads(pki.run("certs", "renew", DOCTOR, "--json").output)
    assert renewed["superseded"] == [first]
    second = renewed["new"]["serial"]
    statuses = {
        c["serial"]: (c["status"], c["revocation_reason"])
        for c in json.loads(pki.run("certs", "list", "--json").output)
    }
    assert statuses == {first: ("revoked", "superseded"), second: ("valid", None)}
    assert pki.run("certs", "revoke", "--serial", second, "--reason", "keyCompromise").exit_code == 0
    assert "Key Compromise" in _crl_text(pki)
    result = pki.run("certs", "revoke", "--serial", second, "--reason", "keyCompromise")
    assert_one_line_error(result.output, "already revoked")
    assert pki.run("certs", "revoke", DOCTOR, "--reason", "because").exit_code == 2


def test_expiring_within(pki: Operator) -> None:
    issue(pki, DOCTOR, "--days", "10")
    issue(pki, PHARMACY)
    soon = json.loads(pki.run("certs", "list", "--expiring-within", "30", "--json").output)
    assert [c["address"] for c in soon] == [DOCTOR]


def test_export_p12_is_read_by_openssl(pki: Operator, tmp_path: Path) -> None:
    issue(pki, DOCTOR)
    password = tmp_path / "password"
    password.write_text("correct horse battery\n")
    out = tmp_path / "camille.p12"
    result = pki.run("certs", "export-p12", DOCTOR, "--out", str(out), "--password-file", str(password))
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    info = openssl("pkcs12", "-in", str(out), "-passin", "pass:correct horse battery", "-nodes")
    assert "BEGIN PRIVATE KEY" in info.stdout
    assert DOCTOR in info.stdout
    assert info.stdout.count("BEGIN CERTIFICATE") == 2  # the entry's and our CA
    assert openssl("pkcs12", "-in", str(out), "-passin", "pass:wrong", "-noout", check=False).returncode != 0
    again = pki.run("certs", "export-p12", DOCTOR, "--out", str(out), "--password-file", str(password))
    assert_one_line_error(again.output, "already exists")
    short = tmp_path / "short"
    short.write_text("short\n")
    result = pki.run("certs", "export-p12", DOCTOR, "--out", str(tmp_path / "x.p12"), "--password-file", str(short))
    assert_one_line_error(result.output, "at least 8 characters")


def test_export_p12_prompts_for_the_password(pki: Operator, tmp_path: Path) -> None:
    issue(pki, DOCTOR)
    out = tmp_path / "prompted.p12"
    result = pki.run("certs", "export-p12", DOCTOR, "--out", str(out), input="s3cret-pass\ns3cret-pass\n")
    assert result.exit_code == 0, result.output
    assert "s3cret-pass" not in result.output
    assert openssl("pkcs12", "-in", str(out), "-passin", "pass:s3cret-pass", "-noout").returncode == 0


def test_keys_in_the_database_are_encrypted(pki: Operator, tmp_path: Path) -> None:
    import sqlite3

    issue(pki, DOCTOR)
    with sqlite3.connect(pki.directory / "mssecure.db") as connection:
        (key,) = connection.execute("SELECT private_key_pem FROM certificates").fetchone()
    assert key.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    (tmp_path / "k.pem").write_text(key)
    master = f"file:{data(pki) / 'master.key'}"
    modulus = openssl("rsa", "-in", str(tmp_path / "k.pem"), "-passin", master, "-noout", "-modulus").stdout
    assert modulus == openssl("x509", "-in", str(pem_of(pki, DOCTOR, tmp_path)), "-noout", "-modulus").stdout


def test_serials_are_unique_per_issuer_across_the_migration(operator_on: Operator) -> None:
    """0004 keeps the certificates of a 0003 database; two issuers may then use the same serial, a lookup by that
    serial is refused as ambiguous and the fingerprint names the certificate."""
    import sqlalchemy as sa
    from alembic import command

    from mssecure.config import load_config
    from mssecure.crypto.models import CertificateRecord
    from mssecure.db import SCHEMA_REVISION, _alembic_config, make_engine, make_sessionmaker

    op = operator_on
    assert op.run("directory", "add", DOCTOR, "--kind", "personal", "--rpps", RPPS).exit_code == 0
    ours = issue(op, DOCTOR)
    serial, fingerprint = str(ours["serial"]), str(ours["fingerprint_sha256"])
    engine = make_engine(load_config(op.config).database_url)
    try:
        command.downgrade(_alembic_config(engine), "0003")
        assert_one_line_error(op.run("db", "current").output, "has schema revision 0003")
        upgraded = op.run("db", "upgrade")
        assert upgraded.output.strip() == f"Database schema upgraded from 0003 to revision {SCHEMA_REVISION}."
        assert [c["serial"] for c in json.loads(op.run("certs", "list", "--json").output)] == [serial]

        with make_sessionmaker(engine)() as session:
            stored = session.scalars(sa.select(CertificateRecord)).one()
            values = {c.key: getattr(stored, c.key) for c in CertificateRecord.__table__.columns if c.key != "id"}
            peer = {**values, "issuer": "CN=GHT Sud operator CA,O=ght-sud.mssante.test,C=FR",
                    "address": "dr.x@ght-sud.mssante.test", "fingerprint": "AB:" * 31 + "AB",
                    "private_key_pem": None}  # fmt: skip
            session.add(CertificateRecord(**peer))
            session.commit()  # same serial, another issuer: accepted
            session.add(CertificateRecord(**{**peer, "fingerprint": "CD:" * 31 + "CD"}))
            with pytest.raises(sa.exc.IntegrityError):
                session.commit()  # same issuer and serial: refused by the database
    finally:
        engine.dispose()

    for command_line in (["certs", "show", serial], ["certs", "revoke", "--serial", serial, "--reason", "superseded"]):
        result = op.run(*command_line)
        assert result.exit_code == 1
        assert_one_line_error(result.output, f"serial {serial} is ambiguous", fingerprint, "GHT Sud", "fingerprint")
    shown = json.loads(op.run("certs", "show", fingerprint.replace(":", "").lower(), "--json").output)
    assert (shown["address"], shown["serial"]) == (DOCTOR, serial)
    peer_shown = json.loads(op.run("certs", "show", "AB:" * 31 + "AB", "--json").output)
    assert peer_shown["address"] == "dr.x@ght-sud.mssante.test"
    revoked = op.run("certs", "revoke", "--fingerprint", fingerprint, "--reason", "keyCompromise")
    assert revoked.exit_code == 0, revoked.output
    assert "Key Compromise" in _crl_text(op)
    bad = op.run("certs", "revoke", "--fingerprint", serial, "--reason", "keyCompromise")
    assert bad.exit_code == 2
    assert "64 hex digits" in bad.output
