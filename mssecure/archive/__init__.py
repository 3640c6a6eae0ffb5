"""The tamper-evident audit archive (issue 5): every decision of the relay and every operator action, hash-chained,
in an RFC 9162 Merkle tree, with checkpoints signed by the operator's Ed25519 archive key (see docs/archive.md).

    archive = Archive(engine, key=keystore.load("archive"), origin="chu-nord.mssante.test")
    archive.append(Event("submission.accepted", "ok", actor=..., queue_id=..., message_id=..., ...))  # → sequence
    archive.checkpoint()                                  # at an interval and on shutdown
    verify_archive(engine, load_public_key(data_dir / "archive.pub")).ok

The encrypted message store, retention (purge), export and evidence are still to come.
"""

from mssecure.archive.checkpoint import Checkpoint, key_id, load_public_key, sign_checkpoint
from mssecure.archive.log import Archive, Head
from mssecure.archive.merkle import MerkleFrontier, leaf_hash, merkle_root, node_hash
from mssecure.archive.records import GENESIS_HASH, ArchivedEvent, ArchiveError, canonical_event, event_hash
from mssecure.archive.verify import Finding, VerifyReport, verify_archive

__all__ = [
    "GENESIS_HASH",
    "Archive",
    "ArchiveError",
    "ArchivedEvent",
    "Checkpoint",
    "Finding",
    "Head",
    "MerkleFrontier",
    "VerifyReport",
    "canonical_event",
    "event_hash",
    "key_id",
    "leaf_hash",
    "load_public_key",
    "merkle_root",
    "node_hash",
    "sign_checkpoint",
    "verify_archive",
]
