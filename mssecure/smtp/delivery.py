"""The delivery workers: claim due recipients from the queue, deliver them locally (Maildir) or to the peer
operator's relay (aiosmtplib, STARTTLS with our client certificate, the peer verified against its trust bundle),
and record the outcome: delivered, deferred (retried on the schedule) or bounced (one DSN to the sender).

Never a fallback to clear text or to an unverified peer: a TLS failure is a deferral like a connection refused.
Crypto, database and disk work run in threads, off the event loop. A connection to a peer stays open for the next
message for a few seconds (as Postfix's connection cache does): a mutual TLS handshake per message cost both relays
more CPU than the message's S/MIME and DKIM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import aiosmtplib
import sqlalchemy as sa
from cryptography import x509
from sqlalchemy.orm import Session, sessionmaker

from mssecure.crypto.authority import OperatorMaterial
from mssecure.crypto.models import TrustedOperator
from mssecure.db import utcnow
from mssecure.errors import QueueError
from mssecure.smtp.events import Event, EventSink
from mssecure.smtp.maildir import Maildirs
from mssecure.smtp.notifications import FailedRecipient
from mssecure.smtp.processing import Processor
from mssecure.smtp.queue import LEASE, Claim, Outgoing, Queue
from mssecure.smtp.tls import client_context

__all__ = ["DeliveryWorker"]

log = logging.getLogger("mssecure.delivery")


@dataclass(frozen=True)
class _Peer:
    domain: str
    hostname: str
    host: str
    port: int
    ca_pem: str


REUSE_IDLE = 5.0  # seconds an open connection to a peer waits for the next message (Postfix's default: 2 s)
REUSE_COUNT = 100  # messages per connection, then a new one (and a new handshake)


@dataclass
class _Open:
    """A connection to a peer's relay, STARTTLS done, between two messages."""

    client: aiosmtplib.SMTP
    sent: int = 0
    idle_since: float = 0.0


class _Connections:
    """Open connections per peer (domain, address and CA: a changed trust bundle never reuses an old one)."""

    def __init__(self, *, idle: float = REUSE_IDLE, count: int = REUSE_COUNT) -> None:
        self.idle, self.count = idle, count
        self._open: dict[tuple[str, str, int, str], list[_Open]] = {}

    def take(self, key: tuple[str, str, int, str]) -> _Open | None:
        now = time.monotonic()
        found = self._open.get(key, [])
        while found:
            connection = found.pop()
            if connection.client.is_connected and now - connection.idle_since < self.idle:
                return connection
            connection.client.close()
        return None

    def give(self, key: tuple[str, str, int, str], connection: _Open) -> bool:
        """Keep ``connection`` for the next message; False when it has served enough (the caller closes it)."""
        connection.sent += 1
        if connection.sent >= self.count or not connection.client.is_connected:
            return False
        connection.idle_since = time.monotonic()
        self._open.setdefault(key, []).append(connection)
        return True

    async def expire(self, *, everything: bool = False) -> None:
        """Close the connections idle for too long (all of them when stopping)."""
        now = time.monotonic()
        for key, found in list(self._open.items()):
            keep = [c for c in found if not everything and now - c.idle_since < self.idle]
            self._open[key] = keep
            for connection in found:
                if connection not in keep:
                    await _quit(connection.client)


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit()
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError):
        client.close()


class DeliveryWorker:
    def __init__(
        self,
        *,
        queue: Queue,
        processor: Processor,
        maildirs: Maildirs,
        material: OperatorMaterial,
        sessions: sessionmaker[Session],
        events: EventSink,
        connections_per_destination: int,
        connect_timeout: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.queue = queue
        self.processor = processor
        self.maildirs = maildirs
        self.material = material
        self.sessions = sessions
        self.events = events
        self.connections_per_destination = connections_per_destination
        self.connect_timeout = connect_timeout
        self.clock = clock
        self.wake = asyncio.Event()
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: dict[str, tuple[int, ...]] = {}  # queue id → recipient ids claimed, whose lease is renewed
        self._contexts: dict[str, ssl.SSLContext] = {}  # peer CA (PEM) → TLS client context with our certificate
        self._connections = _Connections()

    async def run(self, stop: asyncio.Event, *, poll: float = 1.0) -> None:
        background = [asyncio.create_task(self._renew_leases(stop)), asyncio.create_task(self._expire(stop))]
        try:
            await self._claim_and_deliver(stop, poll)
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._connections.expire(everything=True)

    async def _expire(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            await self._connections.expire()

    async def _renew_leases(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=LEASE / 3)
            ids = [rid for rids in self._in_flight.values() for rid in rids]
            try:
                await asyncio.to_thread(self.queue.renew, ids)
            except Exception:
                log.exception("cannot renew the delivery leases")

    async def _claim_and_deliver(self, stop: asyncio.Event, poll: float) -> None:
        while not stop.is_set():
            try:
                claims = await asyncio.to_thread(self.queue.claim)
            except Exception:
                log.exception("cannot claim from the queue")
                claims = []
            self.hand(claims)
            if claims:
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=poll)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def hand(self, claims: Sequence[Claim]) -> None:
        """Deliver claims made in this process (the SMTP handlers claim what they queue: ``Queue.accept``)."""
        for claim in claims:
            task = asyncio.create_task(self._guarded(claim))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _guarded(self, claim: Claim) -> None:
        self._in_flight[claim.queue_id] = tuple(rid for rid, _ in claim.recipients)
        try:
            await self._deliver(claim)
        finally:
            self._in_flight.pop(claim.queue_id, None)

    async def _deliver(self, claim: Claim) -> None:
        limit = self._limits.setdefault(claim.destination, asyncio.Semaphore(self.connections_per_destination))
        async with limit:
            try:
                if claim.destination == "local":
                    await self._deliver_local(claim)
                else:
                    await self._deliver_remote(claim)
            except Exception as exc:  # a bug or the database: retry later, with the stack in the log
                log.exception("delivery of %s failed unexpectedly", claim.queue_id)
                ids = [rid for rid, _ in claim.recipients]
                addresses = tuple(address for _, address in claim.recipients)
                error = f"internal error: {type(exc).__name__}"
                if self.clock() >= claim.expires_at:
                    bounced = self._event(claim, "bounced", "failed", addresses, reason=f"{error}; no DSN")
                    await asyncio.to_thread(self.queue.bounced, ids, error, [bounced])  # no DSN: making it failed
                else:
                    deferred = self._event(claim, "deferred", "deferred", addresses, reason=error)
                    await asyncio.to_thread(self.queue.deferred, ids, error, attempts=claim.attempts,
                                            events=[deferred])  # fmt: skip

    @staticmethod
    def _event(claim: Claim, type: str, outcome: str, recipients: Sequence[str], **fields: Any) -> Event:
        return Event(type, outcome, actor="relay", queue_id=claim.queue_id, message_id=claim.message_id,
                     sender=claim.sender, recipients=tuple(recipients), **fields)  # fmt: skip

    # Local

    async def _deliver_local(self, claim: Claim) -> None:
        data = await asyncio.to_thread(self.queue.spool.read, claim.queue_id)
        for recipient_id, address in claim.recipients:
            path, _ = await asyncio.to_thread(self.maildirs.deliver, address, data, f"{claim.queue_id}.{recipient_id}")
            followers = await asyncio.to_thread(self.processor.dispatched, claim, address, data)
            delivered = self._event(claim, "delivered", "ok", (address,), sha256=claim.sha256,
                                    reason=f"maildir {path.name}",
                                    body=data, copy="delivered")  # fmt: skip
            await asyncio.to_thread(self._finish_local, claim, recipient_id, address, followers, delivered)
        self.wake.set()

    def _finish_local(
        self, claim: Claim, recipient_id: int, address: str, followers: list[Outgoing], delivered: Event
    ) -> None:
        if followers:
            mdn = Event("mdn.sent", "dispatched", actor=address, message_id=claim.message_id, sender=address,
                        recipients=(address,), reason=f"dispatched MDN to {claim.disposition_to}")  # fmt: skip
            self.queue.enqueue(followers, lambda ids: [replace(mdn, queue_id=",".join(ids))])
        self.queue.delivered([recipient_id], [delivered])

    # Remote

    def _peer(self, domain: str) -> _Peer | None:
        with self.sessions() as session:
            row = session.scalars(sa.select(TrustedOperator).where(TrustedOperator.domain == domain)).one_or_none()
            if row is None:
                return None
            host, _, port = row.relay.rpartition(":")
            return _Peer(row.domain, row.hostname, host, int(port), row.ca_pem)

    async def _deliver_remote(self, claim: Claim) -> None:
        ids = {address: rid for rid, address in claim.recipients}
        peer = await asyncio.to_thread(self._peer, claim.destination)
        if peer is None:
            await self._bounce(claim, list(ids), "5.7.1", "the destination operator left the trust space")
            return
        data = await asyncio.to_thread(self.queue.spool.read, claim.queue_id)
        try:
            refused, reply = await self._send(peer, claim.sender, list(ids), data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = {e.recipient: (e.code, e.message) for e in exc.recipients}
            reply = ""
        except aiosmtplib.SMTPResponseException as exc:
            await self._failed(claim, list(ids), exc.code, f"{exc.code} {exc.message}", peer)
            return
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
            await self._defer(claim, list(ids), f"{peer.host}:{peer.port}: {type(exc).__name__}: {exc}")
            return
        accepted = [a for a in ids if a not in refused]
        if accepted:
            relayed = self._event(claim, "relayed", "ok", accepted, sha256=claim.sha256, body=data, copy="delivered",
                                  peer=f"{peer.host}:{peer.port}", reason=f"to {peer.hostname} over mutual TLS",
                                  reply=reply[:200])  # fmt: skip
            await asyncio.to_thread(self.queue.delivered, [ids[a] for a in accepted], [relayed])
        for address, (code, message) in refused.items():
            await self._failed(claim, [address], code, f"{code} {message}", peer)

    async def _send(
        self, peer: _Peer, sender: str, recipients: list[str], data: bytes
    ) -> tuple[dict[str, tuple[int, str]], str]:
        key = (peer.domain, peer.host, peer.port, peer.ca_pem)
        connection = await self._reuse(key) or await self._open(peer)
        done = False
        try:
            # The peer answers the final "." only once it has decrypted, verified and stored the message: RFC 5321
            # §4.5.3.2.6 gives that 10 minutes. The connect timeout alone would cut large messages short, and the
            # retry would send them again and again.
            errors, reply = await connection.client.sendmail(sender, recipients, data, timeout=DATA_TIMEOUT)
            done = True
            return {a: (r.code, r.message) for a, r in errors.items()}, reply
        finally:
            if not (done and self._connections.give(key, connection)):
                await _quit(connection.client)

    async def _reuse(self, key: tuple[str, str, int, str]) -> _Open | None:
        """An open connection to this peer that still answers (the peer may have closed it meanwhile)."""
        while (connection := self._connections.take(key)) is not None:
            try:
                await connection.client.noop()
                return connection
            except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError):
                connection.client.close()
        return None

    async def _open(self, peer: _Peer) -> _Open:
        context = self._contexts.get(peer.ca_pem)
        if context is None:  # one per peer CA: building one decrypts our TLS key (a key derivation) every time
            anchors = [x509.load_pem_x509_certificate(peer.ca_pem.encode())]
            context = await asyncio.to_thread(client_context, self.material, anchors)
            self._contexts[peer.ca_pem] = context
        client = aiosmtplib.SMTP(
            hostname=peer.host, port=peer.port, start_tls=False, timeout=self.connect_timeout,
            local_hostname=self.processor.hostname,
        )  # fmt: skip
        await client.connect()
        try:
            await client.ehlo()
            if not client.supports_extension("starttls"):
                raise aiosmtplib.SMTPException(f"{peer.hostname} does not offer STARTTLS")
            await client.starttls(server_hostname=peer.hostname, tls_context=context)
        except BaseException:
            await _quit(client)
            raise
        return _Open(client)

    async def _failed(self, claim: Claim, addresses: list[str], code: int, error: str, peer: _Peer) -> None:
        if 400 <= code < 500:
            await self._defer(claim, addresses, error)
        else:
            status = _enhanced(error) or "5.0.0"
            await self._bounce(claim, addresses, status, f"smtp; {error}", remote=peer.hostname)

    async def _defer(self, claim: Claim, addresses: list[str], error: str) -> None:
        ids = [rid for rid, address in claim.recipients if address in addresses]
        if self.clock() >= claim.expires_at:
            await self._bounce(claim, addresses, "4.4.7", f"delivery time expired; last error: {error}")
            return
        delay = self.queue.retry_delay(claim.attempts)
        deferred = self._event(claim, "deferred", "deferred", addresses,
                               reason=f"{error[:300]}; next attempt in {delay} s")  # fmt: skip
        await asyncio.to_thread(self.queue.deferred, ids, error, attempts=claim.attempts, events=[deferred])

    async def _bounce(
        self, claim: Claim, addresses: list[str], status: str, diagnostic: str, *, remote: str | None = None
    ) -> None:
        ids = [rid for rid, address in claim.recipients if address in addresses]
        failures = [FailedRecipient(a, status, diagnostic, remote) for a in addresses]
        try:
            original = await asyncio.to_thread(self.queue.spool.read, claim.queue_id)
        except QueueError:
            original = b""
        notices = await asyncio.to_thread(self.processor.dsn, claim, failures, original)
        bounced = self._event(claim, "bounced", "failed", addresses, reason=f"{status} {diagnostic[:300]}")
        await asyncio.to_thread(self._finish_bounce, claim, ids, addresses, diagnostic, notices, bounced)
        self.wake.set()

    def _finish_bounce(
        self, claim: Claim, ids: list[int], addresses: list[str], diagnostic: str, notices: list[Outgoing],
        bounced: Event,
    ) -> None:  # fmt: skip
        if notices:
            dsn = self._event(claim, "dsn.sent", "failed", addresses, reason=f"DSN to {claim.sender}")
            self.queue.enqueue(notices, lambda queue_ids: [replace(dsn, queue_id=",".join(queue_ids))])
        self.queue.bounced(ids, diagnostic, [bounced])


DATA_TIMEOUT = 600  # seconds for the peer's reply to the end of DATA (RFC 5321 §4.5.3.2.6)

_ENHANCED = re.compile(r"[45]\.[0-9]{1,3}\.[0-9]{1,3}")  # RFC 3463 §2: class.subject.detail


def _enhanced(error: str) -> str | None:
    """The enhanced status code of a reply ("550 5.1.1 ..."), if it carries a well-formed one."""
    parts = error.split()
    return parts[1] if len(parts) > 1 and _ENHANCED.fullmatch(parts[1]) else None
