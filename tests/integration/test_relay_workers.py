"""`mssecure serve --workers N`: a parent and its worker processes sharing the listeners and the queue."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.integration.test_relay import Pair, prescription, submit


def workers_of(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in children.read_text().split()} if children.exists() else set()


def wait_until(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def test_workers_share_the_load_survive_a_crash_and_stop_together(tmp_path: Path) -> None:
    pair = Pair(tmp_path)
    pair.a.start(workers=2)
    pair.b.start()
    try:
        assert pair.a.process is not None
        parent = pair.a.process.pid
        wait_until(lambda: len(workers_of(parent)) == 2)
        first = workers_of(parent)
        assert "2 workers" in pair.a.log.read_text()

        def send(i: int) -> dict[str, tuple[int, bytes]]:
            data = prescription(pair.doctor, pair.pharmacy, mdn=False, body=f"Ordonnance {i}")
            return submit(pair.a, pair.doctor, pair.doctor, [pair.pharmacy], data)

        # Four clients at once: logins in progress count against auth.max_failures (5) per client network, so a
        # sixth simultaneous login from 127.0.0.1 would get 454 (see smtp.auth.FailureLimiter).
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(send, range(6))) == [{}] * 6
        pair.b.wait_for(pair.pharmacy, 6, timeout=60)

        # A worker killed outright is replaced; mail keeps flowing.
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(workers_of(parent)) == 2 and victim not in workers_of(parent))
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(send, range(6, 10))) == [{}] * 4
        delivered = pair.b.wait_for(pair.pharmacy, 10, timeout=60)
        assert len(delivered) == 10  # exactly once each
        remaining = workers_of(parent)
    finally:
        pair.stop()
    for pid in remaining:  # SIGTERM to the parent stops every worker
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    report = json.loads(pair.a.ok("archive", "verify", "--json").output)
    assert report["ok"] is True
    started = json.loads(pair.a.ok("archive", "search", "--type", "relay.started", "--json").output)
    assert len(started) >= 3  # two workers, and the one that replaced the killed one
