"""Connections between relays are kept open for the next message (as Postfix's connection cache does) and never
outlive ``REUSE_IDLE`` idle seconds; a connection the peer closed meanwhile is replaced, never a deferral.

Observed from the kernel's table of B's inbound TCP connections, with two real ``mssecure serve`` processes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mssecure.smtp.delivery import REUSE_IDLE
from tests.integration.test_relay import Pair, prescription, submit
from tests.integration.test_relay_archive import events


def established(port: int) -> set[int]:
    """The client ports of the established IPv4 connections to the local ``port``."""
    found = set()
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "01" and int(local.split(":")[1], 16) == port:
                found.add(int(remote.split(":")[1], 16))
    return found


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    operators = Pair(tmp_path_factory.mktemp("connections"))
    operators.a.start()
    operators.b.start()
    yield operators
    operators.stop()


def send_one(pair: Pair, n: int) -> None:
    before = len(pair.b.messages(pair.pharmacy))
    data = prescription(pair.doctor, pair.pharmacy, subject=f"Ordonnance {n}", mdn=False)
    assert submit(pair.a, pair.doctor, pair.doctor, [pair.pharmacy], data) == {}
    pair.b.wait_for(pair.pharmacy, before + 1)


def test_consecutive_messages_share_one_connection_closed_once_idle(pair: Pair) -> None:
    port = pair.b.ports["inbound"]
    send_one(pair, 1)
    first = established(port)
    assert len(first) == 1, first  # still open after the message
    send_one(pair, 2)
    send_one(pair, 3)
    assert established(port) == first  # the same client port: the same connection, one TLS handshake
    deadline = time.monotonic() + REUSE_IDLE + 5
    while established(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert established(port) == set()  # closed after REUSE_IDLE seconds without a message
    send_one(pair, 4)
    assert len(established(port)) == 1
    assert established(port) != first


def test_a_connection_the_peer_closed_is_replaced_without_a_deferral(pair: Pair) -> None:
    send_one(pair, 5)
    assert len(established(pair.b.ports["inbound"])) == 1
    pair.b.stop()  # closes A's open connection
    pair.b.start()
    send_one(pair, 6)
    assert events(pair.a, "--type", "deferred") == []
