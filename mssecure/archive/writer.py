"""The relay's way into the archive without waiting for the database on the event loop.

Events that change no queue state (a refusal, a failed login) are handed to ``ArchiveWriter``: a thread drains them
in batches into ``Archive.append_many`` (one transaction per batch, so a burst of refusals costs a few commits, not
one each) and signs a checkpoint every ``checkpoint_interval`` seconds when events were added since the last one.
``close`` writes what is pending and a last checkpoint. Events that go with a queue change (accepted, delivered,
relayed, deferred, bounced) do not come here: the queue writes them in its own transaction (see ``smtp.queue``).

When the database refuses a batch (locked, restarting), the writer keeps the events, logs the error and tries again
with a growing pause; events are lost only if the process dies before the database comes back (the log has them).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from mssecure.archive.log import Archive
from mssecure.smtp.events import Event

__all__ = ["ArchiveWriter"]

log = logging.getLogger("mssecure.archive")

_BATCH = 500
_MAX_PAUSE = 30.0
_STOP = object()


class ArchiveWriter:
    """A background writer of events to ``archive``, and its periodic checkpoints (``archive.key`` signs them)."""

    def __init__(
        self,
        archive: Archive,
        *,
        checkpoint_interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.archive = archive
        self.checkpoint_interval = checkpoint_interval
        self.clock = clock
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pending: list[Event] = []
        self._dirty = False  # events archived since the last checkpoint, by us or by the queue's transactions
        self._last_checkpoint = clock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="archive-writer", daemon=True)
        self._thread.start()

    def __call__(self, event: Event) -> None:
        """Queue one event for the archive (returns at once)."""
        if self._closed:
            raise RuntimeError("archive writer closed")
        self._queue.put(event)

    def touched(self) -> None:
        """Events were archived by someone else (the queue's transactions): the next checkpoint is due."""
        self._dirty = True

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event given so far is archived (or ``timeout`` passes)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self, *, timeout: float = 30.0) -> None:
        """Archive what is pending, sign a last checkpoint, and stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the archive writer did not finish in %.0f s: pending events are only in the log", timeout)

    def _run(self) -> None:
        pause = 0.5
        stopping = False
        waiters: list[threading.Event] = []
        while True:
            wait = None if self.checkpoint_interval <= 0 else max(0.05, self._until_checkpoint())
            if self._pending:
                wait = min(wait or pause, pause)
            try:
                item = self._queue.get_nowait() if stopping else self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            while item is not None:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                elif isinstance(item, Event):
                    self._pending.append(item)
                if len(self._pending) >= _BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if self._pending and not self._write():
                pause = min(pause * 2, _MAX_PAUSE)
                if stopping:
                    log.error("archive unavailable at stop: %d event(s) only in the log", len(self._pending))
                    break
                continue
            pause = 0.5
            if not self._pending:  # a waiter came after the events it waits for: they are all written now
                for waiter in waiters:
                    waiter.set()
                waiters.clear()
            due = self.checkpoint_interval > 0 and self._until_checkpoint() <= 0
            finished = stopping and not self._pending and self._queue.empty()
            if self._dirty and (due or finished):
                self._checkpoint()
            if finished:
                break
        for waiter in waiters:
            waiter.set()

    def _until_checkpoint(self) -> float:
        return self._last_checkpoint + self.checkpoint_interval - self.clock()

    def _write(self) -> bool:
        batch = self._pending[:_BATCH]
        try:
            self.archive.append_many(batch)
        except Exception:
            log.exception("cannot archive %d event(s); will retry", len(batch))
            return False
        del self._pending[: len(batch)]
        self._dirty = True
        return True

    def _checkpoint(self) -> None:
        self._last_checkpoint = self.clock()
        if self.archive.key is None:
            return
        try:
            checkpoint = self.archive.checkpoint()
        except Exception:
            log.exception("cannot sign an archive checkpoint")
            return
        self._dirty = False
        log.info("archive checkpoint %d signed (%d events)", checkpoint.id or 0, checkpoint.tree_size)
