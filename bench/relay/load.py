"""The load generator and the Maildir watcher.

``run_load`` opens N SMTP connections (STARTTLS, then AUTH PLAIN when a login is given), all before the clock starts,
then each sends messages in a loop over its own connection (MAIL/RCPT/DATA again after each 250; RSET only after a
refused transaction) until the point's count is reached. Closed loop by default: a connection sends its next
message as soon as the previous one is accepted, so the sustained rate is the slower of submission and delivery.
With ``rate`` it is an open loop: message k is due at ``start + k / rate``, sent by the first free connection, and
its latency counts from when it was due (a late send is the system's delay, not hidden by the generator).

``MaildirWatcher`` learns of each new file in the recipients' ``new/`` directories through inotify (``ctypes``, no
dependency): a rename into ``new/`` (mssecure) or a hard link (Postfix's ``virtual``) is one event, read in the
event loop. The file's head gives its ``X-Bench-Id``; its arrival time is the file's ctime (set by the kernel at the
rename or link), not when the busy load generator got round to reading the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import ssl
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib

from bench.relay.messages import BENCH_HEADER, MessageKind, render

__all__ = ["LoadResult", "MaildirWatcher", "Target", "run_load"]

_IN_CREATE = 0x100
_IN_MOVED_TO = 0x80
_IN_Q_OVERFLOW = 0x4000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


class MaildirWatcher:
    """Arrival times of messages (by ``X-Bench-Id``) in some Maildirs' ``new/`` directories."""

    def __init__(self, directories: Sequence[Path]) -> None:
        self.directories = [Path(d) for d in directories]
        self.arrivals: dict[str, float] = {}  # bench id → arrival (time.time() scale)
        self.observed: dict[str, float] = {}  # bench id → when the watcher read it
        self._seen: set[str] = set()
        self._waiters: list[tuple[set[str], asyncio.Future[None]]] = []
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._watches: dict[int, Path] = {}
        for directory in self.directories:
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), _IN_MOVED_TO | _IN_CREATE)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
            self._watches[wd] = directory
        for directory in self.directories:  # what is already there is not ours
            self._seen.update(entry.name for entry in os.scandir(directory))
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _readable(self) -> None:
        try:
            buffer = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return
        offset, overflow = 0, False
        while offset < len(buffer):
            wd, mask, _, length = _EVENT.unpack_from(buffer, offset)
            name = buffer[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0").decode()
            offset += _EVENT.size + length
            if mask & _IN_Q_OVERFLOW:
                overflow = True
            elif wd in self._watches and name:
                self._found(self._watches[wd] / name)
        if overflow:
            self.rescan()
        self._notify()

    def rescan(self) -> None:
        """Look at every file (after an inotify overflow, and at the end of a point as a safety net)."""
        for directory in self.directories:
            for entry in os.scandir(directory):
                self._found(Path(entry.path))
        self._notify()

    def _found(self, path: Path) -> None:
        if path.name in self._seen:
            return
        try:
            status = path.stat()
            with path.open("rb") as stream:
                head = stream.read(1 << 16)
        except FileNotFoundError:
            return  # moved to cur/ by someone: not in this benchmark
        self._seen.add(path.name)
        start = head.find(BENCH_HEADER)
        if start < 0:
            return  # not one of ours (a notification)
        start += len(BENCH_HEADER)
        end = head.find(b"\n", start)  # CRLF (mssecure) or LF (Postfix stores lines with LF)
        bench_id = head[start : end if end >= 0 else None].strip().decode()
        now = time.time()
        self.observed[bench_id] = now
        self.arrivals[bench_id] = min(status.st_ctime_ns / 1e9, now)

    def _notify(self) -> None:
        for ids, future in list(self._waiters):
            if not future.done() and ids <= self.arrivals.keys():
                future.set_result(None)

    async def wait_for(self, ids: set[str], timeout: float) -> bool:
        """True when every id arrived within ``timeout`` seconds."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (ids, future)
        self._waiters.append(entry)
        self._notify()
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            self.rescan()
            return ids <= self.arrivals.keys()
        finally:
            self._waiters.remove(entry)


@dataclass(frozen=True)
class Target:
    """Where the load goes: a submission port with STARTTLS (and AUTH PLAIN when ``password`` is set)."""

    name: str
    host: str
    port: int
    senders: tuple[str, ...]
    recipients: tuple[str, ...]
    password: str | None


@dataclass
class Sample:
    bench_id: str
    start: float  # time.time(): when the message was due (open loop) or its MAIL was sent (closed loop)
    accepted: float | None = None
    error: str | None = None


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    setup_seconds: float = 0.0
    send_started: float = 0.0
    send_ended: float = 0.0
    connection_errors: list[str] = field(default_factory=list)


def _client_context() -> ssl.SSLContext:
    """The generator does not verify the servers' certificates (both are ours, on loopback); TLS itself is real."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _connect(target: Target, sender: str, timeout: float) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(hostname=target.host, port=target.port, start_tls=False, timeout=timeout,
                             tls_context=_client_context(), local_hostname="loadgen.bench.test")  # fmt: skip
    await client.connect()
    await client.ehlo()
    await client.starttls()
    await client.ehlo()  # RFC 3207 §4.2: the session starts over after STARTTLS
    if target.password is not None:
        await client.auth_plain(sender, target.password)
    return client


async def run_load(
    target: Target,
    kind: MessageKind,
    *,
    connections: int,
    count: int,
    prefix: str,
    rate: float | None = None,
    timeout: float = 300.0,
) -> LoadResult:
    """Send ``count`` messages of ``kind`` over ``connections`` connections; ids are ``<prefix>-<k>``."""
    result = LoadResult()
    started = time.perf_counter()
    senders = [target.senders[i % len(target.senders)] for i in range(connections)]
    opened = await asyncio.gather(*(_connect(target, s, timeout) for s in senders), return_exceptions=True)
    clients: list[aiosmtplib.SMTP | None] = []
    for item in opened:
        if isinstance(item, BaseException):
            result.connection_errors.append(f"{type(item).__name__}: {item}")
            clients.append(None)
        else:
            clients.append(item)
    result.setup_seconds = time.perf_counter() - started
    next_index = 0
    t0 = time.time()
    result.send_started = t0

    async def worker(slot: int) -> None:
        nonlocal next_index
        client = clients[slot]
        sender = senders[slot]
        while client is not None and next_index < count:
            k = next_index
            next_index += 1
            if rate is not None:
                due = t0 + k / rate
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            recipient = target.recipients[k % len(target.recipients)]
            bench_id = f"{prefix}-{k}"
            data = render(kind, sender, recipient, bench_id)
            sample = Sample(bench_id, t0 + k / rate if rate is not None else time.time())
            result.samples.append(sample)
            try:
                errors, _ = await client.sendmail(sender, [recipient], data)
                if errors:
                    sample.error = f"refused: {errors}"
                else:
                    sample.accepted = time.time()
            except aiosmtplib.SMTPResponseException as exc:
                sample.error = f"{exc.code} {exc.message}"
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.rset()
            except (aiosmtplib.SMTPException, OSError) as exc:
                sample.error = f"{type(exc).__name__}: {exc}"
                client.close()
                try:
                    client = await _connect(target, sender, timeout)
                except (aiosmtplib.SMTPException, OSError) as again:
                    result.connection_errors.append(f"{type(again).__name__}: {again}")
                    client = None
        if client is not None:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()

    await asyncio.gather(*(worker(slot) for slot in range(connections)))
    result.send_ended = time.time()
    return result


def summarise(result: LoadResult, watcher: MaildirWatcher) -> dict[str, Any]:
    """Counts, rates and latencies of one point (seconds → milliseconds, rates in messages per second)."""
    accepted = [s for s in result.samples if s.accepted is not None]
    delivered = [s for s in accepted if s.bench_id in watcher.arrivals]
    first = min((s.start for s in result.samples), default=result.send_started)
    summary: dict[str, Any] = {
        "sent": len(result.samples),
        "accepted": len(accepted),
        "refused_or_failed": len(result.samples) - len(accepted),
        "delivered": len(delivered),
        "errors": sorted({s.error for s in result.samples if s.error})[:5],
        "connection_errors": result.connection_errors[:5],
        "setup_seconds": round(result.setup_seconds, 3),
    }
    if accepted:
        last_accepted = max(s.accepted for s in accepted if s.accepted is not None)
        summary["accepted_per_second"] = round(len(accepted) / max(last_accepted - first, 1e-6), 3)
        submit = [(s.accepted or 0) - s.start for s in accepted]
        summary["submission_ms"] = _percentiles(submit)
    if delivered:
        last = max(watcher.arrivals[s.bench_id] for s in delivered)
        summary["seconds"] = round(last - first, 3)
        summary["delivered_per_second"] = round(len(delivered) / max(last - first, 1e-6), 3)
        summary["end_to_end_ms"] = _percentiles([watcher.arrivals[s.bench_id] - s.start for s in delivered])
    return summary


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(fraction: float) -> float:
        # nearest rank: with few samples p99 is the maximum, never an interpolation below it
        index = min(len(ordered) - 1, max(0, int(-(-fraction * len(ordered) // 1)) - 1))
        return round(ordered[index] * 1000, 1)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1] * 1000, 1),
            "mean": round(sum(ordered) / len(ordered) * 1000, 1), "n": len(ordered)}  # fmt: skip
