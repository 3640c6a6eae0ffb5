"""The relay's SMTP servers (aiosmtpd): thin handlers that turn SMTP into calls of the policy and the processor.

- ``SubmissionHandler``: mail clients, 587 (STARTTLS required) and 465 (implicit TLS). AUTH PLAIN/LOGIN only over
  TLS, checked off the event loop and rate-limited per login and per client IP; MAIL before AUTH is refused. A TLS
  client certificate issued by us to an active entry authenticates its owner too; ``auth.require_client_cert``
  makes it mandatory (and the password must then be the certificate owner's).
- ``InboundHandler``: peer operators, 25, STARTTLS required; before MAIL is accepted the client certificate must be
  the relay certificate of a trusted peer whose bundle lists the MAIL FROM domain.

Every refusal is a ``Refused`` turned into its reply in one place (``_reply``); anything unexpected is ``451 4.3.0``,
logged with its stack. Each decision is an event (``mssecure.smtp.events``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session, syntax
from cryptography import x509

from mssecure.config import Config
from mssecure.crypto.models import TrustedOperator
from mssecure.crypto.trust import relay_certificate_problems
from mssecure.errors import Refused
from mssecure.smtp import replies
from mssecure.smtp.auth import FailureLimiter, verify_password
from mssecure.smtp.events import Event, EventSink, digest
from mssecure.smtp.policy import (
    EntryView,
    PolicyView,
    check_bare_line_endings,
    check_inbound_recipient,
    check_inbound_sender,
    check_submission_recipient,
    check_submission_sender,
)
from mssecure.smtp.processing import DirectoryView, Processor
from mssecure.smtp.processing import Envelope as RelayEnvelope
from mssecure.smtp.queue import Claim, Queue

__all__ = ["InboundHandler", "RelaySMTP", "SubmissionHandler"]

log = logging.getLogger("mssecure.relay")


_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's replies, word for word
_TOO_MUCH = "552 Error: Too much mail data"


class RelaySMTP(SMTP):
    """aiosmtpd's server with asynchronous credential checks and certificate-based authentication."""

    def __init__(self, handler: Any, *, implicit_tls: bool = False, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.implicit_tls = implicit_tls
        self._certificate_checked = False

    def peer_certificate(self) -> bytes | None:
        """The DER client certificate of this TLS session (STARTTLS or implicit), if the client sent one."""
        ssl_object = None
        if self.session is not None and self.session.ssl is not None:
            ssl_object = self.session.ssl.get("ssl_object")
        elif self.implicit_tls and self.transport is not None:
            ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        der = ssl_object.getpeercert(binary_form=True)
        return bytes(der) if der else None

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, with the message read in blocks instead of line by line: an ``await``, a debug log call
        and a ``bytearray`` per line cost more CPU than the S/MIME of a 60 KB prescription. Same replies and
        order: 503 without RCPT, 501 with an argument, then once the data is drained (RFC 5321 §4.2.5) 500 for a
        line over ``line_length_limit`` or 552 over ``data_size_limit``, whichever came first."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, problem = await self._read_data()
        except asyncio.CancelledError:  # the connection was lost during DATA
            self._writer.close()
            raise
        if problem is not None:
            await self.push(problem)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> tuple[bytes, str | None]:
        """(message without the dot-stuffing of RFC 5321 §4.5.2, problem reply or None) up to the line ".".

        Blocks end at each ".<CRLF>" (``readuntil``) or where the reader's buffer is full (its limit error says how
        much is safe to take: never part of a ".<CRLF>"); a ".<CRLF>" ends the data when it starts the data or
        follows a CRLF. Lines are CRLF-separated as aiosmtpd splits them (a bare LF is inside a line)."""
        parts: list[bytes] = []
        size, seen, tail, line = 0, 0, b"", b""  # tail: the last 2 bytes read; line: the unfinished line
        problem: str | None = None
        while True:
            try:
                chunk = await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:
                chunk = await self._reader.readexactly(exc.consumed)
            preceding = chunk[-5:-3] if len(chunk) >= 5 else (tail + chunk[:-3])[-2:]
            done = chunk.endswith(b".\r\n") and ((seen == 0 and len(chunk) == 3) or preceding == b"\r\n")
            seen, tail = seen + len(chunk), chunk[-2:] if len(chunk) >= 2 else (tail + chunk)[-2:]
            if problem is None:  # else the data is only drained
                piece = chunk[:-3] if done else chunk
                text = line + piece
                lines = text.split(b"\r\n")
                line = lines.pop()
                complete = len(text) - len(line)
                if (max(map(len, lines), default=0) + 2 > self.line_length_limit
                        or len(line) > self.line_length_limit
                        or (self.data_size_limit and size + complete > self.data_size_limit)):  # fmt: skip
                    problem = self._first_problem(size, lines, line)
                size += complete
                parts.append(piece)
                if problem is not None:
                    parts.clear()
            if done:
                break
        if problem is not None:
            return b"", problem
        content = b"".join(parts)
        parts.clear()
        if content.startswith(b"."):
            content = content[1:]
        if b"\r\n." in content:
            content = content.replace(b"\r\n.", b"\r\n")
        return content, None

    def _first_problem(self, size: int, lines: list[bytes], unfinished: bytes) -> str | None:
        """Which limit aiosmtpd would report for these lines, in its order: a line longer than the reader's limit
        before its CRLF (it never sees it whole), else the total size, else the line with its CRLF."""
        limit = self.line_length_limit
        for line in lines:
            if len(line) > limit:
                return _TOO_LONG
            size += len(line) + 2
            if self.data_size_limit and size > self.data_size_limit:
                return _TOO_MUCH
            if len(line) + 2 > limit:
                return _TOO_LONG
        return _TOO_LONG if len(unfinished) > limit else None

    @property
    def has_tls(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    async def check_auth_needed(self, caller_method: str) -> bool:
        # A client certificate issued by us authenticates its owner, as SASL EXTERNAL would (RFC 4422 App. A).
        handler = self.event_handler
        if (
            self._auth_required
            and self.session is not None
            and not self.session.authenticated
            and not self._certificate_checked
            and isinstance(handler, SubmissionHandler)
            and self.has_tls
        ):
            self._certificate_checked = True
            owner = await handler.certificate_owner(self)
            if owner is not None and not handler.config.auth.require_client_cert:
                self.session.authenticated = True
                self.session.auth_data = LoginPassword(owner.encode(), b"")  # type: ignore[assignment]
                self.session.mssecure_actor = owner  # type: ignore[attr-defined]
        return await super().check_auth_needed(caller_method)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        credentials = await self._plain_credentials(args)
        if credentials is None:
            return AuthResult(success=False, handled=True)
        return await self._authenticate_async(*credentials)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        import base64
        import binascii

        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
        else:
            try:
                login = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        if not isinstance(login, bytes):
            return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._authenticate_async(login, password)

    async def _plain_credentials(self, args: list[str]) -> tuple[bytes, bytes] | None:
        import base64
        import binascii

        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return None
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Can't decode base64")
                return None
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Can't split auth value")
            return None
        _, login, password = parts  # RFC 4616: authzid NUL authcid NUL passwd; authzid ignored
        return login, password

    async def _authenticate_async(self, login: bytes, password: bytes) -> AuthResult:
        handler = self.event_handler
        assert isinstance(handler, SubmissionHandler)
        reply = await handler.authenticate(self, login, password)
        if reply is None:
            return AuthResult(success=True, auth_data=LoginPassword(login, b""), message=str(replies.AUTH_OK))
        return AuthResult(success=False, handled=False, message=str(reply))


def _network(peer: str) -> str:
    """The client's network for rate limiting: its IPv4 address, or its IPv6 /64 (one host holds a whole /64)."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _shown_login(login: str) -> str:
    """The login as the log may show it: an address, or a placeholder (a password typed in the user name field
    must not reach the log)."""
    return login if policy_address(login) else "<not an address>"


_ADDRESS = re.compile(r"[^\s@\x00-\x1f\x7f]{1,64}@[a-z0-9.-]{1,253}")


def policy_address(value: str) -> bool:
    return _ADDRESS.fullmatch(value) is not None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_address(address: str) -> None:
    """No control character in an envelope address (it would end up in a header: Return-Path)."""
    if _CONTROL.search(address):
        raise Refused(replies.BAD_ADDRESS, "control character in an envelope address")


def _reply(error: Refused) -> str:
    return str(error.reply)


class _Handler:
    """What both handlers share: the processor and queue, the events, the limits, and running work off the loop."""

    kind = "smtp"

    def __init__(
        self,
        config: Config,
        processor: Processor,
        queue: Queue,
        events: EventSink,
        *,
        on_queued: Callable[[Sequence[Claim]], None] = lambda claims: None,
    ) -> None:
        self.config = config
        self.processor = processor
        self.queue = queue
        self.events = events
        self.on_queued = on_queued

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(function, *args)

    def _peer(self, session: Session) -> str | None:
        peer = session.peer
        return str(peer[0]) if isinstance(peer, tuple) else None

    async def _guard(self, session: Session, step: Callable[[], Awaitable[str]], **context: Any) -> str:
        try:
            return await step()
        except Refused as refusal:
            self.events(Event(f"{self.kind}.refused", "refused", peer=self._peer(session), reason=refusal.reason,
                              reply=_reply(refusal), **context))  # fmt: skip
            return _reply(refusal)
        except Exception:
            log.exception("unexpected error in %s", self.kind)
            return str(replies.TEMPORARY_FAILURE)

    def _view_check(self, check: Callable[..., Any], *args: Any) -> Any:
        with self.processor.sessions() as session:
            return check(*args, DirectoryView(session, self.config))

    recipient_check: Callable[[str, PolicyView], EntryView]  # the policy's check of RCPT TO for this listener

    async def handle_RCPT(
        self, server: RelaySMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        async def step() -> str:
            _check_address(address)
            if len(envelope.rcpt_tos) >= self.config.smtp.max_recipients:
                raise Refused(replies.TOO_MANY_RECIPIENTS)
            await self._run(self._view_check, self.recipient_check, address)
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            return str(replies.RECIPIENT_OK)

        actor = getattr(session, "mssecure_actor", None)
        return await self._guard(session, step, actor=actor, sender=envelope.mail_from, recipients=(address.lower(),))

    async def _accept_data(
        self, server: RelaySMTP, session: Session, envelope: Envelope, process: Callable[[RelayEnvelope], Any]
    ) -> str:
        data = envelope.original_content or b""
        sender = (envelope.mail_from or "").lower()
        recipients = tuple(r.lower() for r in envelope.rcpt_tos)
        actor = getattr(session, "mssecure_actor", None) or ""
        context: dict[str, Any] = {"actor": actor, "sender": sender, "recipients": recipients}

        async def step() -> str:
            await self._run(check_bare_line_endings, data)
            relay_envelope = RelayEnvelope(sender, recipients, data, actor)
            items = await self._run(process, relay_envelope)
            message_id = next((i.message_id for i in items if i.message_id), None)
            sha256 = await self._run(digest, data)
            peer = self._peer(session)

            def accepted(queue_ids: list[str]) -> list[Event]:
                # What processing did, then the acceptance itself: archived in the queue's transaction, so a
                # message is queued if and only if the archive says it was accepted.
                done = [replace(e, queue_id=e.queue_id or ",".join(queue_ids)) for e in relay_envelope.trail]
                reply = replies.QUEUED.with_text(f"queued as {queue_ids[0] if queue_ids else 'nothing'}")
                return [*done, Event(f"{self.kind}.accepted", "ok", peer=peer, queue_id=",".join(queue_ids),
                                     message_id=message_id, sha256=sha256, reply=str(reply), body=data,
                                     copy="received", **context)]  # fmt: skip

            queue_ids, claims = await self._run(self.queue.accept, items, accepted)
            self.on_queued(claims)  # the delivery worker starts on them at once
            return str(replies.QUEUED.with_text(f"queued as {queue_ids[0] if queue_ids else 'nothing'}"))

        return await self._guard(session, step, **context)


class SubmissionHandler(_Handler):
    kind = "submission"
    recipient_check = staticmethod(check_submission_recipient)

    def __init__(self, *args: Any, limiter: FailureLimiter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limiter = limiter

    async def certificate_owner(self, server: RelaySMTP) -> str | None:
        der = server.peer_certificate()
        if der is None:
            return None
        owner: str | None = await self._run(self.processor.client_certificate_owner, der)
        if owner is not None and server.session is not None:
            server.session.mssecure_certificate_owner = owner  # type: ignore[attr-defined]
        return owner

    async def authenticate(self, server: RelaySMTP, login_bytes: bytes, password: bytes) -> replies.Reply | None:
        """None when ``login``/``password`` may submit, else the reply refusing them."""
        session = server.session
        assert session is not None
        login = login_bytes.decode("utf-8", "replace").strip().lower()
        peer = self._peer(session) or "unknown"
        # Failures count per (login, client network) and per client network: guessing from one place is stopped,
        # and nobody elsewhere can lock the owner out of an address by failing on purpose.
        network = _network(peer)
        keys = (f"login:{login}|{network}", f"net:{network}")
        if self.limiter.blocked(*keys):
            self.events(Event("auth.refused", "refused", actor=_shown_login(login), peer=peer, reason="rate limited"))
            return replies.TOO_MANY_AUTH_FAILURES
        self.limiter.begin(*keys)
        try:
            stored = await self._run(self.processor.password_hash, login)
            valid = await self._run(verify_password, stored, password)
        finally:
            self.limiter.end(*keys)
        if not valid:
            self.limiter.failed(*keys)
            self.events(Event("auth.failed", "refused", actor=_shown_login(login), peer=peer, reason="bad credentials"))
            return replies.AUTH_INVALID
        if self.config.auth.require_client_cert:
            owner = await self.certificate_owner(server)
            if owner is None:
                self.events(Event("auth.failed", "refused", actor=login, peer=peer, reason="no client certificate"))
                return replies.CLIENT_CERT_REQUIRED
            if owner != login:
                self.events(Event("auth.failed", "refused", actor=login, peer=peer,
                                  reason=f"client certificate of {owner}"))  # fmt: skip
                return replies.CLIENT_CERT_MISMATCH
        self.limiter.succeeded(keys[0])
        session.mssecure_actor = login  # type: ignore[attr-defined]
        self.events(Event("auth.ok", "ok", actor=login, peer=peer))
        return None

    def _actor(self, session: Session) -> str:
        return str(getattr(session, "mssecure_actor", ""))

    async def handle_MAIL(
        self, server: RelaySMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        actor = self._actor(session)

        async def step() -> str:
            _check_address(address)
            await self._run(self._view_check, check_submission_sender, actor, address)
            envelope.mail_from = address
            envelope.mail_options.extend(options)
            return str(replies.SENDER_OK)

        return await self._guard(session, step, actor=actor, sender=address.lower())

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        return await self._accept_data(server, session, envelope, self.processor.submission)


class InboundHandler(_Handler):
    kind = "inbound"
    recipient_check = staticmethod(check_inbound_recipient)
    VERDICT_SECONDS = 60.0  # how long a checked relay certificate is taken as checked (same CA, CRL, host name)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (certificate, CA, CRL, host name) → (until, problems): path validation cost more than the message's
        # DKIM; the operators are still read for every MAIL, so a peer leaving the trust space is refused at once
        # and a new CRL is checked at once.
        self._verdicts: dict[tuple[bytes, str, bytes | None, str], tuple[float, tuple[str, ...]]] = {}

    def _relay_problems(self, der: bytes, certificate: x509.Certificate, operator: TrustedOperator,
                        ca: x509.Certificate, now: datetime) -> tuple[str, ...]:  # fmt: skip
        key = (der, operator.ca_pem, operator.crl_der, operator.hostname)
        found = self._verdicts.get(key)
        if found is not None and found[0] > time.monotonic():
            return found[1]
        crls = [x509.load_der_x509_crl(operator.crl_der)] if operator.crl_der else []
        problems = relay_certificate_problems(certificate, operator.hostname, [ca], role="client", at=now, crls=crls)
        if len(self._verdicts) >= 256:
            self._verdicts.clear()
        self._verdicts[key] = (time.monotonic() + self.VERDICT_SECONDS, problems)
        return problems

    def _peer_operator(self, der: bytes | None) -> TrustedOperator | None:
        """The trusted operator whose relay certificate ``der`` is (chain, validity, clientAuth, its relay host
        name, not revoked by its CRL, not an S/MIME certificate), or None."""
        if der is None:
            return None
        try:
            certificate = x509.load_der_x509_certificate(der)
        except ValueError:
            return None
        now = self.processor.clock()
        with self.processor.sessions() as session:
            for operator in session.scalars(sa.select(TrustedOperator)):
                ca = x509.load_pem_x509_certificate(operator.ca_pem.encode())
                if certificate.issuer != ca.subject:
                    continue
                problems = self._relay_problems(der, certificate, operator, ca, now)
                if problems:
                    log.info("client certificate refused for %s: %s", operator.domain, "; ".join(problems))
                    continue
                session.expunge(operator)
                return operator
        return None

    async def handle_MAIL(
        self, server: RelaySMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        async def step() -> str:
            _check_address(address)
            der = server.peer_certificate()
            if der is None:
                raise Refused(replies.PEER_CERT_REQUIRED, "no client certificate")
            operator = await self._run(self._peer_operator, der)
            if operator is None:
                raise Refused(replies.PEER_CERT_UNTRUSTED, "client certificate is not a trusted relay's")
            check_inbound_sender(address, frozenset(operator.domains))
            session.mssecure_actor = operator.domain  # type: ignore[attr-defined]
            session.mssecure_peer_domains = frozenset(operator.domains)  # type: ignore[attr-defined]
            envelope.mail_from = address
            envelope.mail_options.extend(options)
            return str(replies.SENDER_OK)

        return await self._guard(session, step, sender=address.lower())

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        domains: frozenset[str] = getattr(session, "mssecure_peer_domains", frozenset())

        def process(relay_envelope: RelayEnvelope) -> Any:
            return self.processor.inbound(relay_envelope, domains)

        return await self._accept_data(server, session, envelope, process)


def monotonic() -> float:
    return time.monotonic()


def smtp_factory(
    handler: _Handler,
    config: Config,
    *,
    tls_context: Callable[[], ssl.SSLContext],
    implicit_tls: bool = False,
    auth_required: bool,
) -> Callable[[], RelaySMTP]:
    def factory() -> RelaySMTP:
        with warnings.catch_warnings():
            # Implicit TLS (465): the connection is TLS before the first byte, so AUTH "without TLS" cannot happen;
            # aiosmtpd cannot know it and warns.
            warnings.simplefilter("ignore")
            return _make()

    def _make() -> RelaySMTP:
        return RelaySMTP(
            handler,
            implicit_tls=implicit_tls,
            hostname=config.operator.hostname,
            ident="mssecure",
            data_size_limit=config.smtp.max_message_size,
            tls_context=None if implicit_tls else tls_context(),
            require_starttls=not implicit_tls,
            timeout=config.smtp.idle_timeout,
            auth_required=auth_required,
            auth_require_tls=not implicit_tls,
            auth_exclude_mechanism=None if auth_required else ["LOGIN", "PLAIN"],
            command_call_limit=config.smtp.max_commands,
        )

    return factory
