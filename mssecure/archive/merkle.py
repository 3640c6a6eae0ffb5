"""The Merkle tree hash of RFC 9162 §2.1.1 (Certificate Transparency 2.0), computed incrementally.

For an ordered list of leaves D[n]::

    MTH({})      = SHA-256()
    MTH({d0})    = SHA-256(0x00 || d0)
    MTH(D[n])    = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))   k: the largest power of two smaller than n

The leaves of the archive are the events' canonical forms, in sequence order: their leaf hashes are the event
hashes (``records``). ``MerkleFrontier`` keeps only the
roots of the perfect subtrees the tree is made of (one per bit set in its size: O(log n) hashes), so the root of a
growing tree is available at any size without holding its leaves — what ``verify`` streams through and what the chain
head stores, so that a checkpoint costs O(log n) whatever the size of the archive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["EMPTY_ROOT", "HASH_SIZE", "MerkleFrontier", "leaf_hash", "merkle_root", "node_hash"]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162 §2.1.1: the hash of an empty list
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of ``leaves`` (their data, not their hashes), by the recursive definition of RFC 9162."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((n - 1).bit_length() - 1)  # the largest power of two smaller than n
    return node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


class MerkleFrontier:
    """The roots of the perfect subtrees of a tree of ``size`` leaves, largest (leftmost) first.

    Appending a leaf pushes its hash and merges the two rightmost subtrees while they have the same size (as a binary
    counter carries); ``root()`` folds them right to left, which is the tree hash of RFC 9162 for that size.
    """

    __slots__ = ("_hashes", "size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(f"a tree of {size} leaves has {size.bit_count()} subtree roots, not {len(hashes)}")
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError("a subtree root is 32 bytes")
        self.size = size
        self._hashes = list(hashes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> MerkleFrontier:
        """The frontier stored as the concatenation of its subtree roots (``to_bytes``)."""
        return cls(size, [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)])

    def to_bytes(self) -> bytes:
        return b"".join(self._hashes)

    def append(self, data: bytes) -> None:
        """Add a leaf, given its data."""
        self.append_leaf_hash(leaf_hash(data))

    def append_leaf_hash(self, current: bytes) -> None:
        """Add a leaf, given its leaf hash (an event hash is one: see ``records``)."""
        hashes = self._hashes
        size = self.size
        while size & 1:  # each trailing 1 bit of the old size is a subtree of the new leaf's size: merge
            current = hashlib.sha256(_NODE + hashes.pop() + current).digest()
            size >>= 1
        hashes.append(current)
        self.size += 1

    def root(self) -> bytes:
        hashes = self._hashes
        if not hashes:
            return EMPTY_ROOT
        current = hashes[-1]
        for left in reversed(hashes[:-1]):
            current = hashlib.sha256(_NODE + left + current).digest()
        return current

    def copy(self) -> MerkleFrontier:
        return MerkleFrontier(self.size, self._hashes)
