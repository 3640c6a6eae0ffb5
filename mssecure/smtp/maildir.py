"""Local delivery into Maildir (https://cr.yp.to/proto/maildir.html), durably and exactly once.

A message is written to ``tmp/``, fsynced, and renamed into ``new/`` (then the directory is fsynced). Its file name
is derived from the queue id and the recipient row: a delivery retried after a crash finds the file already there
(in ``new/``, or in ``cur/`` where an IMAP server moved it, with its ``:2,`` flags) and does not write it twice.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from mssecure.smtp.queue import sync_directory, write_synced

__all__ = ["Maildirs"]

_LOCAL_PART = re.compile(r"[a-z0-9!#$%&'*+\-=?^_`{|}~.]+")  # RFC 5322 atext but "/", and dots


class Maildirs:
    """The local mailboxes: ``<root>/<domain>/<local part>/{tmp,new,cur}``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"

    def path(self, address: str) -> Path:
        local, _, domain = address.lower().rpartition("@")
        if not local or not domain or not _LOCAL_PART.fullmatch(local) or local.startswith(".") or ".." in local:
            raise ValueError(f"cannot make a mailbox path for {address!r}")
        if "/" in domain or domain.startswith("."):
            raise ValueError(f"cannot make a mailbox path for {address!r}")
        return self.root / domain / local

    def ensure(self, address: str) -> Path:
        box = self.path(address)
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        return box

    def deliver(self, address: str, data: bytes, unique: str) -> tuple[Path, bool]:
        """Write ``data`` into the mailbox of ``address`` as ``<unique>.<host>``; (path, False) if it already was."""
        if not unique.replace(".", "").isalnum():
            raise ValueError(f"invalid unique name {unique!r}")
        box = self.ensure(address)
        name = f"{unique}.{self.host}"
        existing = self._find(box, name)
        if existing is not None:
            return existing, False
        temporary = box / "tmp" / name
        write_synced(temporary, data, os.O_TRUNC)
        final = box / "new" / name
        os.rename(temporary, final)
        sync_directory(box / "new")
        return final, True

    @staticmethod
    def _find(box: Path, name: str) -> Path | None:
        if (box / "new" / name).exists():
            return box / "new" / name
        for path in (box / "cur").glob(f"{name}:*"):
            return path
        return path if (path := box / "cur" / name).exists() else None
