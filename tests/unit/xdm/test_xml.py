"""The hardened XML parser: ordinary documents parse as ElementTree would, anything with a DTD is refused."""

from __future__ import annotations

import pytest

from mssecure.xdm._xml import UnsafeXml, parse_xml


def test_namespaces_attributes_text_and_predefined_entities() -> None:
    root = parse_xml(
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<r:a xmlns:r="urn:x" xmlns:s="urn:y" s:k="v &amp; w"><r:b>t&lt;&#233;</r:b><?pi data?><!-- c --></r:a>'
    )
    assert root.tag == "{urn:x}a"
    assert root.get("{urn:y}k") == "v & w"
    assert root.findtext("{urn:x}b") == "t<é"


def test_latin1_declared_encoding() -> None:
    assert parse_xml('<?xml version="1.0" encoding="ISO-8859-1"?><a>é</a>'.encode("latin-1")).text == "é"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<!DOCTYPE a><a/>", "DOCTYPE"),
        (b'<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><a>&e;</a>', "DOCTYPE"),
        (b'<!DOCTYPE a [<!ENTITY % p SYSTEM "http://x.test/p.dtd"> %p;]><a/>', "DOCTYPE"),
        (b"<a>&e;</a>", "undefined entity"),
        (b"<p:a/>", "unbound prefix"),
        (b"<a><b></a>", "mismatched tag"),
        (b"", "no element found"),
        (b"<a>" * 101 + b"</a>" * 101, "nested deeper than 100"),
    ],
)
def test_refused(data: bytes, reason: str) -> None:
    with pytest.raises(UnsafeXml, match=reason):
        parse_xml(data)
