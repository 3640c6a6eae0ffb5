"""``mssecure demo``: the README's first command, the main job on embedded defaults, told step by step.

Each step runs the real ``mssecure`` command in a child process and prints it first, so a newcomer can type the same
commands. Everything lives in a fresh directory that is kept afterwards for exploring.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from mssecure.directory.identifiers import luhn_check_digit
from mssecure.errors import MssecureError

__all__ = ["demo"]

DOMAIN = "chu-nord.mssante.test"
# Invented, with valid check digits.
DOCTOR_RPPS = "1010001000" + luhn_check_digit("1010001000")
PHARMACY_FINESS = "59000001" + luhn_check_digit("59000001")
PRESCRIPTION = (
    f"From: Dr Camille LEFEVRE <camille.lefevre@{DOMAIN}>\r\n"
    f"To: Pharmacie du Marche <pharmacie.du-marche@{DOMAIN}>\r\n"
    "Subject: Ordonnance DUPONT Jean 01/02/1950\r\n"
    "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    f"Message-ID: <prescription-1@{DOMAIN}>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "Amoxicilline 1 g : un comprimé trois fois par jour pendant 7 jours.\r\n"
).encode()


def _title(text: str) -> None:
    click.echo()
    click.secho(f"== {text}", bold=True)


def _run(args: list[str], env: dict[str, str]) -> None:
    click.secho("$ mssecure " + " ".join(_quote(a) for a in args), fg="cyan")
    result = subprocess.run([sys.executable, "-m", "mssecure", *args], env=env, check=False)
    if result.returncode != 0:
        raise MssecureError(f"demo step failed (exit {result.returncode}): mssecure {' '.join(args)}")


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
    """Run the demo: set up an operator and its PKI, import a national directory, certify a doctor and a
    pharmacy, and send a signed, encrypted e-prescription from one to the other."""
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="mssecure-demo-"))
    elif workdir.exists() and any(workdir.iterdir()):
        raise MssecureError(f"{workdir} is not empty: choose a new directory for the demo")
    operator = workdir / "chu-nord"
    extraction = workdir / "extraction-correspondance-mssante.txt"
    env = {
        **os.environ,
        "MSSECURE_CONFIG": str(operator / "mssecure.toml"),
        "MSSECURE_ACTOR": "demo-operator",
    }
    env.pop("MSSECURE_DATABASE_URL", None)
    click.secho(f"mssecure demo in {workdir}", bold=True)

    _title("1. Set up the operator (SQLite database, embedded defaults)")
    _run(["init", str(operator), "--domain", DOMAIN], env)
    click.echo(f"(the following commands find it through MSSECURE_CONFIG={env['MSSECURE_CONFIG']})")

    _title("2. Import the national directory extraction (synthetic: invented people, a few malformed lines)")
    _run(["directory", "sample-extraction", str(extraction), "--lines", str(lines), "--with-errors"], env)
    _run(["directory", "import", str(extraction)], env)

    _title("3. Import it again: the import is idempotent, nothing changes")
    _run(["directory", "import", str(extraction)], env)

    _title("4. Our own certified addresses, a doctor and a pharmacy, with their S/MIME certificates")
    _run(["directory", "add", f"camille.lefevre@{DOMAIN}", "--kind", "personal", "--rpps", DOCTOR_RPPS,
          "--civility", "DR", "--last-name", "LEFÈVRE", "--first-name", "Camille", "--profession", "10",
          "--specialty", "SM53", "--specialty-label", "Spécialiste en Médecine Générale",
          "--organization", "CHU Nord", "--reason", "new prescriber"], env)  # fmt: skip
    _run(["directory", "add", f"pharmacie.du-marche@{DOMAIN}", "--kind", "organizational", "--finess",
          PHARMACY_FINESS, "--organization", "Pharmacie du Marché", "--service", "Officine",
          "--department", "59"], env)  # fmt: skip
    _run(["directory", "list", "--local", "--limit", "8"], env)
    _run(["certs", "issue", f"camille.lefevre@{DOMAIN}"], env)
    _run(["certs", "issue", f"pharmacie.du-marche@{DOMAIN}"], env)

    _title("5. Search ignores case and accents: 'lefevre' finds 'LEFÈVRE'")
    _run(["directory", "search", "lefevre", "camille", "--limit", "5"], env)

    _title("6. Lifecycle: suspend, reactivate, and the history of every change")
    _run(["directory", "suspend", f"camille.lefevre@{DOMAIN}", "--reason", "card reported lost"], env)
    _run(["directory", "reactivate", f"camille.lefevre@{DOMAIN}", "--reason", "new card issued"], env)
    _run(["directory", "history", f"camille.lefevre@{DOMAIN}"], env)
    _run(["directory", "show", f"pharmacie.du-marche@{DOMAIN}"], env)
    _run(["certs", "list"], env)

    _title("7. An e-prescription, signed by the doctor and encrypted to the pharmacy (S/MIME)")
    prescription = workdir / "prescription.eml"
    prescription.write_bytes(PRESCRIPTION)
    signed, wire, clear = (workdir / name for name in ("signed.eml", "encrypted.eml", "decrypted.eml"))
    _run(["smime", "sign", "--as", f"camille.lefevre@{DOMAIN}", str(prescription), str(signed)], env)
    _run(["smime", "encrypt", "--to", f"pharmacie.du-marche@{DOMAIN}", str(signed), str(wire)], env)
    click.echo(f"What travels ({wire.name}): no subject, no patient name, only an encrypted blob:")
    click.echo("".join(f"    {line}\n" for line in wire.read_text().splitlines()[:11]) + "    ...")
    _run(["smime", "decrypt", "--as", f"pharmacie.du-marche@{DOMAIN}", str(wire), str(clear)], env)
    _run(["smime", "verify", str(clear)], env)

    click.echo()
    click.secho("Demo complete.", bold=True)
    click.echo(f"The demo operator stays in {workdir}; try: export MSSECURE_CONFIG={env['MSSECURE_CONFIG']}")
