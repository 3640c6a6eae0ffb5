"""The three messages of the benchmark, as a mail client would submit them: ``multipart/mixed`` with a text part
and a base64 attachment (76-character lines, CRLF), each copy made unique by its Message-ID and an ``X-Bench-Id``
header so that the watcher can tell which message a Maildir file is.

The attachment is encoded once per kind and spliced into every copy: generating 25 MB per message would cost the
load generator (which shares the machine with the relays) more than the SMTP work itself.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass

__all__ = ["KINDS", "MessageKind", "render"]

BENCH_HEADER = b"X-Bench-Id: "


@dataclass(frozen=True)
class MessageKind:
    """One kind of message: ``attachment`` raw bytes in a ``content_type`` part; ``target`` is the size on the wire
    the label promises (the 25 MB imaging report is 25 MB as submitted, its attachment about 18.7 MB decoded)."""

    name: str
    label: str
    subject: str
    text: str
    filename: str
    content_type: str
    attachment_bytes: int


KINDS: dict[str, MessageKind] = {
    "60KB": MessageKind("60KB", "prescription, 60 KB PDF", "Ordonnance DUPONT Jean",
                        "Amoxicilline 1 g, 3 fois par jour, 7 jours.\r\nRenouvelable une fois.", "ordonnance.pdf",
                        "application/pdf", 60 * 1024),
    "2MB": MessageKind("2MB", "report, 2 MB attachment", "Compte rendu opératoire DUPONT Jean",
                       "Compte rendu en pièce jointe.", "compte-rendu.pdf", "application/pdf", 2 * 1024 * 1024),
    "25MB": MessageKind("25MB", "imaging report, 25 MB message", "Imagerie DUPONT Jean",
                        "Examen IRM en pièce jointe (séries DICOM).", "irm.dcm", "application/dicom",
                        25 * 1024 * 1024 * 57 // 78 - 2048),
}  # fmt: skip

_ENCODED: dict[str, bytes] = {}


def _pdf_like(size: int, seed: int) -> bytes:
    """Bytes that look like a PDF (header, compressed-looking streams): incompressible, as real attachments are."""
    rng = random.Random(seed)
    head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    return head + rng.randbytes(max(0, size - len(head) - 6)) + b"\n%%EOF"


def _encoded(kind: MessageKind) -> bytes:
    found = _ENCODED.get(kind.name)
    if found is None:
        raw = base64.b64encode(_pdf_like(kind.attachment_bytes, len(kind.name)))
        found = b"\r\n".join(raw[i : i + 76] for i in range(0, len(raw), 76)) + b"\r\n"
        _ENCODED[kind.name] = found
    return found


def render(kind: MessageKind, sender: str, recipient: str, bench_id: str) -> bytes:
    """One message of ``kind`` from ``sender`` to ``recipient``, tagged ``bench_id`` (ASCII, unique per run)."""
    domain = sender.rpartition("@")[2]
    boundary = f"=_bench_{bench_id}"
    head = "\r\n".join([
        f"From: {sender}",
        f"To: {recipient}",
        f"Subject: {kind.subject}",
        f"Message-ID: <{bench_id}@{domain}>",
        "Date: Mon, 23 Nov 2026 08:00:00 +0100",
        f"{BENCH_HEADER.decode()}{bench_id}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        kind.text,
        f"--{boundary}",
        f'Content-Type: {kind.content_type}; name="{kind.filename}"',
        f'Content-Disposition: attachment; filename="{kind.filename}"',
        "Content-Transfer-Encoding: base64",
        "",
        "",
    ]).encode()  # fmt: skip
    return head + _encoded(kind) + f"--{boundary}--\r\n".encode()
