"""The tamper-evident audit archive (issue 5): every decision of the relay and every operator action, hash-chained,
in an RFC 9162 Merkle tree, with checkpoints signed by the operator's Ed25519 archive key (see docs/archive.md).

    archive = Archive(engine, key=keystore.load("archive"), origin="chu-nord.mssante.test")
    archive.append(Event("submission.accepted", "ok", actor=..., queue_id=..., message_id=..., ...))  # → sequence
    archive.checkpoint()                                  # at an interval and on shutdown
    verify_archive(engine, load_public_key(data_dir / "archive.pub")).ok

The encrypted message store (``store``): every accepted message as received and as delivered, sealed for the
store's X25519 key, addressed by SHA-256, deduplicated, purged after its retention::

    store = MessageStore(engine, public_key=load_store_public_key(data_dir / "archive-store.pub"))
    sha256 = store.put(data, kind="received", queue_id=..., message_id=..., connection=queue_transaction)
    MessageStore(engine, private_key=keystore.load("archive-store")).get(sha256)   # needs the master secret
    store.purge(retention_limits(3650, 3650, now))                                 # events and proofs stay

The relay writes through ``writer.ArchiveWriter`` (refusals, logins: batched in a thread) and, for every change of
its queue, in the queue's own transaction (``smtp.events.Journal``). Proofs for auditors: ``export`` (a range of the
log, verifiable offline), ``evidence`` (a signed statement about one message with Merkle inclusion proofs), both
built on ``proofs`` (RFC 9162 inclusion proofs).
"""

from mssecure.archive.checkpoint import Checkpoint, key_id, load_public_key, sign_checkpoint
from mssecure.archive.log import Archive, Head
from mssecure.archive.merkle import MerkleFrontier, leaf_hash, merkle_root, node_hash
from mssecure.archive.records import GENESIS_HASH, ArchivedEvent, ArchiveError, canonical_event, event_hash
from mssecure.archive.store import (
    KINDS,
    MessageStore,
    PurgeReport,
    StoredBody,
    StoredCopy,
    ensure_store_key,
    load_store_public_key,
    retention_limits,
    store_key_id,
)
from mssecure.archive.verify import Finding, VerifyReport, verify_archive

__all__ = [
    "GENESIS_HASH",
    "KINDS",
    "Archive",
    "ArchiveError",
    "ArchivedEvent",
    "Checkpoint",
    "Finding",
    "Head",
    "MerkleFrontier",
    "MessageStore",
    "PurgeReport",
    "StoredBody",
    "StoredCopy",
    "VerifyReport",
    "canonical_event",
    "ensure_store_key",
    "event_hash",
    "key_id",
    "leaf_hash",
    "load_public_key",
    "load_store_public_key",
    "merkle_root",
    "node_hash",
    "retention_limits",
    "sign_checkpoint",
    "store_key_id",
    "verify_archive",
]
