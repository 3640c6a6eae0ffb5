"""Submitting a composed message to the operator's relay, as a mail client does: the network side of ``mssecure send``.

SMTP submission (RFC 6409) on the submission port with STARTTLS (RFC 3207), or on the submissions port over implicit
TLS (RFC 8314 §3.3). The server certificate is verified against the operator's CA — never the system's CAs, never
skipped — and must name the relay host, which may differ from the address connected to (``Endpoint.tls_name``: a
client reaching ``127.0.0.1`` checks ``mail.<domain>``). Nothing is sent before TLS: a server that does not offer
STARTTLS is refused, not used in clear.

Credentials: AUTH PLAIN (RFC 4616, UTF-8) with the login and password, and/or a TLS client certificate issued by the
operator (the PKCS#12 of ``mssecure certs export-p12``), which the relay takes as the credential of its owner (or
requires besides the password in its strong mode, ``auth.require_client_cert``). The password is sent once, inside
TLS, and appears in no exception, log line or output of this module.

Two kinds of failure, which the CLI maps to different exit statuses:

- ``SubmitError``: the message could not be handed over — connection refused or timed out, TLS or certificate
  verification failed, the server lacks STARTTLS, AUTH or 8BITMIME, the message is above its SIZE, a PKCS#12 does
  not open. Nothing was submitted.
- ``SubmissionRefused``: the server answered no (its reply is kept): a 535 to AUTH, a refused MAIL FROM or DATA.
  Recipients refused one by one are not an exception: ``SubmitResult.refused`` lists them with their replies.
"""

from __future__ import annotations

import base64
import re
import secrets
import smtplib
import socket
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from mssecure.crypto.keys import create_private_file
from mssecure.errors import MssecureError

__all__ = [
    "ClientCertificate",
    "Credentials",
    "Endpoint",
    "ServerReply",
    "SubmissionRefused",
    "SubmitError",
    "SubmitResult",
    "load_pkcs12",
    "submit",
    "tls_context",
]

DEFAULT_TIMEOUT = 60.0
_QUEUED_RE = re.compile(r"\bqueued as (\S+)", re.IGNORECASE)


class SubmitError(MssecureError):
    """The message could not be handed to the relay (connection, TLS, missing server feature): nothing was sent."""


@dataclass(frozen=True)
class ServerReply:
    """One SMTP reply: its code and its text (the enhanced status code first, as our relay writes it)."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()

    @staticmethod
    def of(code: int, message: bytes | str) -> ServerReply:
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        return ServerReply(code, " ".join(text.split()))


class SubmissionRefused(MssecureError):
    """The relay refused the submission at ``stage`` (``AUTH``, ``MAIL FROM``, ``DATA``…) with ``reply``."""

    def __init__(self, stage: str, reply: ServerReply) -> None:
        super().__init__(f"the server refused {stage}: {reply}")
        self.stage = stage
        self.reply = reply


@dataclass(frozen=True)
class Endpoint:
    """Where the relay's submission listener is: the host connected to, its port, the name its certificate must
    carry, and whether TLS starts at once (465) or after STARTTLS (587)."""

    host: str
    port: int
    tls_name: str
    implicit_tls: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ClientCertificate:
    """A professional's TLS client credential, from a PKCS#12: certificate, private key, and the chain above it."""

    certificate: x509.Certificate
    key: PrivateKeyTypes = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        """The e-mail addresses of the certificate's subjectAltName (whom the relay will take it for)."""
        try:
            names = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return ()
        return tuple(names.get_values_for_type(x509.RFC822Name))


@dataclass(frozen=True)
class Credentials:
    """How to authenticate: ``login`` and ``password`` for AUTH PLAIN (``password`` None: no AUTH, the client
    certificate alone stands for its owner), ``client`` the certificate presented in the TLS handshake."""

    login: str
    password: str | None = field(default=None, repr=False)
    client: ClientCertificate | None = None


@dataclass(frozen=True)
class SubmitResult:
    """What the relay answered: the reply to DATA (None when no recipient was accepted), and each recipient's fate."""

    reply: ServerReply | None
    accepted: tuple[str, ...]
    refused: tuple[tuple[str, ServerReply], ...]

    @property
    def queue_id(self) -> str | None:
        """The relay's queue id, from ``250 2.0.0 queued as <id>``."""
        found = _QUEUED_RE.search(self.reply.text) if self.reply else None
        return found.group(1) if found else None

    @property
    def complete(self) -> bool:
        """Accepted for every recipient."""
        return self.reply is not None and self.reply.code == 250 and not self.refused


def load_pkcs12(data: bytes, password: bytes, *, name: str = "the PKCS#12 file") -> ClientCertificate:
    """The certificate and key in a PKCS#12 (``SubmitError`` if it does not open or holds no key and certificate)."""
    try:
        key, certificate, chain = pkcs12.load_key_and_certificates(data, password)
    except ValueError:
        raise SubmitError(f"cannot open {name}: wrong password, or not a PKCS#12 file") from None
    if key is None or certificate is None:
        raise SubmitError(f"{name} holds no certificate with its private key")
    return ClientCertificate(certificate, key, tuple(chain))


def tls_context(
    ca_pem: bytes, client: ClientCertificate | None = None, *, ca_name: str = "the CA file"
) -> ssl.SSLContext:
    """A client context that trusts only the operator CA(s) in ``ca_pem``, checks the host name, speaks TLS 1.2 or
    newer (as the relay), and presents ``client`` when given."""
    try:
        anchors = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise SubmitError(f"{ca_name} holds no PEM certificate (expected the operator's ca.crt)") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED are its defaults
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(
        cadata="".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in anchors)
    )
    if client is not None:
        _load_client_certificate(context, client)
    return context


def _load_client_certificate(context: ssl.SSLContext, client: ClientCertificate) -> None:
    """``ssl`` reads certificates and keys only from files: write them for the time of loading, the key encrypted
    under a one-time secret, in a private temporary directory removed right after."""
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32))
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (client.certificate, *client.chain))
    key = client.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(secret),
    )
    with tempfile.TemporaryDirectory(prefix="mssecure-send-") as directory:
        certificate_path, key_path = Path(directory) / "client.crt", Path(directory) / "client.key"
        create_private_file(certificate_path, chain)
        create_private_file(key_path, key)
        try:
            context.load_cert_chain(certificate_path, key_path, password=secret)
        except ssl.SSLError as error:
            raise SubmitError(f"the client certificate cannot be used: {error.reason or error}") from None


class _Client(smtplib.SMTP):
    """smtplib's client, connecting to ``Endpoint.host`` while TLS checks the certificate against
    ``Endpoint.tls_name`` (smtplib would use one name for both)."""

    def __init__(self, endpoint: Endpoint, context: ssl.SSLContext, timeout: float) -> None:
        self._endpoint = endpoint
        self._context = context
        # EHLO with the local host name as the system knows it (no DNS lookup, which can stall: smtplib's getfqdn).
        super().__init__(local_hostname=socket.gethostname() or "localhost", timeout=timeout)
        self._host = endpoint.tls_name  # what smtplib's starttls() checks the certificate against

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((self._endpoint.host, port), timeout, self.source_address)
        if not self._endpoint.implicit_tls:
            return sock
        try:
            return self._context.wrap_socket(sock, server_hostname=self._endpoint.tls_name)
        except BaseException:
            sock.close()
            raise


def submit(
    data: bytes,
    *,
    sender: str,
    recipients: Sequence[str],
    endpoint: Endpoint,
    context: ssl.SSLContext,
    credentials: Credentials,
    timeout: float = DEFAULT_TIMEOUT,
) -> SubmitResult:
    """Submit ``data`` from ``sender`` to ``recipients``; ``SubmitError`` or ``SubmissionRefused`` when not done.

    One transaction: TLS (verified), EHLO, AUTH if a password is given, MAIL FROM with SIZE (RFC 1870) and, for
    8-bit content, BODY=8BITMIME (RFC 6152), one RCPT TO per recipient, DATA when at least one was accepted.
    """
    if not recipients:
        raise SubmitError("no recipient to submit to")
    client = _Client(endpoint, context, timeout)
    stage = ["connection"]
    try:
        with _translated(endpoint, stage):
            code, message = client.connect(endpoint.tls_name, endpoint.port)
            if code != 220:
                raise SubmissionRefused("the connection", ServerReply.of(code, message))
            _ehlo(client, stage)
            if not endpoint.implicit_tls:
                stage[0] = "STARTTLS"
                if not client.has_extn("starttls"):
                    raise SubmitError(f"{endpoint} does not offer STARTTLS: refusing to submit in clear")
                client.starttls(context=context)
                _ehlo(client, stage)
            if credentials.password is not None:
                stage[0] = "AUTH"
                _auth_plain(client, endpoint, credentials.login, credentials.password)
            stage[0] = "MAIL FROM"
            code, message = client.mail(sender, _mail_options(client, endpoint, data))
            if code != 250:
                raise SubmissionRefused("MAIL FROM", ServerReply.of(code, message))
            accepted: list[str] = []
            refused: list[tuple[str, ServerReply]] = []
            stage[0] = "RCPT TO"
            for recipient in recipients:
                code, message = client.rcpt(recipient)
                if code in (250, 251):
                    accepted.append(recipient)
                else:
                    refused.append((recipient, ServerReply.of(code, message)))
            if not accepted:
                client.rset()
                client.quit()
                return SubmitResult(None, (), tuple(refused))
            stage[0] = "DATA"
            code, message = client.data(data)
            if code != 250:
                raise SubmissionRefused("DATA", ServerReply.of(code, message))
            result = SubmitResult(ServerReply.of(code, message), tuple(accepted), tuple(refused))
            stage[0] = "QUIT"
            with suppress(smtplib.SMTPException, OSError):  # queued already: a lost QUIT changes nothing
                client.quit()
            return result
    finally:
        client.close()


def _ehlo(client: _Client, stage: list[str]) -> None:
    stage[0] = "EHLO"
    code, message = client.ehlo()
    if code != 250:
        raise SubmissionRefused("EHLO", ServerReply.of(code, message))


def _auth_plain(client: _Client, endpoint: Endpoint, login: str, password: str) -> None:
    """One AUTH PLAIN (RFC 4616) with UTF-8 credentials. Not smtplib's ``login()``: it encodes them as ASCII and,
    on failure, tries every other mechanism offered, each one more failure counted against the address."""
    mechanisms = client.esmtp_features.get("auth", "").upper().split()
    if "PLAIN" not in mechanisms:
        raise SubmitError(f"{endpoint} does not offer AUTH PLAIN over TLS (offered: {' '.join(mechanisms) or 'none'})")
    token = base64.b64encode(b"\0" + login.encode("utf-8") + b"\0" + password.encode("utf-8")).decode("ascii")
    code, message = client.docmd("AUTH", "PLAIN " + token)
    if code not in (235, 503):  # 503: already authenticated, by the client certificate
        raise SubmissionRefused("AUTH", ServerReply.of(code, message))


def _mail_options(client: _Client, endpoint: Endpoint, data: bytes) -> list[str]:
    options: list[str] = []
    if client.has_extn("size"):
        advertised = client.esmtp_features["size"].strip()
        limit = int(advertised) if advertised.isdigit() else 0
        if limit and len(data) > limit:
            raise SubmitError(f"the message is {len(data)} bytes; {endpoint} accepts at most {limit} (SIZE)")
        options.append(f"SIZE={len(data)}")
    if not data.isascii():
        if not client.has_extn("8bitmime"):
            raise SubmitError(f"{endpoint} does not accept 8-bit content (no 8BITMIME)")
        options.append("BODY=8BITMIME")
    return options


@contextmanager
def _translated(endpoint: Endpoint, stage: list[str]) -> Iterator[None]:
    """smtplib's, ssl's and socket's exceptions as our two, each one line an operator can act on."""
    try:
        yield
    except (SubmitError, SubmissionRefused):
        raise
    except smtplib.SMTPResponseException as error:
        raise SubmissionRefused(stage[0], ServerReply.of(error.smtp_code, error.smtp_error)) from None
    except smtplib.SMTPServerDisconnected:
        raise SubmitError(f"{endpoint} closed the connection during {stage[0]}") from None
    except smtplib.SMTPException as error:
        raise SubmitError(f"{endpoint}: {stage[0]} failed: {error}") from None
    except ssl.SSLCertVerificationError as error:
        raise SubmitError(
            f"the certificate of {endpoint} cannot be trusted for {endpoint.tls_name}: {error.verify_message} "
            "(check --ca, the operator's CA, and --tls-name, the relay's host name)"
        ) from None
    except ssl.SSLError as error:
        raise SubmitError(f"TLS with {endpoint} failed: {error.reason or error}") from None
    except TimeoutError:
        raise SubmitError(f"{endpoint} did not answer in time ({stage[0]})") from None
    except OSError as error:
        raise SubmitError(f"cannot connect to {endpoint}: {error.strerror or error}") from None
