"""``mssecure demo``: the README's first command, the main job on embedded defaults, told step by step.

Each step runs the real ``mssecure`` command in a child process and prints it first, so a newcomer can type the same
commands. Everything lives in a fresh directory that is kept afterwards for exploring.
"""

from __future__ import annotations

import imaplib
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from mssecure.directory.identifiers import luhn_check_digit
from mssecure.errors import MssecureError
from mssecure.xdm import ins_key

__all__ = ["demo"]

DOMAIN = "chu-nord.mssante.test"
PEER = "pharma-sud.mssante.test"
DOCTOR = f"camille.lefevre@{DOMAIN}"
PHARMACY = f"pharmacie.du-marche@{PEER}"
# Invented, with valid check digits.
DOCTOR_RPPS = "1010001000" + luhn_check_digit("1010001000")
PHARMACY_FINESS = "59000001" + luhn_check_digit("59000001")
DEMO_PASSWORD = "demo password, not for production"  # noqa: S105 - the demo's invented doctor
PATIENT_NIR = "1500275123456"  # invented; the INS is the NIR and its key
PATIENT_INS = PATIENT_NIR + ins_key(PATIENT_NIR)
# A one-page PDF, as the prescribing software would produce it (invented content).
PRESCRIPTION_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]/Contents 4 0 R>>endobj\n"
    b"4 0 obj<</Length 62>>stream\nBT /F1 12 Tf 72 760 Td (Amoxicilline 1 g, 3 fois par jour, 7 jours) Tj ET\n"
    b"endstream endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)


def _title(text: str) -> None:
    click.echo()
    click.secho(f"== {text}", bold=True)


def _run(args: list[str], env: dict[str, str]) -> None:
    click.secho("$ mssecure " + " ".join(_quote(a) for a in args), fg="cyan")
    result = subprocess.run([sys.executable, "-m", "mssecure", *args], env=env, check=False)
    if result.returncode != 0:
        raise MssecureError(f"demo step failed (exit {result.returncode}): mssecure {' '.join(args)}")


def _free_bases(count: int) -> list[int]:
    """Port bases N whose N+25, N+465 and N+587 are free on 127.0.0.1."""
    found: list[int] = []
    for base in range(20000 + secrets.randbelow(20000), 64000, 1000):
        try:
            for offset in (25, 465, 587):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        found.append(base)
        if len(found) == count:
            return found
    raise MssecureError("no free loopback ports for the demo relays")


def _exchange_bundles(workdir: Path, *operators: tuple[Path, dict[str, str]]) -> None:
    for (directory, env), (_, other_env) in (operators, operators[::-1]):
        bundle = workdir / f"{directory.name}.bundle"
        click.secho(f"$ mssecure trust export --out {bundle.name}   # at {directory.name}", fg="cyan")
        exported = subprocess.run([sys.executable, "-m", "mssecure", "trust", "export", "--out", str(bundle)],
                                  env=env, capture_output=True, text=True, check=False)  # fmt: skip
        if exported.returncode != 0:
            raise MssecureError(f"trust export failed: {exported.stderr.strip()}")
        fingerprint = exported.stdout.split("--fingerprint", 1)[1].split()[0]
        _run(["trust", "import", str(bundle), "--fingerprint", fingerprint], other_env)


def _start(directory: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = directory / "serve.log"
    click.secho(f"$ mssecure serve   # at {directory.name}, logging to {log}", fg="cyan")
    with log.open("ab") as stream:
        process = subprocess.Popen([sys.executable, "-m", "mssecure", "serve"], env=env, stdout=stream,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    while b"ready (" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise MssecureError(f"the relay of {directory.name} did not start; see {log}")
        time.sleep(0.1)
    return process


def _wait_for(maildir: Path, count: int, timeout: float = 60) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted((maildir / "new").glob("*")) if (maildir / "new").is_dir() else []
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise MssecureError(f"nothing arrived in {maildir} within {timeout:.0f} s")


def _dovecot() -> str | None:
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")
    return found if found and (shutil.which("doveconf") or shutil.which("doveconf", path="/usr/sbin")) else None


def _read_over_imap(workdir: Path, peer: Path, env: dict[str, str], address: str, password: str) -> bytes | None:
    """Serve pharma-sud's mailboxes with a real Dovecot (when installed) and read ``address``'s newest message over
    IMAPS as its mail client would; None when Dovecot is not installed."""
    binary = _dovecot()
    if binary is None:
        click.echo("  (Dovecot is not installed, so no IMAP here: apt-get install dovecot-imapd dovecot-sqlite; the")
        click.echo("  message is read from its Maildir file instead.)")
        return None
    imaps = _free_bases(1)[0] + 993
    args = ["dovecot", "config", "--out", str(peer / "dovecot"), "--unprivileged", "--imap-port", str(imaps - 850),
            "--imaps-port", str(imaps)]  # fmt: skip
    if os.geteuid() == 0:
        # Dovecot never opens mail as root. A production relay runs as the mail account and writes the Maildirs as
        # it; here (root) the demo hands them to "nobody" and lets it traverse the demo's directories.
        import pwd

        closed = [p for p in workdir.resolve().parents if not p.stat().st_mode & 0o001]
        if closed:
            click.echo(f"  (Run as root, Dovecot opens mail as nobody, who cannot enter {closed[0]}: no IMAP here;")
            click.echo("  run the demo as a normal user, or with --dir under /tmp. The Maildir file is read instead.)")
            return None
        nobody = pwd.getpwnam("nobody")
        for directory in (workdir, peer, peer / "data", peer / "data" / "mail"):
            directory.chmod(directory.stat().st_mode | 0o011)
        for top, subdirs, files in os.walk(peer / "data" / "mail"):
            for name in (top, *(os.path.join(top, n) for n in (*subdirs, *files))):
                os.lchown(name, nobody.pw_uid, nobody.pw_gid)
        args += ["--mail-user", "nobody"]
    _run(args, env)
    click.secho(f"$ dovecot -c {peer / 'dovecot' / 'dovecot.conf'} -F", fg="cyan")
    log = peer / "dovecot" / "console.log"
    with log.open("ab") as stream:
        process = subprocess.Popen([binary, "-c", str(peer / "dovecot" / "dovecot.conf"), "-F"], stdout=stream,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    try:
        context = ssl.create_default_context(cafile=peer / "data" / "pki" / "ca.crt")
        context.check_hostname = False  # the demo connects to 127.0.0.1; the certificate names mail.<domain>
        deadline = time.monotonic() + 30
        while True:
            try:
                client = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=context, timeout=30)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise MssecureError(f"Dovecot did not start; see {log}") from None
                time.sleep(0.2)
        click.secho(f"$ (mail client) IMAPS to 127.0.0.1:{imaps} as {address}", fg="cyan")
        with client:
            client.login(address, password)
            client.select("INBOX", readonly=True)
            _, found = client.search(None, "ALL")
            newest = found[0].split()[-1]
            _, fetched = client.fetch(newest, "(RFC822)")
            client.logout()
        item = fetched[0]
        assert isinstance(item, tuple)
        return bytes(item[1])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _quote(arg: str) -> str:
    return f"'{arg}'" if not arg or any(c in arg for c in " '\"$&|;<>()") else arg


@click.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to create the demo operator (default: a new temporary directory).",
)
@click.option("--lines", type=click.IntRange(min=10), default=2000, show_default=True, help="Size of the extraction.")
def demo(workdir: Path | None, lines: int) -> None:
    """Run the demo: set up an operator and its PKI, import a national directory, certify a doctor; set up a
    second operator with a pharmacy; start both relays and send a signed, encrypted e-prescription from the doctor
    to the pharmacy, with its acknowledgment."""
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="mssecure-demo-"))
    elif workdir.exists() and any(workdir.iterdir()):
        raise MssecureError(f"{workdir} is not empty: choose a new directory for the demo")
    operator = workdir / "chu-nord"
    peer = workdir / "pharma-sud"
    bases = _free_bases(2)
    extraction = workdir / "extraction-correspondance-mssante.txt"
    env = {
        **os.environ,
        "MSSECURE_CONFIG": str(operator / "mssecure.toml"),
        "MSSECURE_ACTOR": "demo-operator",
    }
    env.pop("MSSECURE_DATABASE_URL", None)
    peer_env = {**env, "MSSECURE_CONFIG": str(peer / "mssecure.toml")}
    click.secho(f"mssecure demo in {workdir}", bold=True)

    _title("1. Set up the operator (SQLite database, embedded defaults)")
    _run(["init", str(operator), "--domain", DOMAIN, "--ports-base", str(bases[0])], env)
    click.echo(f"(the following commands find it through MSSECURE_CONFIG={env['MSSECURE_CONFIG']})")

    _title("2. Import the national directory extraction (synthetic: invented people, a few malformed lines)")
    _run(["directory", "sample-extraction", str(extraction), "--lines", str(lines), "--with-errors"], env)
    _run(["directory", "import", str(extraction)], env)

    _title("3. Import it again: the import is idempotent, nothing changes")
    _run(["directory", "import", str(extraction)], env)

    _title("4. Our own certified address, a doctor, with an S/MIME certificate")
    _run(["directory", "add", f"camille.lefevre@{DOMAIN}", "--kind", "personal", "--rpps", DOCTOR_RPPS,
          "--civility", "DR", "--last-name", "LEFÈVRE", "--first-name", "Camille", "--profession", "10",
          "--specialty", "SM53", "--specialty-label", "Spécialiste en Médecine Générale",
          "--organization", "CHU Nord", "--reason", "new prescriber"], env)  # fmt: skip
    _run(["directory", "list", "--local", "--limit", "8"], env)
    _run(["certs", "issue", f"camille.lefevre@{DOMAIN}"], env)

    _title("5. Search ignores case and accents: 'lefevre' finds 'LEFÈVRE'")
    _run(["directory", "search", "lefevre", "camille", "--limit", "5"], env)

    _title("6. Lifecycle: suspend, reactivate, and the history of every change")
    _run(["directory", "suspend", f"camille.lefevre@{DOMAIN}", "--reason", "card reported lost"], env)
    _run(["directory", "reactivate", f"camille.lefevre@{DOMAIN}", "--reason", "new card issued"], env)
    _run(["directory", "history", f"camille.lefevre@{DOMAIN}"], env)
    _run(["directory", "show", DOCTOR], env)
    _run(["certs", "list"], env)

    _title("7. A second operator, pharma-sud, with a pharmacy; each trusts the other's signed bundle")
    _run(["init", str(peer), "--domain", PEER, "--ports-base", str(bases[1])], peer_env)
    _run(["directory", "add", PHARMACY, "--kind", "organizational", "--finess", PHARMACY_FINESS,
          "--organization", "Pharmacie du Marché", "--service", "Officine", "--department", "59"],
         peer_env)  # fmt: skip
    _run(["certs", "issue", PHARMACY], peer_env)
    _exchange_bundles(workdir, (operator, env), (peer, peer_env))

    _title("8. Both relays start (mssecure serve); the doctor sends an e-prescription (PDF + IHE XDM package)")
    password_file = workdir / "doctor.password"
    password_file.write_text(DEMO_PASSWORD + "\n", encoding="utf-8")
    _run(["directory", "set-password", DOCTOR, "--password-file", str(password_file)], env)
    relays = [_start(operator, env), _start(peer, peer_env)]
    try:
        pdf = workdir / "ordonnance.pdf"
        pdf.write_bytes(PRESCRIPTION_PDF)
        prescription = f"RX-{secrets.token_hex(6).upper()}"
        _run(["send", "--from", DOCTOR, "--to", PHARMACY, "--attach", str(pdf), "--xdm", "--patient-ins", PATIENT_INS,
              "--patient-name", "DUPONT Jean", "--birth-date", "1950-02-01", "--prescription-id", prescription,
              "--body", "Ordonnance de Jean DUPONT ci-jointe.", "--request-mdn", "--final-delivery",
              "--password-file", str(password_file)], env)  # fmt: skip
        click.echo("  250: the relay checked the XDM package, signed the message with the doctor's key, encrypted it")
        click.echo("  to the pharmacy, DKIM-signed it, stored it durably and archived it; it is relaying it to")
        click.echo("  pharma-sud over mutual TLS.")

        _title("9. The pharmacy reads it over IMAP: decrypted, still signed, with the verified prescriber")
        delivered = _wait_for(peer / "data" / "mail" / PEER / "pharmacie.du-marche", 1)[0]
        pharmacy_password = peer / "pharmacy.password"
        pharmacy_password.write_text(DEMO_PASSWORD + "\n", encoding="utf-8")
        _run(["directory", "set-password", PHARMACY, "--password-file", str(pharmacy_password)], peer_env)
        read = _read_over_imap(workdir, peer, peer_env, PHARMACY, DEMO_PASSWORD) or delivered.read_bytes()
        for line in read.decode("utf-8", "replace").splitlines()[:12]:
            click.echo(f"    {line}")
        message_id = next(line.split(":", 1)[1].strip() for line in read.decode("utf-8", "replace").splitlines()
                          if line.lower().startswith("message-id:"))  # fmt: skip
        click.echo("  The pharmacy's software checks it from the message alone: prescriber, documents, prescription:")
        _run(["verify", str(delivered)], peer_env)

        _title("10. The doctor's mailbox: the pharmacy's acknowledgment (MDN, signed by the pharmacy)")
        mdn = _wait_for(operator / "data" / "mail" / DOMAIN / "camille.lefevre", 1)[0]
        shown: set[str] = set()
        for line in mdn.read_text(encoding="utf-8").splitlines():
            if line.startswith(("Subject:", "Disposition:", "Final-Recipient:", "\tsmime=")) and line not in shown:
                shown.add(line)  # the subject is both outside and inside the signature
                click.echo(f"    {line}")
        _run(["queue", "list"], env)
    finally:
        for relay in relays:
            relay.send_signal(signal.SIGTERM)
        for relay in relays:
            relay.wait(timeout=30)

    _title("11. The archives prove it: every decision hash-chained, checkpoints signed when the relays stopped")
    _run(["archive", "show", message_id], env)
    _run(["archive", "verify"], env)
    sent = workdir / "evidence-sent.json"
    _run(["archive", "evidence", message_id, "--out", str(sent)], env)
    click.echo("  An auditor checks it with nothing but the file and chu-nord's archive public key:")
    _run(["archive", "verify-evidence", str(sent), "--operator-key", str(operator / "data" / "archive.pub")], env)
    received = workdir / "evidence-received.json"
    _run(["archive", "evidence", message_id, "--out", str(received)], peer_env)
    click.echo("  And the pharmacy's operator proves the receipt with its own key:")
    _run(["archive", "verify-evidence", str(received), "--operator-key", str(peer / "data" / "archive.pub")],
         peer_env)  # fmt: skip

    click.echo()
    click.secho("Demo complete.", bold=True)
    click.echo(f"The demo operator stays in {workdir}; try: export MSSECURE_CONFIG={env['MSSECURE_CONFIG']}")
