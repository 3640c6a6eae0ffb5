"""A real Dovecot for integration tests: configured by ``mssecure dovecot config --unprivileged``, started in the
foreground on free loopback ports, stopped by its process id; its log is attached to every failure.

Dovecot never opens mail as root. Run by a developer, everything is the current account. Run as root (the CI),
mail is opened as ``nobody``: the Maildir root and Dovecot's directory live in a world-traversable temporary
directory (pytest's are 0700), and ``readable()`` hands what the relay (root) delivered to ``nobody`` — what a
production relay running as the mail account does by itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.relay import RelayOperator, free_port

__all__ = ["DovecotServer", "find_dovecot", "mail_root", "require_dovecot"]

ROOT_MAIL_ACCOUNT = "nobody"


def find_dovecot() -> str | None:
    """The dovecot binary (in /usr/sbin, which an unprivileged PATH often lacks), or None."""
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")
    return found if found and shutil.which("doveconf") else None


def require_dovecot() -> str:
    """Dovecot's binary; the test fails under CI=true when it is missing (the CI installs it), else skips."""
    found = find_dovecot()
    if found is None:
        message = "Dovecot (dovecot, doveconf) not found; Debian: apt-get install dovecot-imapd dovecot-sqlite " \
            "dovecot-pgsql"  # fmt: skip
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI must install it: see .ci/run)")
        pytest.skip(message)
    return found


def mail_root() -> Path:
    """A directory for the Maildirs and Dovecot's files that Dovecot's own accounts can traverse."""
    root = Path(tempfile.mkdtemp(prefix="mssecure-dovecot-"))
    root.chmod(0o755)
    return root


class DovecotServer:
    """Dovecot serving ``operator``'s mailboxes, its files under ``root/dovecot``, the Maildirs under ``root/mail``."""

    def __init__(self, operator: RelayOperator, root: Path) -> None:
        self.binary = require_dovecot()
        self.operator = operator
        self.root = root
        self.out = root / "dovecot"
        self.maildir_root = root / "mail"
        self.ports = {"imap": free_port(), "imaps": free_port()}
        self.process: subprocess.Popen[bytes] | None = None
        self.console = root / "dovecot.console"
        self.as_root = os.geteuid() == 0
        self.maildir_root.mkdir(mode=0o700, exist_ok=True)
        self.readable()
        args = ["dovecot", "config", "--out", str(self.out), "--imap-port", str(self.ports["imap"]),
                "--imaps-port", str(self.ports["imaps"]), "--unprivileged"]  # fmt: skip
        if self.as_root:
            args += ["--mail-user", ROOT_MAIL_ACCOUNT]
        self.config_output = operator.ok(*args).output

    @property
    def conf(self) -> Path:
        return self.out / "dovecot.conf"

    @property
    def log(self) -> str:
        parts = [path.read_text(errors="replace") for path in (self.out / "dovecot.log", self.console)
                 if path.exists()]  # fmt: skip
        return "\n".join(parts)

    def readable(self) -> None:
        """As root: give the Maildirs to the mail account, as a relay running as that account would write them."""
        if not self.as_root:
            return
        import pwd

        account = pwd.getpwnam(ROOT_MAIL_ACCOUNT)
        for directory, subdirs, files in os.walk(self.maildir_root):
            for name in (directory, *(os.path.join(directory, n) for n in (*subdirs, *files))):
                os.lchown(name, account.pw_uid, account.pw_gid)

    def start(self, timeout: float = 30) -> None:
        assert self.process is None
        with self.console.open("ab") as stream:
            self.process = subprocess.Popen([self.binary, "-c", str(self.conf), "-F"], stdout=stream,
                                            stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise AssertionError(f"dovecot exited with {code}:\n{self.log}")
            if all(self._accepts(port) for port in self.ports.values()):
                return
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"dovecot did not start listening:\n{self.log}")

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)  # the master stops its children and removes its sockets
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def tls_context(self) -> ssl.SSLContext:
        """A client context that verifies Dovecot's certificate against the operator's CA (the host name is
        checked by the tests against the certificate, as they connect to 127.0.0.1)."""
        context = ssl.create_default_context(cafile=str(self.operator.directory / "data" / "pki" / "ca.crt"))
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def mailbox(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.maildir_root / domain / local

    def wait_for_delivery(self, address: str, count: int, timeout: float = 30) -> list[bytes]:
        """The messages the relay delivered to ``address``, once there are ``count``; then readable by Dovecot."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            box = self.mailbox(address)
            files = sorted((box / "new").glob("*")) + sorted((box / "cur").glob("*")) if box.exists() else []
            if len(files) >= count:
                self.readable()
                return [f.read_bytes() for f in files]
            time.sleep(0.1)
        raise AssertionError(f"{address} did not receive {count} message(s):\n"
                             f"{self.operator.log.read_text()[-5000:]}")  # fmt: skip
