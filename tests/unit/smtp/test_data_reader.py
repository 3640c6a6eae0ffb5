"""The relay reads DATA in blocks (``RelaySMTP._read_data``); aiosmtpd reads it line by line. Both are run side by
side on loopback with the same byte stream, cut into random fragments: same replies, same message."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mssecure.smtp.server import RelaySMTP


class Keep:
    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.contents.append(bytes(envelope.content))
        return "250 kept"


async def _session(factory: type[SMTP], stream: list[bytes], limit: int | None) -> tuple[list[bytes], list[bytes]]:
    keep = Keep()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: factory(keep, data_size_limit=limit, hostname="test"), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    replies: list[bytes] = []
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        replies.append(await reader.readline())
        for command in (b"EHLO client\r\n", b"MAIL FROM:<a@example.test>\r\n", b"RCPT TO:<b@example.test>\r\n",
                        b"DATA\r\n"):  # fmt: skip
            writer.write(command)
            while (line := await reader.readline())[3:4] == b"-":
                pass
            replies.append(line)
        for fragment in stream:
            writer.write(fragment)
            await writer.drain()
            await asyncio.sleep(0.001)  # let the server read what it has: the next fragment is a new read
        replies.append(await reader.readline())
        writer.write(b"MAIL FROM:<c@example.test>\r\n")  # the session goes on after DATA
        replies.append(await reader.readline())
        writer.write(b"QUIT\r\n")
        replies.append(await reader.readline())
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    return replies, keep.contents


def both(stream: list[bytes], limit: int | None = None) -> tuple[Any, Any]:
    async def run() -> tuple[Any, Any]:
        return await _session(SMTP, stream, limit), await _session(RelaySMTP, stream, limit)

    return asyncio.run(run())


_TEXT = st.lists(st.sampled_from([b"a", b".", b" ", b"\r", b"\n", b"\xe9", b"=", b"Q"]), max_size=30).map(b"".join)
_LINE = st.one_of(
    _TEXT,
    # Not 1001 bytes before the CRLF exactly: aiosmtpd's own answer then depends on whether CR and LF arrive in
    # the same read (its reader's limit is 1001 bytes, and CR alone makes 1002).
    st.tuples(st.sampled_from([b"", b".", b".."]), st.integers(990, 1010).filter(lambda n: n != 1001)).map(
        lambda t: t[0] + b"x" * t[1]
    ),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_LINE, max_size=12),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
    limit=st.sampled_from([None, 40, 2000]),
)
def test_the_block_reader_answers_and_keeps_what_aiosmtpd_does(lines: list[bytes], cuts: list[int],
                                                               limit: int | None) -> None:  # fmt: skip
    data = b"".join(line + b"\r\n" for line in lines)
    assume(b"\r\n.\r\n" not in b"\r\n" + data)  # no early end of data: the rest would be commands
    stream = data + b".\r\n"
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    fragments = [stream[a:b] for a, b in itertools.pairwise(points) if b > a]
    reference, ours = both(fragments, limit)
    assert ours == reference


def test_the_edge_cases_by_name() -> None:
    cases = [
        [b".\r\n"],  # an empty message
        [b"..\r\n.\r\n"],  # a message that is one stuffed dot
        [b"a\r\n", b".", b"\r", b"\n"],  # the end cut in every place
        [b"a\r", b"\n.\r\n"],
        [b"a.\r\nb\n.\r\n.b\r\n.\r\n"],  # a dot after a bare LF is no end
        [b"x" * 5000 + b"\r\n.\r\n"],  # one line over the limit: 500 once drained
        [(b"QUJD" * 19 + b"\r\n") * 3000 + b".\r\n"],  # a base64 body of 240 KB
    ]
    for stream in cases:
        reference, ours = both(stream)
        assert ours == reference, stream
    (replies, contents), _ = both([b"..\r\n.\r\n"])
    assert contents == [b".\r\n"]
    (replies, _), _ = both([b"x" * 5000 + b"\r\n.\r\n"])
    assert replies[5].startswith(b"500 ")
    (replies, contents), _ = both([b"a" * 50 + b"\r\n.\r\n"], limit=40)
    assert (replies[5][:4], contents) == (b"552 ", [])
