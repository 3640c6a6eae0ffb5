"""Property tests: whatever the bytes, validation returns a package or raises XdmError, and finding never fails."""

from __future__ import annotations

import contextlib
import functools
import io
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssecure.xdm import XdmError, XdmLimits, find_xdm_parts, validate_package
from mssecure.xdm._xml import UnsafeXml, parse_xml
from tests.unit.xdm.samples import METADATA_PATH, make_zip, package

SMALL = XdmLimits(max_total_size=256 * 1024, max_entry_size=128 * 1024, max_metadata_size=64 * 1024)


@functools.cache
def valid() -> bytes:
    return package()


@functools.cache
def stored() -> bytes:
    """The same package without compression, so that mutations hit names, sizes and metadata text directly."""
    with zipfile.ZipFile(io.BytesIO(valid())) as archive:
        items = [(info.filename, archive.read(info)) for info in archive.infolist()]
    return make_zip(items, compression=zipfile.ZIP_STORED)


def check(data: bytes) -> None:
    """Validation either succeeds or refuses with a one-line reason: any other exception fails the test."""
    reason = None
    try:
        validate_package(data, SMALL)
    except XdmError as error:
        reason = error.reason
    assert reason is None or (reason and "\n" not in reason)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    check(data)
    check(b"PK\x03\x04" + data)


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([valid(), stored()])))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + data[cut + draw(st.integers(0, 64)) :]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_packages(data: bytes) -> None:
    check(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1024))
def test_random_metadata(text: bytes) -> None:
    check(make_zip([(METADATA_PATH, text)]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1024))
def test_xml_parser_only_raises_unsafe_xml(data: bytes) -> None:
    with contextlib.suppress(UnsafeXml):
        parse_xml(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_find_parts_on_random_messages(data: bytes) -> None:
    head = (
        b"From: a@b.test\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    for raw in (data, head + data, head + b"UEsDBA" + data + b"\r\n--XX--\r\n"):
        for part in find_xdm_parts(raw):
            check(part.data)
