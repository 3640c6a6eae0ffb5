"""``mssecure serve``: the listeners, the delivery worker and the housekeeping of one relay process.

Start-up removes spool files a crash left without a queue row, makes sure the DSN identity exists, and re-arms
the queue (leases of a dead process expire by themselves). While running, the trust space is re-read every few
seconds — a new peer's CA is accepted on the next inbound connection — and our CRL is re-issued before its
nextUpdate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from sqlalchemy.engine import Engine

from mssecure.archive.log import Archive
from mssecure.archive.store import MessageStore, ensure_store_key
from mssecure.archive.writer import ArchiveWriter
from mssecure.config import Config
from mssecure.crypto.authority import CertificateService, OperatorMaterial
from mssecure.crypto.models import TrustedOperator
from mssecure.db import check_schema, make_engine, make_sessionmaker, utcnow
from mssecure.smtp.auth import FailureLimiter
from mssecure.smtp.delivery import DeliveryWorker
from mssecure.smtp.events import Event, Journal
from mssecure.smtp.maildir import Maildirs
from mssecure.smtp.processing import Processor
from mssecure.smtp.queue import Queue, Spool
from mssecure.smtp.server import InboundHandler, SubmissionHandler, smtp_factory
from mssecure.smtp.tls import server_context

__all__ = ["Relay"]

log = logging.getLogger("mssecure.relay")

CRL_REISSUE_BEFORE = timedelta(days=2)


class Relay:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], datetime] = utcnow,
        poll: float = 1.0,
        trust_refresh: float = 5.0,
        worker: int = 0,
        sockets: Mapping[str, socket.socket] | None = None,
    ) -> None:
        """``worker``: this process's number among the relay's workers (worker 0 alone does the housekeeping);
        ``sockets``: listening sockets opened by the parent of the workers (``serve --workers``), else its own."""
        self.config = config
        self.worker_number = worker
        self.sockets = dict(sockets) if sockets is not None else None
        self.clock = clock
        self.poll = poll
        self.trust_refresh = trust_refresh
        self.engine: Engine | None = None
        self.writer: ArchiveWriter | None = None
        self.ports: dict[str, int] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._trust_key: tuple[str, ...] | None = None
        self._inbound_context: ssl.SSLContext | None = None

    async def prepare(self) -> None:
        """What one process does before any worker starts: the DSN identity, the archive store key, the spool files
        a crash left without a row, the CRL. (A worker removing "orphans" while another writes would lose mail.)"""
        engine = make_engine(self.config.database_url)
        try:
            check_schema(engine)
            sessions = make_sessionmaker(engine)
            material = OperatorMaterial(self.config)
            processor = Processor(self.config, sessions, material, clock=self.clock)
            spool = Spool(self.config.data_dir / "spool")
            spool.ensure()
            queue = Queue(sessions, spool, retry_schedule=self.config.delivery.retry_schedule,
                          max_lifetime=self.config.delivery.max_lifetime, clock=self.clock)  # fmt: skip
            await asyncio.to_thread(processor.ensure_notice_identity)
            if self.config.archive.store_messages:
                await asyncio.to_thread(ensure_store_key, material.keystore)
            orphans = await asyncio.to_thread(queue.remove_orphans)
            if orphans:
                log.warning("removed %d spool file(s) without a queue entry (a crash before 250)", len(orphans))
            self.sessions, self.material = sessions, material
            await asyncio.to_thread(self._housekeeping)
        finally:
            engine.dispose()

    async def start(self, *, prepare: bool = True) -> None:
        """Open the database and the listeners and start delivering; ``prepare=False`` in a worker whose parent
        ran ``prepare`` already."""
        config = self.config
        if prepare:
            await self.prepare()
        # aiosmtpd logs addresses at INFO and message lines at DEBUG under "mail.log": whoever runs the relay, those
        # never reach the log (our own events say what happened, without content).
        aiosmtpd_log = logging.getLogger("mail.log")
        if aiosmtpd_log.getEffectiveLevel() < logging.WARNING:
            aiosmtpd_log.setLevel(logging.WARNING)
        self.engine = make_engine(config.database_url)
        check_schema(self.engine)
        sessions = make_sessionmaker(self.engine)
        self.material = OperatorMaterial(config)
        archive = Archive(self.engine, key=self.material.keystore.load("archive"), origin=config.operator.domain,
                          clock=self.clock)  # fmt: skip
        writer = self.writer = ArchiveWriter(archive, checkpoint_interval=config.archive.checkpoint_interval)

        def archive_within(connection: sa.Connection, events: Sequence[Event]) -> None:
            archive.append_many(events, connection=connection)
            writer.touched()

        store = None
        if config.archive.store_messages:
            store = MessageStore(self.engine, public_key=ensure_store_key(self.material.keystore).public_key(),
                                 clock=self.clock)  # fmt: skip
        self.events = Journal(archive=writer, transactional=archive_within, keep=store.keep if store else None)
        self.processor = Processor(config, sessions, self.material, clock=self.clock)
        self.sessions = sessions
        spool = Spool(config.data_dir / "spool")
        spool.ensure()
        self.queue = Queue(sessions, spool, retry_schedule=config.delivery.retry_schedule,
                           max_lifetime=config.delivery.max_lifetime, clock=self.clock,
                           journal=self.events)  # fmt: skip
        self.worker = DeliveryWorker(
            queue=self.queue, processor=self.processor, maildirs=Maildirs(config.maildir), material=self.material,
            sessions=sessions, events=self.events, clock=self.clock,
            connections_per_destination=config.delivery.connections_per_destination,
            connect_timeout=config.delivery.connect_timeout,
        )  # fmt: skip
        submission_context = server_context(self.material, [self.material.ca_certificate()])
        auth = config.auth
        limiter = FailureLimiter(limit=auth.max_failures, window=auth.failure_window, clock=time.monotonic)
        submission = SubmissionHandler(config, self.processor, self.queue, self.events, limiter=limiter,
                                       on_queued=self.worker.hand)  # fmt: skip
        inbound = InboundHandler(config, self.processor, self.queue, self.events, on_queued=self.worker.hand)
        loop = asyncio.get_running_loop()
        listeners: list[tuple[str, int, Any, ssl.SSLContext | None]] = [
            ("submission", config.smtp.submission_port,
             smtp_factory(submission, config, tls_context=lambda: submission_context, auth_required=True), None),
            ("submissions", config.smtp.submissions_port,
             smtp_factory(submission, config, tls_context=lambda: submission_context, implicit_tls=True,
                          auth_required=True), submission_context),
            ("inbound", config.smtp.inbound_port,
             smtp_factory(inbound, config, tls_context=self._current_inbound_context, auth_required=False), None),
        ]  # fmt: skip
        for name, port, factory, tls in listeners:
            if port == 0:
                continue  # disabled
            if self.sockets is not None:
                server = await loop.create_server(factory, sock=self.sockets[name], ssl=tls)
            else:
                server = await loop.create_server(factory, host=config.smtp.listen, port=port, ssl=tls,
                                                  reuse_address=True)  # fmt: skip
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]
        self._tasks.append(asyncio.create_task(self.worker.run(self._stop, poll=self.poll)))
        self._tasks.append(asyncio.create_task(self._maintain()))
        ports = ", ".join(f"{name} {port}" for name, port in self.ports.items())
        self.events(Event("relay.started", "ok", actor="relay", reason=f"{config.operator.hostname}: {ports}"))

    def _current_inbound_context(self) -> ssl.SSLContext:
        if self._inbound_context is None:
            self._refresh_trust()
        assert self._inbound_context is not None
        return self._inbound_context

    def _refresh_trust(self) -> None:
        """Rebuild the inbound TLS context when the set of trusted peer CAs changed."""
        with self.sessions() as session:
            rows = list(session.execute(sa.select(TrustedOperator.ca_fingerprint, TrustedOperator.ca_pem)))
        key = tuple(sorted(r.ca_fingerprint for r in rows))
        if key != self._trust_key or self._inbound_context is None:
            anchors = [x509.load_pem_x509_certificate(r.ca_pem.encode()) for r in rows]
            self._inbound_context = server_context(self.material, anchors)
            self._trust_key = key

    def _housekeeping(self) -> None:
        """Re-issue our CRL before its nextUpdate (relying parties refuse a stale one)."""
        crl = self.material.crl()
        next_update = crl.next_update_utc
        if next_update is None or next_update - self.clock() < CRL_REISSUE_BEFORE:
            with self.sessions.begin() as session:
                CertificateService(session, self.material, clock=self.clock).publish_crl()
            log.info("CRL re-issued")

    async def _maintain(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.trust_refresh)
            try:
                await asyncio.to_thread(self._refresh_trust)
                if self.worker_number == 0:
                    await asyncio.to_thread(self._housekeeping)
            except Exception:
                log.exception("housekeeping failed")

    async def stop(self) -> None:
        self._stop.set()
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.writer is not None:
            self.events(Event("relay.stopped", "ok", actor="relay", reason=self.config.operator.hostname))
            await asyncio.to_thread(self.writer.close)  # what is pending, then a last checkpoint
        if self.engine is not None:
            self.engine.dispose()

    async def serve(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
