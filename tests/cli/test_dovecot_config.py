"""``mssecure dovecot config``: the files it writes, their modes, Dovecot's own parser on them, and its refusals."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mssecure.cli import main
from mssecure.crypto.keys import new_master_secret
from tests.cli.test_cli import assert_one_line_error
from tests.conftest import Operator
from tests.support.dovecot import find_dovecot

# Dovecot never opens mail as root: the CI (root) names another account.
MAIL_USER = ["--mail-user", "nobody"] if os.geteuid() == 0 else []


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_the_configuration_with_the_key_decrypted_and_private(operator: Operator, tmp_path: Path) -> None:
    out = tmp_path / "dovecot"
    result = operator.run("dovecot", "config", "--out", str(out), *MAIL_USER)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"dovecot.conf", "dovecot-sql.conf.ext", "dovecot-sql-master.conf.ext",
                                               "tls.crt", "tls.key"}  # fmt: skip
    assert mode(out) == 0o700
    assert mode(out / "tls.key") == 0o600
    assert mode(out / "dovecot-sql.conf.ext") == 0o600
    assert mode(out / "dovecot-sql-master.conf.ext") == 0o600
    key = serialization.load_pem_private_key((out / "tls.key").read_bytes(), password=None)  # decrypted
    certificate = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    assert key.public_key() == certificate.public_key()
    assert "DECRYPTED" in result.output
    assert "PRIVATE KEY" not in result.output
    assert "143 (STARTTLS), 993 (TLS)" in result.output
    conf = (out / "dovecot.conf").read_text()
    assert "ssl = required" in conf
    assert f"mail_location = maildir:{operator.directory / 'data' / 'mail'}/%d/%n" in conf
    assert f"connect = {operator.directory / 'mssecure.db'}" in (out / "dovecot-sql.conf.ext").read_text()


def test_doveconf_accepts_what_is_written(operator: Operator, tmp_path: Path) -> None:
    if find_dovecot() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("doveconf is missing (the CI installs dovecot-imapd: see .ci/run)")
        pytest.skip("Dovecot is not installed")
    for extra in ([], ["--unprivileged", "--imap-port", "10143", "--imaps-port", "0"]):
        result = operator.run("dovecot", "config", "--out", str(tmp_path / "dovecot"), *MAIL_USER, *extra)
        assert result.exit_code == 0, result.output
        assert "doveconf accepts it." in result.output


def test_unprivileged_mode_prepares_its_directories(operator: Operator, tmp_path: Path) -> None:
    out = tmp_path / "dovecot"
    result = operator.run("dovecot", "config", "--out", str(out), "--unprivileged", "--imap-port", "10143",
                          "--imaps-port", "10993", "--no-check", *MAIL_USER)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "run").is_dir()
    assert (out / "state").is_dir()
    conf = (out / "dovecot.conf").read_text()
    assert f"base_dir = {out / 'run'}" in conf
    assert "port = 10143" in conf
    assert "port = 10993" in conf


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--imap-port", "0", "--imaps-port", "0"], "both IMAP listeners are disabled"),
        (["--imap-port", "1993", "--imaps-port", "1993"], "must differ"),
        (["--mail-user", "no-such-account-here"], "no system account is called"),
        (["--mail-user", "root"], "which Dovecot refuses"),
    ],
)
def test_refusals_are_one_line(operator: Operator, tmp_path: Path, args: list[str], fragment: str) -> None:
    result = operator.run("dovecot", "config", "--out", str(tmp_path / "dovecot"), *MAIL_USER, *args)
    assert result.exit_code == 1
    assert_one_line_error(result.output, fragment)
    assert not (tmp_path / "dovecot" / "tls.key").exists()


def test_a_path_dovecot_cannot_quote_is_refused(operator: Operator, tmp_path: Path) -> None:
    result = operator.run("dovecot", "config", "--out", str(tmp_path / "my dovecot"), *MAIL_USER)
    assert result.exit_code == 1
    assert_one_line_error(result.output, "cannot be written in a Dovecot configuration")
    assert not (tmp_path / "my dovecot").exists()


def test_a_wrong_master_secret_is_one_line_and_writes_no_key(operator: Operator, tmp_path: Path) -> None:
    env = {"MSSECURE_CONFIG": str(operator.config), "MSSECURE_MASTER_KEY": new_master_secret().decode()}
    result = operator.runner.invoke(main, ["dovecot", "config", "--out", str(tmp_path / "d"), *MAIL_USER], env=env)
    assert result.exit_code == 1
    assert_one_line_error(result.output, "cannot be decrypted")
    assert not (tmp_path / "d" / "tls.key").exists()
