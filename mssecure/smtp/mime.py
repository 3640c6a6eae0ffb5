"""Header-level surgery on raw messages (CRLF, canonical form): no re-serialisation of what may be signed.

The relay only ever adds fields at the top of a message (RFC 5321 §4.4: trace fields go first), removes forged
ones, and rebuilds a delivered message from the transport header of an encrypted one and the decrypted entity.
"""

from __future__ import annotations

from email.utils import getaddresses

__all__ = [
    "field_lines",
    "header_from",
    "header_value",
    "prepend",
    "split",
    "transport_fields",
    "with_entity",
    "without_fields",
]


def split(message: bytes) -> tuple[bytes, bytes]:
    """(header, body) of a CRLF message; the header keeps its last CRLF, the body starts after the blank line."""
    if message.startswith(b"\r\n"):
        return b"", message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[: end + 2], message[end + 4 :]


def field_lines(head: bytes) -> list[bytes]:
    """The raw fields of a header block, each with its folded continuation lines, without the final CRLF."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif line:
            fields.append(line)
    return fields


def _name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].strip().lower()


def header_value(message: bytes, name: str) -> list[str]:
    """Every value of field ``name`` in the message's header, unfolded, decoded as UTF-8 (replacing errors)."""
    wanted = name.lower().encode()
    head, _ = split(message)
    values = []
    for field in field_lines(head):
        if _name(field) == wanted:
            values.append(" ".join(field.split(b":", 1)[1].decode("utf-8", "replace").split()))
    return values


def header_from(message: bytes) -> str | None:
    """The one address of the one From field; None when there is no From, several, or several addresses."""
    values = header_value(message, "from")
    if len(values) != 1:
        return None
    addresses = [a for _, a in getaddresses(values) if a]
    return addresses[0].lower() if len(addresses) == 1 else None


def prepend(message: bytes, *fields: str) -> bytes:
    """``fields`` (``"Name: value"``, no CRLF) added at the top of the header."""
    return b"".join(f.encode("utf-8") + b"\r\n" for f in fields) + message


def without_fields(message: bytes, names: set[str]) -> bytes:
    """The message without the header fields named (case-insensitive); the body is untouched."""
    wanted = {n.lower().encode() for n in names}
    head, body = split(message)
    kept = [f for f in field_lines(head) if _name(f) not in wanted]
    return b"".join(f + b"\r\n" for f in kept) + b"\r\n" + body


def transport_fields(message: bytes) -> list[bytes]:
    """The fields of the message's header but the MIME entity ones (Content-*, MIME-Version)."""
    head, _ = split(message)
    return [f for f in field_lines(head) if not _name(f).startswith(b"content-") and _name(f) != b"mime-version"]


def with_entity(message: bytes, entity: bytes) -> bytes:
    """The transport fields of ``message`` above the MIME entity ``entity`` (its Content-* fields and body)."""
    return b"".join(f + b"\r\n" for f in transport_fields(message)) + b"MIME-Version: 1.0\r\n" + entity
