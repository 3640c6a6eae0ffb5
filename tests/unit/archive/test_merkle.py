"""The RFC 9162 Merkle tree hash: the incremental frontier against the recursive definition, and known values."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssecure.archive.merkle import EMPTY_ROOT, MerkleFrontier, leaf_hash, merkle_root, node_hash


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_small_trees_have_the_rfc_9162_shape() -> None:
    d = [bytes([i]) * 3 for i in range(7)]
    leaves = [sha(b"\x00" + x) for x in d]

    def node(left: bytes, right: bytes) -> bytes:
        return sha(b"\x01" + left + right)

    assert merkle_root([]) == sha(b"") == EMPTY_ROOT
    assert merkle_root(d[:1]) == leaves[0]
    assert merkle_root(d[:2]) == node(leaves[0], leaves[1])
    # n = 3: k = 2, the left subtree is the perfect one
    assert merkle_root(d[:3]) == node(node(leaves[0], leaves[1]), leaves[2])
    # n = 7: k = 4, then 3 = 2 + 1 (RFC 9162 §2.1.5, the tree of 7 leaves)
    left = node(node(leaves[0], leaves[1]), node(leaves[2], leaves[3]))
    right = node(node(leaves[4], leaves[5]), leaves[6])
    assert merkle_root(d) == node(left, right)


def test_empty_tree_hash_is_the_known_constant() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@given(st.lists(st.binary(max_size=40), max_size=70))
def test_the_frontier_gives_the_recursive_root_at_every_size(data: list[bytes]) -> None:
    frontier = MerkleFrontier()
    assert frontier.root() == merkle_root([])
    for size, item in enumerate(data, start=1):
        frontier.append(item)
        assert frontier.size == size
        assert frontier.root() == merkle_root(data[:size])


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=40))
def test_the_frontier_round_trips_through_its_stored_form(hashes: list[bytes]) -> None:
    frontier = MerkleFrontier()
    for h in hashes:
        frontier.append_leaf_hash(h)
    again = MerkleFrontier.from_bytes(frontier.size, frontier.to_bytes())
    assert again.root() == frontier.root()
    again.append(b"next")
    frontier.append(b"next")
    assert again.root() == frontier.root()


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    a, b = b"a" * 32, b"b" * 32
    assert leaf_hash(a + b) != node_hash(a, b)
    assert node_hash(a, b) == sha(b"\x01" + a + b)


def test_a_frontier_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="3 leaves has 2 subtree roots"):
        MerkleFrontier(3, [b"x" * 32])
