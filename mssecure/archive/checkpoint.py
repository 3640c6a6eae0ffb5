"""Signed checkpoints: the operator's Ed25519 archive key vouching for the state of the archive at one sequence.

A checkpoint states that after event ``sequence`` (``tree_size`` events: sequences start at 1 without gaps) the
hash chain ended in ``hash`` and the RFC 9162 Merkle tree of the events had root ``root``, at ``time``, for the
operator ``origin`` (its main domain). The signed bytes are the canonical JSON (``records.canonical_json``: keys
sorted, no whitespace, UTF-8) of::

    {"hash":…,"key_id":…,"origin":…,"root":…,"sequence":N,"time":"…+00:00","tree_size":N,
     "type":"mssecure.archive.checkpoint","v":1}

``key_id`` is the hex SHA-256 of the raw 32-byte Ed25519 public key (``data/archive.pub`` holds it as PEM);
``signature`` is the 64-byte Ed25519 signature (RFC 8032), base64. Anyone holding ``archive.pub`` can check a
checkpoint with a few lines of code, or with ``openssl pkeyutl -verify -rawin``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mssecure.archive.records import FORMAT_VERSION, ArchiveError, canonical_json, format_time

__all__ = ["CHECKPOINT_TYPE", "Checkpoint", "key_id", "load_public_key", "sign_checkpoint"]

CHECKPOINT_TYPE = "mssecure.archive.checkpoint"


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """The hex SHA-256 of the raw public key: names the key that signed a checkpoint."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    """The archive's public key from a PEM file (``data/archive.pub``)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise ArchiveError(f"missing archive public key {path} (made by `mssecure init`)") from None
    except ValueError:
        raise ArchiveError(f"{path} is not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ArchiveError(f"{path} is not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    tree_size: int
    hash: str
    root: str
    time: datetime
    origin: str
    key_id: str
    signature: str  # base64
    id: int | None = None  # the row, once stored

    def statement(self) -> bytes:
        """The bytes the signature covers."""
        return canonical_json(
            {
                "hash": self.hash,
                "key_id": self.key_id,
                "origin": self.origin,
                "root": self.root,
                "sequence": self.sequence,
                "time": format_time(self.time),
                "tree_size": self.tree_size,
                "type": CHECKPOINT_TYPE,
                "v": FORMAT_VERSION,
            }
        ).encode("utf-8")

    def signature_problem(self, public_key: ed25519.Ed25519PublicKey) -> str | None:
        """None if ``public_key`` signed this checkpoint as it stands, else what is wrong."""
        if self.key_id != key_id(public_key):
            return f"signed by another key ({self.key_id[:16]}…), not the archive key"
        try:
            signature = base64.b64decode(self.signature, validate=True)
            public_key.verify(signature, self.statement())
        except (binascii.Error, ValueError, InvalidSignature):
            return "signature invalid"
        return None

    @classmethod
    def from_json(cls, data: Any) -> Checkpoint:
        """A checkpoint as ``to_json`` (``mssecure archive checkpoint --json``) wrote it."""
        try:
            return cls(
                sequence=int(data["sequence"]),
                tree_size=int(data["tree_size"]),
                hash=str(data["hash"]),
                root=str(data["root"]),
                time=datetime.fromisoformat(str(data["time"])),
                origin=str(data["origin"]),
                key_id=str(data["key_id"]),
                signature=str(data["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveError(f"not a checkpoint as `mssecure archive checkpoint --json` writes it: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sequence": self.sequence,
            "tree_size": self.tree_size,
            "hash": self.hash,
            "root": self.root,
            "time": format_time(self.time),
            "origin": self.origin,
            "key_id": self.key_id,
            "signature": self.signature,
        }


def sign_checkpoint(
    key: ed25519.Ed25519PrivateKey, *, sequence: int, hash: str, root: str, time: datetime, origin: str
) -> Checkpoint:
    """A checkpoint of the archive after event ``sequence``, signed with ``key``."""
    unsigned = Checkpoint(sequence, sequence, hash, root, time, origin, key_id(key.public_key()), "")
    signature = base64.b64encode(key.sign(unsigned.statement())).decode("ascii")
    return Checkpoint(sequence, sequence, hash, root, time, origin, unsigned.key_id, signature)
