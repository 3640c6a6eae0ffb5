"""RFC 9162 inclusion proofs: built in one streaming pass, checked against the recursive definition of the tree for
every leaf of every tree of 1 to 40 leaves; any change to the leaf, the path, the index or the size fails."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssecure.archive.merkle import leaf_hash, merkle_root, node_hash
from mssecure.archive.proofs import (
    canonical_text,
    event_from_canonical,
    inclusion_path,
    inclusion_paths,
    root_from_inclusion,
    verify_inclusion,
)
from mssecure.archive.records import canonical_event, canonical_json, event_hash, format_time


def leaves(n: int) -> list[bytes]:
    return [f"event {i}".encode() for i in range(n)]


def reference_path(data: list[bytes], m: int) -> list[bytes]:
    """PATH(m, D[n]) exactly as RFC 9162 §2.1.3.1 defines it, recursively."""
    n = len(data)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*reference_path(data[:k], m), merkle_root(data[k:])]
    return [*reference_path(data[k:], m - k), merkle_root(data[:k])]


@pytest.mark.parametrize("n", range(1, 41))
def test_every_leaf_of_every_small_tree_is_proven(n: int) -> None:
    data = leaves(n)
    root = merkle_root(data)
    computed_root, paths = inclusion_paths((leaf_hash(d) for d in data), n, range(n))
    assert computed_root == root
    for m in range(n):
        assert paths[m] == reference_path(data, m)
        assert verify_inclusion(leaf_hash(data[m]), m, n, paths[m], root)
        assert inclusion_path(data, m) == paths[m]


@pytest.mark.parametrize("n", range(1, 41))
def test_tampering_with_a_proof_fails(n: int) -> None:
    data = leaves(n)
    root = merkle_root(data)
    for m in range(n):
        path = inclusion_path(data, m)
        leaf = leaf_hash(data[m])
        assert not verify_inclusion(leaf_hash(b"forged"), m, n, path, root)
        assert not verify_inclusion(leaf, m, n, path, leaf_hash(b"another root"))
        if n > 1:
            assert not verify_inclusion(leaf, (m + 1) % n, n, path, root)  # another place
        for i in range(len(path)):  # each hash of the path, one bit flipped
            flipped = [*path]
            flipped[i] = bytes([path[i][0] ^ 1]) + path[i][1:]
            assert not verify_inclusion(leaf, m, n, flipped, root)
        if path:
            assert not verify_inclusion(leaf, m, n, path[:-1], root)  # shortened
        assert not verify_inclusion(leaf, m, n, [*path, root], root)  # lengthened
        assert root_from_inclusion(leaf, n, n, path) is None  # outside the tree
        assert root_from_inclusion(leaf, m, n, [b"short"]) is None


def test_the_tree_of_seven_leaves_of_rfc_9162() -> None:
    """RFC 9162 §2.1.5: the path of d0 in the tree of 7 leaves is [b, h, l]."""
    d = leaves(7)
    a, b, c, dd, e, f, g = (leaf_hash(x) for x in d)
    h, i, j = node_hash(c, dd), node_hash(a, b), node_hash(e, f)
    l_ = node_hash(j, g)
    assert inclusion_path(d, 0) == [b, h, l_]
    assert inclusion_path(d, 3) == [c, i, l_]
    assert inclusion_path(d, 4) == [f, g, node_hash(i, h)]
    assert inclusion_path(d, 6) == [j, node_hash(i, h)]


def test_leaves_beyond_the_tree_size_are_ignored_and_too_few_refused() -> None:
    data = leaves(10)
    root, paths = inclusion_paths((leaf_hash(x) for x in data), 6, [5])
    assert root == merkle_root(data[:6])
    assert paths[5] == reference_path(data[:6], 5)
    with pytest.raises(ValueError, match="only 4 leaf hashes"):
        inclusion_paths((leaf_hash(x) for x in data[:4]), 6, [1])
    with pytest.raises(ValueError, match="not in a tree"):
        inclusion_paths((leaf_hash(x) for x in data), 6, [6])
    with pytest.raises(ValueError, match="at least one leaf"):
        inclusion_paths(iter(()), 0, [])
    with pytest.raises(ValueError, match="32 bytes"):
        inclusion_paths(iter([b"short"]), 1, [0])


@given(st.lists(st.binary(max_size=20), min_size=1, max_size=300), st.data())
def test_proofs_of_any_tree(data: list[bytes], draw: st.DataObject) -> None:
    n = len(data)
    wanted = draw.draw(st.sets(st.integers(0, n - 1), max_size=5))
    root, paths = inclusion_paths((leaf_hash(x) for x in data), n, wanted)
    assert root == merkle_root(data)
    for m in wanted:
        assert paths[m] == reference_path(data, m)
        assert verify_inclusion(leaf_hash(data[m]), m, n, paths[m], root)


def test_a_path_made_of_the_root_itself_proves_nothing() -> None:
    data = leaves(1)
    root = merkle_root(data)
    assert verify_inclusion(leaf_hash(data[0]), 0, 1, [], root)
    assert not verify_inclusion(hashlib.sha256(b"x").digest(), 0, 1, [], root)


# -- events read back from their canonical form (export lines, evidence events: untrusted input)

_text = st.text(max_size=30)
_optional = st.none() | _text


@given(st.integers(1, 2**40), st.datetimes(timezones=st.just(UTC)), _text, _text, _optional, _optional, _optional,
       _optional, _optional, _optional, st.lists(_text, max_size=4), _optional, _optional,
       st.text("0123456789abcdef", min_size=64, max_size=64))  # fmt: skip
def test_an_event_read_back_from_its_canonical_form_has_its_hash(
    sequence: int, time: datetime, type_: str, outcome: str, actor: str | None, peer: str | None,
    queue_id: str | None, message_id: str | None, sha256: str | None, sender: str | None, recipients: list[str],
    reason: str | None, reply: str | None, prev: str,
) -> None:  # fmt: skip
    text = canonical_event(sequence, format_time(time), type_, outcome, actor, peer, queue_id, message_id, sha256,
                           sender, canonical_json(recipients), reason, reply, prev)  # fmt: skip
    event = event_from_canonical(json.loads(text))
    assert event.hash == event_hash(text)
    assert canonical_text(event) == text
    assert (event.sequence, event.time, event.recipients, event.prev_hash) == (sequence, time, tuple(recipients), prev)


def _valid() -> dict[str, Any]:
    text = canonical_event(7, "2026-11-23T09:00:00.000000+00:00", "delivered", "ok", "relay", None, "Q1", "<m@x>",
                           None, "a@x", '["b@x"]', None, None, "0" * 64)  # fmt: skip
    value: dict[str, Any] = json.loads(text)
    return value


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seq": 7.0}, "seq is not a positive integer"),
        ({"seq": True}, "seq is not a positive integer"),
        ({"seq": 0}, "seq is not a positive integer"),
        ({"v": 2}, "version 2"),
        ({"type": None}, "type is not a string"),
        ({"actor": 3}, "actor is neither a string nor null"),
        ({"recipients": "b@x"}, "recipients is not a list of strings"),
        ({"recipients": [1]}, "recipients is not a list of strings"),
        ({"time": "yesterday"}, "not an RFC 3339 UTC time"),
        ({"time": "2026-11-23T10:00:00.000000+01:00"}, "not in the archive's canonical form"),
        ({"time": "2026-11-23T09:00:00+00:00"}, "not in the archive's canonical form"),
        ({"extra": 1}, "extra"),
    ],
)
def test_what_is_not_an_events_canonical_form_is_refused(change: dict[str, Any], message: str) -> None:
    value = {**_valid(), **change}
    with pytest.raises(ValueError, match=message):
        event_from_canonical(value)
    missing = _valid()
    del missing["reply"]
    with pytest.raises(ValueError, match="reply"):
        event_from_canonical(missing)
    with pytest.raises(ValueError, match="not a JSON object"):
        event_from_canonical([1])
