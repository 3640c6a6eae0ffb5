"""Operators with a running relay, for integration tests: ``mssecure init`` in a temporary directory, unprivileged
loopback ports, entries with certificates and passwords, and ``mssecure serve`` as a real child process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from click.testing import CliRunner, Result

from mssecure.cli import main
from mssecure.config import render_config
from mssecure.directory.identifiers import luhn_check_digit

PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rpps(n: int) -> str:
    base = f"10100{n:05d}"
    return base + luhn_check_digit(base)


def finess(n: int) -> str:
    base = f"590{n:05d}"
    return base + luhn_check_digit(base)


class RelayOperator:
    """An operator (its own data dir and database) whose relay runs on loopback ports."""

    def __init__(self, directory: Path, domain: str, *, database_url: str | None = None, **delivery: object) -> None:
        self.directory = directory
        self.domain = domain
        self.hostname = f"mail.{domain}"
        self.config = directory / "mssecure.toml"
        self.runner = CliRunner()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "serve.log"
        args = ["init", str(directory), "--domain", domain]
        if database_url:
            args += ["--database-url", database_url]
        result = self.runner.invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        self.ports = {"submission": free_port(), "submissions": free_port(), "inbound": free_port()}
        settings = {"retry_schedule": [1], "max_lifetime": 3600, "connect_timeout": 5, **delivery}
        values = tomllib.loads(self.config.read_text(encoding="utf-8"))
        values["smtp"] = {
            "listen": "127.0.0.1",
            "submission_port": self.ports["submission"],
            "submissions_port": self.ports["submissions"],
            "inbound_port": self.ports["inbound"],
            "relay_endpoint": f"127.0.0.1:{self.ports['inbound']}",
        }
        values["delivery"] = {**values.get("delivery", {}), **settings}
        self.config.write_text(render_config(values), encoding="utf-8")

    @property
    def env(self) -> dict[str, str]:
        return {"MSSECURE_CONFIG": str(self.config), "MSSECURE_ACTOR": "test-operator"}

    def run(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(main, list(args), env=self.env, input=input, catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        result = self.run(*args)
        assert result.exit_code == 0, result.output
        return result

    def person(
        self, local: str, n: int, *, first: str = "Camille", last: str = "LEFÈVRE", password: bool = True
    ) -> str:
        address = f"{local}@{self.domain}"
        self.ok("directory", "add", address, "--kind", "personal", "--rpps", rpps(n), "--first-name", first,
                "--last-name", last, "--organization", f"Hôpital {self.domain}")  # fmt: skip
        self.ok("certs", "issue", address)
        if password:
            self.set_password(address)
        return address

    def organization(self, local: str, n: int, name: str = "Pharmacie du Marché", *, password: bool = True) -> str:
        address = f"{local}@{self.domain}"
        self.ok("directory", "add", address, "--kind", "organizational", "--finess", finess(n), "--organization", name)
        self.ok("certs", "issue", address)
        if password:
            self.set_password(address)
        return address

    def set_password(self, address: str, password: str = PASSWORD) -> None:
        secret = self.directory / ".password"
        secret.write_text(password + "\n", encoding="utf-8")
        self.ok("directory", "set-password", address, "--password-file", str(secret))
        secret.unlink()

    def trust(self, other: RelayOperator) -> None:
        bundle = other.directory / "bundle.p7m"
        if bundle.exists():
            bundle.unlink()
        result = other.ok("trust", "export", "--out", str(bundle))
        fingerprint = _fingerprint(result.output)
        self.ok("trust", "import", str(bundle), "--fingerprint", fingerprint)

    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.directory / "data" / "mail" / domain / local

    def messages(self, address: str) -> list[bytes]:
        box = self.maildir(address)
        files = sorted((box / "new").glob("*")) + sorted((box / "cur").glob("*")) if box.exists() else []
        return [f.read_bytes() for f in files]

    # The relay process

    def start(self, timeout: float = 30, *, workers: int | None = None) -> None:
        assert self.process is None
        env = {**os.environ, **self.env}
        command = [sys.executable, "-m", "mssecure", "serve"]
        if workers is not None:
            command += ["--workers", str(workers)]
        start = self.log.stat().st_size if self.log.exists() else 0  # a restart appends to the log
        with self.log.open("ab") as stream:  # the child keeps its own descriptor
            self.process = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            if b"ready (" in self.log.read_bytes()[start:]:
                return
            time.sleep(0.1)
        raise AssertionError(f"serve did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def wait_for(self, address: str, count: int = 1, timeout: float = 30) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages(address)
            if len(found) >= count:
                return found
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"serve died:\n{self.log.read_text()}")
            time.sleep(0.1)
        raise AssertionError(f"{address} has {len(self.messages(address))} message(s), not {count}:\n"
                             f"{self.log.read_text()[-5000:]}")  # fmt: skip


def _fingerprint(output: str) -> str:
    for line in output.splitlines():
        for word in line.split():
            if word.count(":") >= 31:
                return word.strip("()")
    raise AssertionError(f"no fingerprint in: {output}")
