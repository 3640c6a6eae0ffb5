"""``mssecure client-config``: the settings a professional types into a mail client, and the Thunderbird autoconfig
file (Mozilla ISPDB format, clientConfig 1.1) parsed back."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.cli.test_cli import assert_one_line_error
from tests.conftest import Operator
from tests.support.relay import PASSWORD, finess, rpps

DOMAIN = "chu-nord.mssante.test"
DOCTOR = f"camille.lefevre@{DOMAIN}"
NURSE = f"alex.martin@{DOMAIN}"
PHARMACY = f"pharmacie@{DOMAIN}"
HOST = f"mail.{DOMAIN}"


def ok(op: Operator, *args: str) -> str:
    result = op.run(*args)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def site(operator: Operator, tmp_path: Path) -> Operator:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    for n, (address, first, last) in enumerate(((DOCTOR, "Camille", "LEFÈVRE"), (NURSE, "Alex", "MARTIN")), 1):
        ok(operator, "directory", "add", address, "--kind", "personal", "--rpps", rpps(n), "--first-name", first,
           "--last-name", last)  # fmt: skip
    ok(operator, "directory", "set-password", DOCTOR, "--password-file", str(secret))
    ok(operator, "directory", "add", PHARMACY, "--kind", "organizational", "--finess", finess(3), "--organization",
       "Pharmacie du Marché")  # fmt: skip
    ok(operator, "directory", "delegate", PHARMACY, NURSE)
    return operator


def test_the_settings_a_professional_types(site: Operator) -> None:
    output = ok(site, "client-config", DOCTOR)
    assert f"Mail client settings for Camille LEFÈVRE <{DOCTOR}>" in output
    incoming, outgoing = output.split("Incoming mail (IMAP)")[1].split("Outgoing mail (SMTP)")
    assert f"server          {HOST}" in incoming
    assert "port            993" in incoming
    assert "security        SSL/TLS   (or port 143 with STARTTLS)" in incoming
    assert f"username        {DOCTOR}" in incoming
    assert "authentication  normal password" in incoming
    assert f"server          {HOST}" in outgoing
    assert "port            465" in outgoing
    assert "(or port 587 with STARTTLS)" in outgoing
    assert f"username        {DOCTOR}" in outgoing
    assert "No password is set yet" not in output


def test_a_delegate_is_told_how_to_open_the_organizational_mailbox(site: Operator) -> None:
    output = ok(site, "client-config", NURSE)
    assert f"  {PHARMACY}*{NURSE}" in output
    assert "No password is set yet" in output  # the nurse has none: the operator is told what to run
    assert f"mssecure directory set-password {NURSE}" in output
    shared = ok(site, "client-config", PHARMACY)
    assert f"Delegates of this mailbox: {NURSE}" in shared
    assert f"{PHARMACY}*<their own address>" in shared


def test_the_thunderbird_autoconfig_file(site: Operator, tmp_path: Path) -> None:
    out = tmp_path / "config-v1.1.xml"
    output = ok(site, "client-config", DOCTOR, "--out", str(out))
    assert f"Thunderbird autoconfig written to {out}" in output
    assert out.read_bytes().startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    root = ET.fromstring(out.read_bytes())  # noqa: S314 - our own output, not untrusted input
    assert root.tag == "clientConfig"
    assert root.get("version") == "1.1"
    (provider,) = root.findall("emailProvider")
    assert provider.get("id") == DOMAIN
    assert [d.text for d in provider.findall("domain")] == [DOMAIN]
    assert provider.findtext("displayShortName") == DOMAIN
    servers = [
        (s.tag, s.get("type"), s.findtext("hostname"), s.findtext("port"), s.findtext("socketType"),
         s.findtext("authentication"), s.findtext("username"))
        for s in (*provider.findall("incomingServer"), *provider.findall("outgoingServer"))
    ]  # fmt: skip
    common = ("password-cleartext", "%EMAILADDRESS%")
    assert servers == [
        ("incomingServer", "imap", HOST, "993", "SSL", *common),
        ("incomingServer", "imap", HOST, "143", "STARTTLS", *common),
        ("outgoingServer", "smtp", HOST, "465", "SSL", *common),
        ("outgoingServer", "smtp", HOST, "587", "STARTTLS", *common),
    ]


def test_json_output(site: Operator) -> None:
    data = json.loads(ok(site, "client-config", NURSE, "--json", "--imaps-port", "10993", "--imap-port", "0"))
    assert data["address"] == NURSE
    assert data["username"] == NURSE
    assert data["authentication"] == "normal password"
    assert data["has_password"] is False
    assert data["delegated_mailboxes"] == [PHARMACY]
    assert [(s["protocol"], s["port"], s["security"]) for s in data["incoming"]] == [("imap", 10993, "SSL/TLS")]
    assert [(s["port"], s["socket_type"]) for s in data["outgoing"]] == [(465, "SSL"), (587, "STARTTLS")]
    assert data["autoconfig"] is None


def test_an_unknown_address_is_refused(site: Operator, tmp_path: Path) -> None:
    out = tmp_path / "config-v1.1.xml"
    result = site.run("client-config", f"personne@{DOMAIN}", "--out", str(out))
    assert result.exit_code == 1
    assert_one_line_error(result.output, "no directory entry", f"personne@{DOMAIN}")
    assert not out.exists()


@pytest.mark.parametrize(("command", "status"), [("suspend", "suspended"), ("revoke", "revoked")])
def test_an_inactive_address_is_refused(site: Operator, command: str, status: str) -> None:
    ok(site, "directory", command, DOCTOR, "--reason", "test")
    result = site.run("client-config", DOCTOR)
    assert result.exit_code == 1
    assert_one_line_error(result.output, f"{DOCTOR} is {status}", "cannot log in")


def test_a_delegation_to_a_suspended_mailbox_is_not_offered(site: Operator) -> None:
    ok(site, "directory", "suspend", PHARMACY, "--reason", "fermeture")
    assert PHARMACY not in ok(site, "client-config", NURSE)


def test_out_must_be_a_file(site: Operator, tmp_path: Path) -> None:
    result = site.run("client-config", DOCTOR, "--out", str(tmp_path))
    assert result.exit_code == 2  # a usage error, as click reports them
    assert "is a directory" in result.output
    assert "Traceback" not in result.output


def test_an_unwritable_out_is_one_line(site: Operator, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = site.run("client-config", DOCTOR, "--out", str(blocker / "config-v1.1.xml"))
    assert result.exit_code == 1
    assert_one_line_error(result.output, "cannot write")
