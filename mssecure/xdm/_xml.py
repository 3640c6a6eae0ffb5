"""A hardened XML parser for untrusted documents (METADATA.XML, CDA headers): expat driving an ElementTree builder.

The standard ``xml.etree.ElementTree.fromstring`` accepts a DOCTYPE with internal entities, and with it entity
expansion attacks ("billion laughs", quadratic blow-up) and, with other parsers, external entities (XXE). Nothing we
read needs a DTD, so this parser refuses any DOCTYPE outright, any entity declaration and any external entity
reference, and caps the element depth; an undefined entity reference is then an expat error. defusedxml does the
same by patching the library's parsers; driving expat ourselves avoids the dependency and any global patching.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import NoReturn
from xml.parsers import expat

__all__ = ["UnsafeXml", "parse_xml"]

_MAX_DEPTH = 100


class UnsafeXml(ValueError):
    """The document is not well-formed, declares a DTD or entities, or nests too deeply (the message says which)."""


def parse_xml(data: bytes, *, max_depth: int = _MAX_DEPTH) -> ET.Element:
    """The root element of ``data``, or ``UnsafeXml`` with a one-line reason; never expands a declared entity."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator=" ")
    depth = 0

    def refuse(reason: str) -> NoReturn:
        raise UnsafeXml(reason)

    def start(name: str, attributes: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > max_depth:
            refuse(f"elements nested deeper than {max_depth}")
        builder.start(_clark(name), {_clark(key): value for key, value in attributes.items()})

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(_clark(name))

    def doctype(*_: object) -> None:
        refuse("a DOCTYPE is not allowed (DTDs and entities are refused)")

    def entity(*_: object) -> None:
        refuse("entity declarations are not allowed")

    def external(*_: object) -> int:
        refuse("external entities are not allowed")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    parser.UnparsedEntityDeclHandler = entity
    parser.ExternalEntityRefHandler = external
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        raise UnsafeXml(f"not well-formed XML ({expat.ErrorString(error.code)}, line {error.lineno})") from None
    except RecursionError:
        raise UnsafeXml("the document cannot be parsed") from None
    return builder.close()


def _clark(name: str) -> str:
    """expat's ``"uri local"`` (namespace_separator=" ") as ElementTree's ``"{uri}local"``."""
    uri, _, local = name.rpartition(" ")
    return f"{{{uri}}}{local}" if uri else local
