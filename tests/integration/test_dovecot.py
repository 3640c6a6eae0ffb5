"""Reading mail with a standard client: a real Dovecot, configured by ``mssecure dovecot config``, serving the Maildirs
the relay delivers to, logins checked against the directory; Python's imaplib over TLS (993 and STARTTLS on 143)
verifying the operator's CA.
"""

from __future__ import annotations

import imaplib
import itertools
import shutil
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.integration.test_relay import prescription, submit
from tests.support.dovecot import DovecotServer, mail_root, require_dovecot
from tests.support.postgres import PostgresCluster
from tests.support.relay import PASSWORD, RelayOperator

DOMAIN = "chu-nord.mssante.test"
OTHER_PASSWORD = "another long secret, not the first"


class Site:
    """One operator (relay and Dovecot) with a doctor, a nurse, and a pharmacy's organizational mailbox whose only
    delegate is the nurse."""

    def __init__(self, directory: Path, *, database_url: str | None = None) -> None:
        require_dovecot()
        self.root = mail_root()
        self.relay = RelayOperator(directory, DOMAIN, database_url=database_url,
                                   maildir=str(self.root / "mail"))  # fmt: skip
        self.doctor = self.relay.person("camille.lefevre", 1)
        self.nurse = self.relay.person("alex.martin", 2, first="Alex", last="MARTIN")
        self.relay.set_password(self.nurse, OTHER_PASSWORD)
        self.pharmacy = self.relay.organization("pharmacie", 3, password=False)
        self.relay.ok("directory", "delegate", self.pharmacy, self.nurse)
        self.dovecot = DovecotServer(self.relay, self.root)

    def start(self) -> None:
        self.relay.start()
        self.dovecot.start()

    def stop(self) -> None:
        try:
            self.relay.stop()
            self.dovecot.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def imaps(self) -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL("127.0.0.1", self.dovecot.ports["imaps"], ssl_context=self.dovecot.tls_context(),
                                 timeout=30)  # fmt: skip

    def deliver(self, sender: str, recipient: str, subject: str) -> bytes:
        """Submit a message through the relay; the copy the relay delivered to ``recipient``'s Maildir."""
        before = len(self.dovecot.wait_for_delivery(recipient, 0))
        data = prescription(sender, recipient, subject=subject, mdn=False)
        assert submit(self.relay, sender, sender, [recipient], data) == {}
        delivered = [m for m in self.dovecot.wait_for_delivery(recipient, before + 1) if subject.encode() in m]
        assert len(delivered) == 1
        return delivered[0]


class RemoteIMAP4(imaplib.IMAP4):
    """A client from 127.0.0.2: Dovecot counts a connection from its own address as secure, so the refusal of
    logins before STARTTLS shows only from another one."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=("127.0.0.2", 0))


_SOURCES = itertools.cycle(f"127.0.1.{n}" for n in range(1, 255))


class FailingIMAP4SSL(imaplib.IMAP4_SSL):
    """Each refused login comes from another loopback address: Dovecot's penalty for failures (per client IP,
    growing to 15 s) would otherwise slow every later login of the module."""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        source = (next(_SOURCES), 0)
        sock = socket.create_connection((self.host, self.port), timeout, source_address=source)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def read_by_subject(client: imaplib.IMAP4, subject: str) -> bytes:
    status, _ = client.select("INBOX")
    assert status == "OK"
    status, found = client.search(None, "SUBJECT", f'"{subject}"')
    assert status == "OK"
    (number,) = found[0].split()
    status, parts = client.fetch(number, "(BODY.PEEK[])")
    assert status == "OK"
    payload = parts[0]
    assert isinstance(payload, tuple)
    return payload[1]


def login_refused(site: Site, user: str, password: str) -> None:
    client = FailingIMAP4SSL("127.0.0.1", site.dovecot.ports["imaps"], ssl_context=site.dovecot.tls_context(),
                             timeout=60)  # fmt: skip
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login(user, password)
    finally:
        client.shutdown()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    operator = Site(tmp_path_factory.mktemp("dovecot") / "a")
    try:
        operator.start()
        yield operator
    finally:
        operator.stop()


def test_a_message_submitted_through_the_relay_is_read_over_implicit_tls(site: Site) -> None:
    delivered = site.deliver(site.doctor, site.nurse, "Compte rendu IMAPS")
    with site.imaps() as client:
        certificate = client.sock.getpeercert()  # verified against the operator's CA by the context
        assert certificate is not None
        assert ("DNS", site.relay.hostname) in certificate["subjectAltName"]
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        status, _ = client.login(site.nurse, OTHER_PASSWORD)
        assert status == "OK"
        read = read_by_subject(client, "Compte rendu IMAPS")
        client.logout()
    assert read == delivered  # the very bytes the relay delivered, headers and all
    assert b"Amoxicilline 1 g" in read
    assert f"smime=pass body.smime-identifier={site.doctor}".encode() in read


def test_starttls_on_the_imap_port_and_no_login_before_it(site: Site) -> None:
    site.deliver(site.doctor, site.nurse, "Compte rendu STARTTLS")
    with RemoteIMAP4("127.0.0.1", site.dovecot.ports["imap"], timeout=30) as client:
        assert "LOGINDISABLED" in client.capabilities  # ssl = required: no password in clear
        assert "STARTTLS" in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            client.login(site.nurse, OTHER_PASSWORD)
    with RemoteIMAP4("127.0.0.1", site.dovecot.ports["imap"], timeout=30) as client:
        client.starttls(ssl_context=site.dovecot.tls_context())
        assert client.login(site.nurse, OTHER_PASSWORD)[0] == "OK"
        assert b"Amoxicilline 1 g" in read_by_subject(client, "Compte rendu STARTTLS")
        client.logout()


def test_a_wrong_password_is_refused(site: Site) -> None:
    login_refused(site, site.nurse, PASSWORD)  # the doctor's password, not the nurse's
    login_refused(site, "nobody-here@" + DOMAIN, PASSWORD)
    assert OTHER_PASSWORD not in site.dovecot.log
    assert PASSWORD not in site.dovecot.log


def test_an_address_is_case_insensitive(site: Site) -> None:
    with site.imaps() as client:
        assert client.login(site.doctor.upper(), PASSWORD)[0] == "OK"
        client.logout()


def test_a_suspended_entry_cannot_log_in_until_reactivated(site: Site) -> None:
    locum = site.relay.person("remplacant", 5, first="Sam", last="REMPLAÇANT")
    with site.imaps() as client:
        assert client.login(locum, PASSWORD)[0] == "OK"
        client.logout()
    site.relay.ok("directory", "suspend", locum, "--reason", "fin de remplacement")
    login_refused(site, locum, PASSWORD)
    site.relay.ok("directory", "reactivate", locum)
    with site.imaps() as client:
        assert client.login(locum, PASSWORD)[0] == "OK"
        client.logout()


def test_a_revoked_entry_cannot_log_in(site: Site) -> None:
    gone = site.relay.person("parti", 6, first="Dominique", last="PARTI")
    site.relay.ok("directory", "revoke", gone, "--reason", "a quitté l'hôpital")
    login_refused(site, gone, PASSWORD)


def test_a_delegate_opens_the_organizational_mailbox_and_no_one_else_does(site: Site) -> None:
    delivered = site.deliver(site.doctor, site.pharmacy, "Ordonnance DUPONT Jean")
    with site.imaps() as client:
        assert client.login(f"{site.pharmacy}*{site.nurse}", OTHER_PASSWORD)[0] == "OK"
        assert read_by_subject(client, "Ordonnance DUPONT Jean") == delivered
        client.logout()
    login_refused(site, f"{site.pharmacy}*{site.doctor}", PASSWORD)  # the doctor is not a delegate
    login_refused(site, f"{site.pharmacy}*{site.nurse}", PASSWORD)  # a delegate still needs their own password
    login_refused(site, site.pharmacy, PASSWORD)  # the mailbox itself has no password
    login_refused(site, f"{site.nurse}*{site.doctor}", PASSWORD)  # a personal mailbox has no delegates


def test_a_removed_delegation_or_a_suspended_delegate_closes_the_mailbox(site: Site) -> None:
    service = site.relay.organization("cardiologie", 7, "Service de cardiologie", password=False)
    locum = site.relay.person("interne", 8, first="Noa", last="INTERNE")
    site.relay.ok("directory", "delegate", service, locum)
    with site.imaps() as client:
        assert client.login(f"{service}*{locum}", PASSWORD)[0] == "OK"
        client.logout()
    site.relay.ok("directory", "suspend", locum, "--reason", "congé")
    login_refused(site, f"{service}*{locum}", PASSWORD)
    site.relay.ok("directory", "reactivate", locum)
    site.relay.ok("directory", "undelegate", service, locum)
    login_refused(site, f"{service}*{locum}", PASSWORD)


@pytest.mark.postgres
def test_imap_with_the_directory_on_postgresql(tmp_path: Path, pg_cluster: PostgresCluster) -> None:
    """Dovecot's pgsql driver on mssecure's PostgreSQL, through a connect string holding a password that needs
    quoting (the test cluster trusts loopback, so libpq must parse it but the server ignores it)."""
    secret = "pa'ss w#rd\\x"
    with pg_cluster.database() as url:
        with_password = url.replace(f"{pg_cluster.user}@", f"{pg_cluster.user}:{quote(secret, safe='')}@")
        site = Site(tmp_path / "a", database_url=with_password)
        try:
            assert secret not in site.dovecot.config_output
            assert "dovecot-sql.conf.ext" in site.dovecot.config_output
            site.start()
            delivered = site.deliver(site.doctor, site.pharmacy, "Ordonnance sur PostgreSQL")
            with site.imaps() as client:
                assert client.login(site.doctor, PASSWORD)[0] == "OK"
                client.logout()
            with site.imaps() as client:
                assert client.login(f"{site.pharmacy}*{site.nurse}", OTHER_PASSWORD)[0] == "OK"
                assert read_by_subject(client, "Ordonnance sur PostgreSQL") == delivered
                client.logout()
            login_refused(site, site.doctor, OTHER_PASSWORD)
            site.relay.ok("directory", "suspend", site.doctor, "--reason", "test")
            login_refused(site, site.doctor, PASSWORD)
            assert secret not in site.dovecot.log
        finally:
            site.stop()
