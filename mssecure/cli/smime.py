"""``mssecure smime``: sign, encrypt, decrypt and verify messages by hand, as the relay does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import IO, Any

import click
from cryptography import x509

from mssecure.cli._context import CliContext
from mssecure.cli._output import echo_json
from mssecure.crypto import smime
from mssecure.crypto.cms import LEGACY, STRICT
from mssecure.crypto.pki import fingerprint
from mssecure.crypto.trust import TrustSpace
from mssecure.directory import Directory
from mssecure.errors import SignatureError

__all__ = ["smime_group"]

pass_cli = click.make_pass_decorator(CliContext)
_MAX_MESSAGE = 64 * 1024 * 1024


def _read(stream: IO[bytes]) -> bytes:
    data = stream.read(_MAX_MESSAGE + 1)
    if len(data) > _MAX_MESSAGE:
        raise SignatureError(f"message larger than {_MAX_MESSAGE // (1024 * 1024)} MiB")
    return data


def _keys(cli: CliContext, address: str, *, every: bool) -> list[tuple[x509.Certificate, Any]]:
    """ADDRESS's certificate and private key: the current one (to sign), or ``every`` one it ever had, newest first
    (to decrypt: mail encrypted to a superseded or revoked certificate stays readable)."""
    with cli.session() as session:
        service = cli.certificates(session)
        return service.decryption_keys(address) if every else [service.signing_key(address)]


@click.group("smime")
def smime_group() -> None:
    """S/MIME by hand: what the relay does to every message."""


@smime_group.command("sign")
@click.option("--as", "address", required=True, help="Sign with this local address's certificate.")
@click.argument("infile", type=click.File("rb"))
@click.argument("outfile", type=click.File("wb"))
@pass_cli
def sign(cli: CliContext, address: str, infile: IO[bytes], outfile: IO[bytes]) -> None:
    """Wrap the message IN as message/rfc822 and sign it (detached, SHA-256) into OUT."""
    message = _read(infile)
    ((certificate, key),) = _keys(cli, address, every=False)
    outfile.write(smime.sign(message, certificate, key, chain=[cli.material.ca_certificate()]))


@smime_group.command("encrypt")
@click.option("--to", "recipients", multiple=True, required=True, help="Encrypt to this address (repeatable).")
@click.argument("infile", type=click.File("rb"))
@click.argument("outfile", type=click.File("wb"))
@pass_cli
def encrypt(cli: CliContext, recipients: tuple[str, ...], infile: IO[bytes], outfile: IO[bytes]) -> None:
    """Encrypt the message IN (AES-256-CBC) to every recipient's certificate into OUT."""
    message = _read(infile)
    with cli.session() as session:
        service = cli.certificates(session)
        certificates = [service.for_encryption(address) for address in recipients]
    outfile.write(smime.encrypt(message, certificates))


@smime_group.command("decrypt")
@click.option("--as", "address", required=True, help="Decrypt with this local address's keys.")
@click.argument("infile", type=click.File("rb"))
@click.argument("outfile", type=click.File("wb"))
@pass_cli
def decrypt(cli: CliContext, address: str, infile: IO[bytes], outfile: IO[bytes]) -> None:
    """Decrypt the message IN with ADDRESS's keys into OUT (the decrypted MIME entity)."""
    message = _read(infile)
    for certificate, key in _keys(cli, address, every=True):
        try:
            outfile.write(smime.decrypt(message, certificate, key))
            return
        except SignatureError:
            continue
    raise SignatureError(f"the message is not encrypted to any certificate of {address}")


def _identity(book: Directory, address: str | None) -> dict[str, Any] | None:
    entry = book.find(address) if address else None
    if entry is None:
        return None
    return {
        "address": entry.address,
        "status": entry.status,
        "name": entry.to_data().display_name,
        "national_id": entry.national_id,
        "profession": entry.profession_label,
        "specialty": entry.specialty_label,
        "organization": entry.organization,
    }


@smime_group.command("verify")
@click.argument("infile", type=click.File("rb"))
@click.option("--at", "at", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), help="Validate as of (UTC).")
@click.option("--legacy", is_flag=True, help="Admit SHA-1 and RSA-1024 (old messages, checked as of a past date).")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def verify(cli: CliContext, infile: IO[bytes], at: datetime | None, legacy: bool, as_json: bool) -> None:
    """Verify the signed message IN against this operator's CA and CRL; exit 0 only when it is valid."""
    message = _read(infile)
    if smime.is_encrypted(message):
        raise SignatureError("the message is encrypted: decrypt it first (mssecure smime decrypt)")
    when = at.replace(tzinfo=UTC) if at else datetime.now(UTC)
    with cli.session() as session:
        space = TrustSpace(session, cli.config, actor=cli.operator_account)
        result = smime.verify(
            message,
            anchors=space.anchors(cli.material.ca_certificate()),
            crls=[cli.material.crl(), *space.crls()],
            at=when,
            policy=LEGACY if legacy else STRICT,
        )
        book = cli.directory(session, "smime verify")
        signers: list[dict[str, Any]] = [
            {
                "address": s.address,
                "valid": s.valid,
                "reasons": list(s.reasons),
                "signing_time": s.result.signing_time,
                "certificate_fingerprint": fingerprint(s.result.certificate) if s.result.certificate else None,
                "chain": [c.subject.rfc4514_string() for c in s.result.chain],
                "identity": _identity(book, s.address),
            }
            for s in result.signers
        ]
    # The caller's half of the decision: a valid signature from an address that is not an active directory entry
    # (suspended, revoked here, or unknown) is not a valid message.
    for signer in signers:
        identity = signer["identity"]
        if identity is None:
            signer["reasons"].append("the signer is not in the directory")
        elif identity["status"] != "active":
            signer["reasons"].append(f"the signer's directory entry is {identity['status']}")
        signer["valid"] = signer["valid"] and not signer["reasons"]
    valid = result.valid and any(signer["valid"] for signer in signers)
    report = {"valid": valid, "from": result.from_address, "reasons": list(result.reasons), "signers": signers}
    if as_json:
        echo_json(report)
    else:
        click.echo(("VALID" if valid else "INVALID") + f" signature, From {result.from_address}")
        for signer in signers:
            identity = signer["identity"] or {}
            mark = "ok " if signer["valid"] else "BAD"
            who = ", ".join(
                str(identity[k]) for k in ("name", "national_id", "profession", "organization") if identity.get(k)
            )
            click.echo(f"  [{mark}] {signer['address']}" + (f"  ({who})" if who else ""))
            for reason in signer["reasons"]:
                click.echo(f"        {reason}")
        for reason in result.reasons:
            click.echo(f"  {reason}")
    if not valid:
        raise click.exceptions.Exit(1)
