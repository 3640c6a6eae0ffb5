"""Merkle inclusion proofs (RFC 9162 §2.1.3): that an event is among the first ``tree_size`` events a checkpoint
signed, shown with about log2(tree_size) hashes and without revealing any other event.

The audit path of leaf ``m`` in a tree of ``n`` leaves is, per RFC 9162 §2.1.3.1 (``k``: the largest power of two
smaller than ``n``)::

    PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])       if m < k
    PATH(m, D[n]) = PATH(m - k, D[k:n]) : MTH(D[0:k])   if m >= k

— the hashes of the sibling subtrees from the leaf up to the root. Each sibling is either a perfect subtree aligned on
its size, whose hash is met while the tree is grown leaf by leaf (the carries of ``merkle.MerkleFrontier``), or a
suffix ``D[k:n]`` of the whole tree, whose hash is the fold of the last subtree roots of the finished frontier. So
``inclusion_paths`` builds any number of paths in one streaming pass over the leaf hashes, with O(log n) memory: what
``archive evidence`` and ``archive export`` need to prove events of a log of millions of events.
``verify_inclusion`` is the check of RFC 9162 §2.1.3.2, which is all a verifier needs.

The second half reads the leaf hashes (the event hashes) from the database and picks the signed checkpoint a proof
is made against (``anchor_checkpoint``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Generator, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy.engine import Engine

from mssecure.archive.checkpoint import Checkpoint
from mssecure.archive.log import Archive, checkpoint_from_row
from mssecure.archive.merkle import EMPTY_ROOT, HASH_SIZE, leaf_hash
from mssecure.archive.models import ArchiveCheckpointRecord, ArchiveEventRecord
from mssecure.archive.records import (
    FORMAT_VERSION,
    ArchivedEvent,
    ArchiveError,
    canonical_event,
    canonical_json,
    format_time,
)

__all__ = [
    "InclusionProof",
    "anchor_checkpoint",
    "canonical_text",
    "event_from_canonical",
    "inclusion_path",
    "inclusion_paths",
    "prove_events",
    "root_from_inclusion",
    "verify_inclusion",
]

_NODE = b"\x01"
_events = cast(sa.Table, ArchiveEventRecord.__table__)
_checkpoints = cast(sa.Table, ArchiveCheckpointRecord.__table__)
_BATCH = 10_000


def _sibling_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges [start, end) of the audit path of leaf ``index`` in a tree of ``size``, leaf level first."""
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = 1 << ((end - start - 1).bit_length() - 1)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def inclusion_paths(
    leaf_hashes: Iterable[bytes], tree_size: int, indices: Collection[int]
) -> tuple[bytes, dict[int, list[bytes]]]:
    """The Merkle root of the first ``tree_size`` leaf hashes and the audit path of each leaf of ``indices``
    (0-based), in one pass over the leaf hashes (which must give at least ``tree_size`` of them; more are ignored).

    Raises ``ValueError`` when an index is outside the tree or the leaves run out."""
    if tree_size < 1:
        raise ValueError("an inclusion proof needs a tree of at least one leaf")
    for index in indices:
        if not 0 <= index < tree_size:
            raise ValueError(f"leaf {index} is not in a tree of {tree_size} leaves")
    # Where each sibling's hash comes from: a perfect subtree is caught when the frontier's carry makes it (keyed by
    # its end and width); a suffix of the tree is folded from the finished frontier (keyed by its start).
    paths: dict[int, list[bytes]] = {}
    perfect: dict[int, dict[int, list[tuple[int, int]]]] = {}  # end → width → [(index, slot)]
    suffixes: list[tuple[int, int, int]] = []  # (start, index, slot)
    for index in indices:
        ranges = _sibling_ranges(index, tree_size)
        paths[index] = [b""] * len(ranges)
        for slot, (start, end) in enumerate(ranges):
            width = end - start
            if width & (width - 1) == 0 and start % width == 0:
                perfect.setdefault(end, {}).setdefault(width, []).append((index, slot))
            else:  # not a power of two: a suffix D[k:n] (RFC 9162 splits on powers of two from the left)
                suffixes.append((start, index, slot))
    sha256 = hashlib.sha256
    stack: list[bytes] = []
    count = 0
    for current in leaf_hashes:
        if count == tree_size:
            break
        if len(current) != HASH_SIZE:
            raise ValueError(f"leaf hash {count} is not {HASH_SIZE} bytes")
        end = count + 1
        wanted = perfect.get(end)
        if wanted is not None:
            for index, slot in wanted.get(1, ()):
                paths[index][slot] = current
        size, width = count, 1
        while size & 1:
            current = sha256(_NODE + stack.pop() + current).digest()
            size >>= 1
            width <<= 1
            if wanted is not None:
                for index, slot in wanted.get(width, ()):
                    paths[index][slot] = current
        stack.append(current)
        count = end
    if count < tree_size:
        raise ValueError(f"the tree has {tree_size} leaves but only {count} leaf hashes were given")
    # The frontier's subtrees, largest first, and where each starts: one per bit of tree_size.
    starts: list[int] = []
    position = 0
    for bit in reversed(range(tree_size.bit_length())):
        if tree_size >> bit & 1:
            starts.append(position)
            position += 1 << bit
    for start, index, slot in suffixes:
        first = starts.index(start)  # RFC 9162 suffixes start on the frontier's boundaries
        paths[index][slot] = _fold(stack[first:])
    return _fold(stack), paths


def _fold(hashes: Sequence[bytes]) -> bytes:
    """The hash of consecutive perfect subtrees, largest first, as one right-leaning tree (RFC 9162's shape)."""
    if not hashes:
        return EMPTY_ROOT
    current = hashes[-1]
    for left in reversed(hashes[:-1]):
        current = hashlib.sha256(_NODE + left + current).digest()
    return current


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` among ``leaves`` (their data, not their hashes): RFC 9162 §2.1.3.1."""
    _, paths = inclusion_paths((leaf_hash(data) for data in leaves), len(leaves), [index])
    return paths[index]


def root_from_inclusion(leaf: bytes, index: int, tree_size: int, path: Sequence[bytes]) -> bytes | None:
    """The root that leaf hash ``leaf`` at ``index`` with ``path`` gives, or None when the path cannot belong to a
    tree of ``tree_size`` leaves (wrong length, index outside): RFC 9162 §2.1.3.2."""
    if not 0 <= index < tree_size or any(len(p) != HASH_SIZE for p in path):
        return None
    fn, sn, r = index, tree_size - 1, leaf
    sha256 = hashlib.sha256
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = sha256(_NODE + p + r).digest()
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = sha256(_NODE + r + p).digest()
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(leaf: bytes, index: int, tree_size: int, path: Sequence[bytes], root: bytes) -> bool:
    """Whether ``path`` proves leaf hash ``leaf`` is leaf ``index`` of the tree of ``tree_size`` with ``root``."""
    return root_from_inclusion(leaf, index, tree_size, path) == root


# -- proofs of archived events


def canonical_text(event: ArchivedEvent) -> str:
    """The canonical form of an archived event, as hashed (``records``): the leaf data of its Merkle tree."""
    return canonical_event(event.sequence, format_time(event.time), event.type, event.outcome, event.actor,
                           event.peer, event.queue_id, event.message_id, event.sha256, event.sender,
                           canonical_json(list(event.recipients)), event.reason, event.reply,
                           event.prev_hash)  # fmt: skip


@dataclass(frozen=True)
class InclusionProof:
    """That event ``sequence`` (leaf ``sequence - 1``) is in the tree of ``tree_size`` events: its audit path."""

    sequence: int
    tree_size: int
    path: tuple[str, ...]  # hex, leaf level first

    def to_json(self) -> dict[str, object]:
        return {"sequence": self.sequence, "tree_size": self.tree_size, "path": list(self.path)}


def _leaf_hashes(engine: Engine, tree_size: int) -> Generator[bytes, None, None]:
    """The event hashes 1..tree_size from the database, in sequence order, streamed; refuses a gap."""
    query = (
        sa.select(_events.c.sequence, _events.c.hash)
        .where(_events.c.sequence <= tree_size)
        .order_by(_events.c.sequence)
        .execution_options(stream_results=True, yield_per=_BATCH)
    )
    expected = 1
    with engine.connect() as connection, connection.execute(query) as rows:  # closes the server cursor
        for sequence, stored in rows:
            if sequence != expected:
                raise ArchiveError(f"event {expected} is missing from the archive (run `mssecure archive verify`)")
            try:
                value = bytes.fromhex(stored)
            except (TypeError, ValueError):
                value = b""
            if len(value) != HASH_SIZE:
                raise ArchiveError(f"event {sequence}'s stored hash is damaged (run `mssecure archive verify`)")
            yield value
            expected += 1


def anchor_checkpoint(archive: Archive, public_key: ed25519.Ed25519PublicKey, last: int) -> Checkpoint:
    """The signed checkpoint proofs of events up to ``last`` are made against: the earliest stored one that covers
    it and that ``public_key`` signed; when none does, a new one signed now (which needs the archive key).

    The earliest, so that a proof refers to a checkpoint an auditor may already hold; a new one, so that events after
    the last checkpoint can be proven at once rather than at the relay's next interval."""
    with archive.engine.connect() as connection:
        rows = connection.execute(
            sa.select(_checkpoints)
            .where(_checkpoints.c.tree_size >= last, _checkpoints.c.tree_size == _checkpoints.c.sequence)
            .order_by(_checkpoints.c.tree_size, _checkpoints.c.id)
        )
        for row in rows:
            checkpoint = checkpoint_from_row(row._mapping)
            if checkpoint.signature_problem(public_key) is None:
                return checkpoint
    if archive.key is None:
        raise ArchiveError(
            f"no signed checkpoint covers event {last} yet, and the archive key to sign one is not available "
            "(sign one with `mssecure archive checkpoint` where the master secret is)"
        )
    return archive.checkpoint()


def prove_events(archive: Archive, checkpoint: Checkpoint, events: Sequence[ArchivedEvent]) -> list[InclusionProof]:
    """Inclusion proofs of ``events`` in ``checkpoint``'s tree, in one pass over the event hashes. Refuses when the
    stored events do not give the checkpoint's root or an event's fields do not give its hash: a proof of a
    tampered archive would not verify anyway, and the operator should learn why now."""
    for event in events:
        if event.sequence > checkpoint.tree_size:
            raise ArchiveError(f"event {event.sequence} is not covered by the checkpoint of {checkpoint.tree_size}")
        if leaf_hash(canonical_text(event).encode("utf-8")).hex() != event.hash:
            raise ArchiveError(
                f"event {event.sequence}'s fields do not give its hash: the archive was tampered with "
                "(run `mssecure archive verify`)"
            )
    indices = {event.sequence - 1 for event in events}
    with closing(_leaf_hashes(archive.engine, checkpoint.tree_size)) as hashes:  # closes the cursor on any error
        root, paths = inclusion_paths(hashes, checkpoint.tree_size, indices)
    if root.hex() != checkpoint.root:
        raise ArchiveError(
            f"the stored events do not give the Merkle root signed in the checkpoint of {checkpoint.tree_size} "
            "events: the archive was tampered with (run `mssecure archive verify`)"
        )
    return [
        InclusionProof(e.sequence, checkpoint.tree_size, tuple(h.hex() for h in paths[e.sequence - 1])) for e in events
    ]


_EVENT_KEYS = frozenset(
    ("actor", "message_id", "outcome", "peer", "prev", "queue_id", "reason", "recipients", "reply", "sender", "seq",
     "sha256", "time", "type", "v")
)  # fmt: skip
_OPTIONAL_TEXT = ("actor", "message_id", "peer", "queue_id", "reason", "reply", "sender", "sha256")


def event_from_canonical(value: Any) -> ArchivedEvent:
    """An event read back from its canonical form (a line of an export, an event of an evidence document), its hash
    recomputed from it. Raises ``ValueError`` saying what is wrong when ``value`` is not exactly an event's
    canonical form: a verifier must hash exactly what the archive hashed, so nothing else is accepted."""
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    if set(value) != _EVENT_KEYS:
        odd = sorted(set(value) ^ _EVENT_KEYS)
        raise ValueError(f"not the fields of an archived event ({', '.join(odd)})")
    if value["v"] != FORMAT_VERSION or isinstance(value["v"], bool):
        raise ValueError(f"event form version {value['v']!r} is not {FORMAT_VERSION}")
    sequence = value["seq"]
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise ValueError("seq is not a positive integer")
    for name in ("type", "outcome", "prev", "time"):
        if not isinstance(value[name], str):
            raise ValueError(f"{name} is not a string")
    for name in _OPTIONAL_TEXT:
        if value[name] is not None and not isinstance(value[name], str):
            raise ValueError(f"{name} is neither a string nor null")
    recipients = value["recipients"]
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        raise ValueError("recipients is not a list of strings")
    try:
        time = datetime.fromisoformat(value["time"])
        canonical_time = format_time(time)
    except ValueError:
        raise ValueError(f"time {value['time']!r} is not an RFC 3339 UTC time") from None
    if canonical_time != value["time"]:
        raise ValueError(f"time {value['time']!r} is not in the archive's canonical form")
    text = canonical_json(value)
    return ArchivedEvent(
        sequence=sequence,
        time=time,
        type=value["type"],
        outcome=value["outcome"],
        actor=value["actor"],
        peer=value["peer"],
        queue_id=value["queue_id"],
        message_id=value["message_id"],
        sha256=value["sha256"],
        sender=value["sender"],
        recipients=tuple(recipients),
        reason=value["reason"],
        reply=value["reply"],
        prev_hash=value["prev"],
        hash=leaf_hash(text.encode("utf-8")).hex(),
    )
