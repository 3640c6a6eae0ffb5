"""``mssecure certs``: S/MIME certificates of directory entries, the CRL, PKCS#12 for mail clients."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from mssecure.cli._context import CliContext
from mssecure.cli._output import echo_json, echo_table
from mssecure.crypto.keys import write_private_file
from mssecure.crypto.models import CertificateRecord
from mssecure.crypto.pki import REVOCATION_REASONS
from mssecure.errors import CertificateError

__all__ = ["certs"]

pass_cli = click.make_pass_decorator(CliContext)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
_REASONS = [r for r in REVOCATION_REASONS if r != "certificateHold"]
_KEY_TYPE_HELP = (
    "rsa: RSA-2048, signs and receives encrypted mail. p256: ECDSA P-256, signs only: mssecure (and any sender "
    "limited to RSA key transport) cannot encrypt mail to it, so give p256 only to addresses that never receive "
    "encrypted mail."
)
_P256_NOTE = (
    "Note: a P-256 certificate can sign, but mssecure cannot encrypt mail to it (RSA recipients only); "
    "`mssecure certs renew {address} --key-type rsa` if this address must receive encrypted mail."
)


def record_json(record: CertificateRecord, *, pem: bool = False) -> dict[str, Any]:
    values: dict[str, Any] = {
        "serial": record.serial,
        "address": record.address,
        "purpose": record.purpose,
        "status": record.status,
        "subject": record.subject,
        "issuer": record.issuer,
        "key_type": record.key_type,
        "not_before": record.not_before,
        "not_after": record.not_after,
        "fingerprint_sha256": record.fingerprint,
        "revoked_at": record.revoked_at,
        "revocation_reason": record.revocation_reason,
    }
    if pem:
        values["certificate_pem"] = record.certificate_pem
    return values


def _table(records: list[CertificateRecord]) -> None:
    echo_table(
        ("serial", "address", "status", "key", "not after (utc)", "reason"),
        (
            (r.serial, r.address, r.status, r.key_type, r.not_after.strftime("%Y-%m-%d %H:%M"), r.revocation_reason)
            for r in records
        ),
    )


@click.group()
def certs() -> None:
    """S/MIME certificates issued by the operator CA to directory entries."""


@certs.command("issue")
@click.argument("address")
@click.option("--key-type", type=click.Choice(["rsa", "p256"]), default="rsa", show_default=True, help=_KEY_TYPE_HELP)
@click.option("--days", type=click.IntRange(1, 3650), help="Validity (default: pki.smime_validity_days).")
@json_option
@pass_cli
def issue(cli: CliContext, address: str, key_type: str, days: int | None, as_json: bool) -> None:
    """Issue an S/MIME certificate (and its key) to the active local entry ADDRESS."""
    with cli.session() as session:
        record = cli.certificates(session).issue(address, key_type=key_type, days=days)  # type: ignore[arg-type]
        result = record_json(record)
        cli.record(session, "certificate.issued", recipients=(record.address,),
                   reason=f"serial {record.serial}, {key_type}")  # fmt: skip
    if as_json:
        echo_json(result)
    else:
        click.echo(
            f"Issued certificate {result['serial']} to {result['address']}, valid until {result['not_after']:%Y-%m-%d}."
        )
        if key_type == "p256":
            click.echo(_P256_NOTE.format(address=result["address"]), err=True)


@certs.command("list")
@click.option("--address")
@click.option("--status", type=click.Choice(["valid", "hold", "revoked"]))
@click.option("--expiring-within", type=click.IntRange(min=0), metavar="DAYS", help="Not revoked, expiring soon.")
@json_option
@pass_cli
def list_(cli: CliContext, address: str | None, status: str | None, expiring_within: int | None, as_json: bool) -> None:
    """List certificates."""
    with cli.session() as session:
        records = list(
            cli.certificates(session).records(address=address, status=status, expiring_within=expiring_within)
        )
        if as_json:
            echo_json([record_json(r) for r in records])
        elif records:
            _table(records)
        else:
            click.echo("No certificate.", err=True)


@certs.command("show")
@click.argument("serial_or_address", metavar="SERIAL|ADDRESS|FINGERPRINT")
@click.option("--pem", is_flag=True, help="Print the certificate itself (PEM).")
@json_option
@pass_cli
def show(cli: CliContext, serial_or_address: str, pem: bool, as_json: bool) -> None:
    """Show the certificate SERIAL (refused when certificates of several issuers share it) or FINGERPRINT (SHA-256),
    or the newest certificate of ADDRESS."""
    with cli.session() as session:
        record = cli.certificates(session).find(serial_or_address)[0]
        values = record_json(record, pem=pem or as_json)
    if as_json:
        echo_json(values)
    elif pem:
        click.echo(values["certificate_pem"], nl=False)
    else:
        for key, value in values.items():
            if value is not None:
                click.echo(f"{key.replace('_', ' '):<20}{value}")


@certs.command("renew")
@click.argument("address")
@click.option(
    "--key-type", type=click.Choice(["rsa", "p256"]), help=f"Default: as the previous certificate. {_KEY_TYPE_HELP}"
)
@json_option
@pass_cli
def renew(cli: CliContext, address: str, key_type: str | None, as_json: bool) -> None:
    """Issue a new certificate (new key) to ADDRESS and revoke the previous ones as superseded."""
    with cli.session() as session:
        renewal = cli.certificates(session).renew(address, key_type=key_type)  # type: ignore[arg-type]
        new, superseded = record_json(renewal.new), [r.serial for r in renewal.old]
        cli.record(session, "certificate.renewed", recipients=(renewal.new.address,),
                   reason=f"serial {renewal.new.serial}; superseded: {', '.join(superseded) or 'none'}")  # fmt: skip
    if as_json:
        echo_json({"new": new, "superseded": superseded})
    else:
        click.echo(f"Issued {new['serial']}; superseded: {', '.join(superseded) or 'none'}.")
        if new["key_type"] == "p256":
            click.echo(_P256_NOTE.format(address=new["address"]), err=True)


@certs.command("revoke")
@click.argument("address", required=False)
@click.option("--serial", help="Revoke this certificate only (hex serial number).")
@click.option("--fingerprint", help="Revoke this certificate only (SHA-256 fingerprint, when a serial is ambiguous).")
@click.option("--reason", type=click.Choice(_REASONS), required=True)
@pass_cli
def revoke(cli: CliContext, address: str | None, serial: str | None, fingerprint: str | None, reason: str) -> None:
    """Revoke every certificate of ADDRESS, or one by --serial or --fingerprint; the CRL is republished."""
    given = [value for value in (address, serial, fingerprint) if value]
    if len(given) != 1:
        raise click.UsageError("give one of ADDRESS, --serial or --fingerprint")
    if serial and "@" in serial:
        raise click.UsageError("--serial takes a serial number, not an address")
    if fingerprint and not re.fullmatch(r"[0-9A-Fa-f]{64}", fingerprint.replace(":", "").replace(" ", "")):
        raise click.UsageError("--fingerprint takes a SHA-256 fingerprint (64 hex digits, colons allowed)")
    with cli.session() as session:
        records = cli.certificates(session).revoke(given[0], reason=reason)
        serials = [r.serial for r in records]
        cli.record(session, "certificate.revoked", recipients=tuple(sorted({r.address for r in records})),
                   reason=f"{reason}: {', '.join(serials)}")  # fmt: skip
    click.echo(f"Revoked {', '.join(serials)} ({reason}); CRL republished.")


@certs.command("crl")
@pass_cli
def crl(cli: CliContext) -> None:
    """Regenerate the CRL file (also done on every revocation, suspension and reactivation)."""
    with cli.session() as session:
        path = cli.certificates(session).publish_crl()
        cli.record(session, "crl.published", reason=str(path.name))
    click.echo(f"CRL written to {path}; publish it at {cli.config.crl_url}")


def _read_password(password_file: Path | None) -> bytes:
    if password_file is not None:
        lines = password_file.read_bytes().splitlines()
        if not lines or not lines[0]:
            raise CertificateError(f"{password_file} holds no password on its first line")
        return lines[0]
    return str(click.prompt("PKCS#12 password", hide_input=True, confirmation_prompt=True)).encode()


@certs.command("export-p12")
@click.argument("address")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the password from the first line of this file (default: prompt).",
)
@pass_cli
def export_p12(cli: CliContext, address: str, out: Path, password_file: Path | None) -> None:
    """Write ADDRESS's certificate, key and our CA as a PKCS#12 file for Thunderbird or Outlook."""
    if out.exists():
        raise CertificateError(f"{out} already exists: refusing to overwrite it")
    password = _read_password(password_file)
    with cli.session() as session:
        data = cli.certificates(session).export_p12(address, password)
        # The key leaves the operator: recorded (the password never is).
        cli.record(session, "certificate.exported", recipients=(address.strip().lower(),), reason="PKCS#12 with key")
    write_private_file(out, data)
    click.echo(f"Wrote {out} (mode 0600); import it in the mail client with its password.", err=True)
