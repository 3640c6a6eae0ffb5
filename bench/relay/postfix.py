"""The Postfix baseline: two Postfix instances of their own (``postfix -c DIR``, their own queue and data
directories under a temporary directory; the system's Postfix is neither used nor touched), doing what mssecure's
two operators do minus S/MIME, DKIM and the archive:

* **A** (the sender's operator): ``smtpd`` on a loopback port, STARTTLS required, AUTH PLAIN (Cyrus SASL with a
  ``sasldb2`` of its own, ``smtpd_tls_auth_only``), relaying only for authenticated clients to B
  (``relayhost``) over TLS with a client certificate, B's certificate pinned by its SHA-256 fingerprint;
* **B** (the recipient's operator): ``smtpd`` on a loopback port, STARTTLS and a client certificate from the
  benchmark CA required, delivering to Maildir with ``virtual(8)``.

So Postfix's path has the same hops as mssecure's: submission with TLS and AUTH, a durable queue (fsynced), a relay
hop over mutual TLS, a durable queue again, an fsynced Maildir delivery. Postfix's ``smtp-sink`` cannot be the
far end: it speaks no TLS, and the baseline must relay over TLS as mssecure does.

Needs, on Debian: ``apt-get install postfix sasl2-bin`` (``DEBIAN_FRONTEND=noninteractive``; the package's own
service is not started by this). Runs as root (Postfix's master refuses otherwise).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.relay.load import Target

__all__ = ["PostfixPair", "postfix_problem"]

A_DOMAIN = "chu-nord.mssante.test"
B_DOMAIN = "pharma-sud.mssante.test"
MAILBOX_UID = 65534  # nobody: virtual(8) refuses uids under virtual_minimum_uid (100)

_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
virtual   unix  - n n - - virtual
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def postfix_problem() -> str | None:
    """Why the baseline cannot run here, or None."""
    for tool in ("postfix", "postconf", "saslpasswd2"):
        if shutil.which(tool) is None:
            package = "sasl2-bin" if tool == "saslpasswd2" else "postfix"
            return f"{tool} is not installed (DEBIAN_FRONTEND=noninteractive apt-get install -y {package})"
    if os.geteuid() != 0:
        return "Postfix's master must be started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no postfix user (the postfix package creates it)"
    return None


def postfix_version() -> str | None:
    try:
        out = subprocess.run(["postconf", "-d", "mail_version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return None
    return out.partition("=")[2].strip() or None


class _Pki:
    """A CA and RSA-2048 leaf certificates (the key size of mssecure's relay certificates)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.now = datetime.now(UTC)
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench Postfix CA")])
        self.name = name
        self.certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(self.now - timedelta(hours=1))
            .not_valid_after(self.now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, hostname: str) -> tuple[Path, Path, str]:
        """(certificate, key, SHA-256 fingerprint as Postfix writes it) for ``hostname`` (server and client)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        certificate = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.now - timedelta(hours=1)).not_valid_after(self.now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        cert_path, key_path = self.directory / f"{hostname}.crt", self.directory / f"{hostname}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))  # fmt: skip
        key_path.chmod(0o600)
        fingerprint = ":".join(f"{b:02X}" for b in certificate.fingerprint(hashes.SHA256()))
        return cert_path, key_path, fingerprint


class _Instance:
    def __init__(self, root: Path, port: int, main_cf: dict[str, str]) -> None:
        self.root = root
        self.conf = root / "conf"
        self.port = port
        postfix = pwd.getpwnam("postfix")
        for sub in ("conf", "queue", "data"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        os.chown(root / "data", postfix.pw_uid, postfix.pw_gid)
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(root / "queue"),
            "data_directory": str(root / "data"),
            "mail_owner": "postfix",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "mynetworks": "192.0.2.1/32",  # loopback is not trusted: clients authenticate
            "maillog_file": str(root / "maillog"),
            "maillog_file_prefixes": str(root),
            "message_size_limit": "104857600",
            "smtpd_tls_loglevel": "0",
            **main_cf,
        }
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        (self.conf / "master.cf").write_text(_MASTER_CF.format(port=port))

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        # Postfix writes its errors to stderr only when it is a terminal; otherwise they are in the maillog file.
        return subprocess.run(["postfix", "-c", str(self.conf), *args], capture_output=True, text=True, timeout=60)

    def master_pid(self) -> int | None:
        """The running master's pid (its pid file outlives it: the pid must still be a ``master``)."""
        try:
            pid = int((self.root / "queue" / "pid" / "master.pid").read_text().strip())
            return pid if Path(f"/proc/{pid}/comm").read_text().strip() == "master" else None
        except (OSError, ValueError):
            return None

    def start(self) -> int:
        """Start the instance; its master's pid once its SMTP port accepts connections."""
        done = self._postfix("start")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pid = self.master_pid()
            if pid is not None and _listening(self.port):
                return pid
            time.sleep(0.1)
        raise RuntimeError(f"postfix -c {self.conf} start failed ({done.returncode}): {self.log_tail()}")

    def stop(self) -> None:
        pid = self.master_pid()
        self._postfix("stop")
        deadline = time.monotonic() + 30
        while pid is not None and self.master_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid is not None and self.master_pid() == pid:
            self._postfix("abort")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.root / "maillog").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no maillog)"

    def flush_queue(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["postsuper", "-c", str(self.conf), "-d", "ALL"], capture_output=True, timeout=60)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class PostfixPair:
    """Postfix A (submission, relay) and Postfix B (inbound, Maildir) under ``root``."""

    def __init__(self, root: Path, ports: tuple[int, int], password: str, senders: int = 2, recipients: int = 2):
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)  # the postfix and nobody users work below it: its parents must let them through too
        self.root = root
        self.password = password
        pki = _Pki(root)
        a_cert, a_key, _ = pki.issue(f"mail.{A_DOMAIN}")
        b_cert, b_key, b_fingerprint = pki.issue(f"mail.{B_DOMAIN}")
        self.senders = tuple(f"dr.bench{i}@{A_DOMAIN}" for i in range(senders))
        self.recipients = tuple(f"pharmacie{i}@{B_DOMAIN}" for i in range(recipients))

        # Debian's Postfix reads <config_directory>/sasl/smtpd.conf whatever cyrus_sasl_config_path says.
        sasl = root / "a" / "conf" / "sasl"
        sasl.mkdir(parents=True, exist_ok=True)
        sasldb = sasl / "sasldb2"
        (sasl / "smtpd.conf").write_text(f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
                                         f"sasldb_path: {sasldb}\n")  # fmt: skip
        for address in self.senders:
            user, _, realm = address.partition("@")
            subprocess.run(["saslpasswd2", "-p", "-c", "-f", str(sasldb), "-u", realm, user], input=password,
                           text=True, check=True, capture_output=True, timeout=30)  # fmt: skip
        postfix = pwd.getpwnam("postfix")
        os.chown(sasldb, postfix.pw_uid, postfix.pw_gid)
        sasldb.chmod(0o600)

        self.a = _Instance(root / "a", ports[0], {
            "myhostname": f"mail.{A_DOMAIN}",
            "smtpd_tls_cert_file": str(a_cert),
            "smtpd_tls_key_file": str(a_key),
            "smtpd_tls_security_level": "encrypt",
            "smtpd_tls_auth_only": "yes",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "cyrus_sasl_config_path": str(sasl),
            "smtpd_sasl_security_options": "noanonymous",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
            "relayhost": f"[127.0.0.1]:{ports[1]}",
            "smtp_tls_security_level": "fingerprint",
            "smtp_tls_fingerprint_digest": "sha256",
            "smtp_tls_fingerprint_cert_match": b_fingerprint,
            "smtp_tls_cert_file": str(a_cert),
            "smtp_tls_key_file": str(a_key),
        })  # fmt: skip
        mail = root / "b" / "mail"
        self.maildirs: list[Path] = []
        for address in self.recipients:
            local, _, domain = address.partition("@")
            for sub in ("tmp", "new", "cur"):
                (mail / domain / local / sub).mkdir(parents=True, exist_ok=True)
            self.maildirs.append(mail / domain / local / "new")
        for directory, _, files in os.walk(mail):
            os.chown(directory, MAILBOX_UID, MAILBOX_UID)
            for name in files:
                os.chown(Path(directory, name), MAILBOX_UID, MAILBOX_UID)
        vmailbox = root / "b" / "vmailbox"
        vmailbox.parent.mkdir(parents=True, exist_ok=True)
        vmailbox.write_text("".join(f"{a} {a.partition('@')[2]}/{a.partition('@')[0]}/\n" for a in self.recipients))
        self.b = _Instance(root / "b", ports[1], {
            "myhostname": f"mail.{B_DOMAIN}",
            "smtpd_tls_cert_file": str(b_cert),
            "smtpd_tls_key_file": str(b_key),
            "smtpd_tls_security_level": "encrypt",
            "smtpd_tls_ask_ccert": "yes",
            "smtpd_tls_req_ccert": "yes",
            "smtpd_tls_CAfile": str(pki.ca_path),
            "virtual_mailbox_domains": B_DOMAIN,
            "virtual_mailbox_base": str(mail),
            "virtual_mailbox_maps": f"texthash:{vmailbox}",
            "virtual_uid_maps": f"static:{MAILBOX_UID}",
            "virtual_gid_maps": f"static:{MAILBOX_UID}",
            "virtual_mailbox_limit": "0",
        })  # fmt: skip

    @property
    def target(self) -> Target:
        return Target("postfix", "127.0.0.1", self.a.port, self.senders, self.recipients, self.password)

    def start(self) -> tuple[int, int]:
        """Start B then A; their master pids."""
        b = self.b.start()
        a = self.a.start()
        return a, b

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()

    def logs(self) -> str:
        return f"A:\n{self.a.log_tail()}\nB:\n{self.b.log_tail()}"
