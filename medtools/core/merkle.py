"""The RFC 9162 Merkle tree (Certificate Transparency v2): hashes, roots, inclusion and consistency proofs.

One implementation for every family (``seal``/``verify`` and the encrypted index). The tree
over n leaves is the one of RFC 9162 §2.1 (formerly RFC 6962):

* a leaf hash is SHA-256(0x00 ‖ leaf data), an inner node SHA-256(0x01 ‖ left ‖ right);
* a tree of n > 1 leaves splits at the largest power of two below n, so no leaf is ever
  duplicated (the Bitcoin construction's CVE-2012-2459);
* the empty tree's hash is SHA-256 of nothing.

Inclusion proofs are the audit paths of §2.1.3, consistency proofs (an old tree of m leaves
is a prefix of the new tree of n leaves: an append-only log) those of §2.1.4; both are
checked by the verification algorithms of the RFC, which need only the proof, the sizes and
the roots. What the leaf data is belongs to the caller (a file's path and digest, an index
entry's id and ciphertext digest).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32


def hash_leaf(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 ‖ data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 ‖ left ‖ right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaves: Sequence[bytes], start: int, end: int) -> bytes:
    n = end - start
    if n == 1:
        return leaves[start]
    k = _split(n)
    return node_hash(_mth(leaves, start, start + k), _mth(leaves, start + k, end))


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """Merkle tree hash (MTH) of the leaf hashes; SHA-256 of nothing for no leaves."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    return _mth(leaves, 0, len(leaves))


def audit_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Inclusion proof of leaf ``index`` (RFC 9162 §2.1.3.1): sibling hashes from the leaf up."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf index {index} outside a tree of {len(leaves)} leaves")

    def path(start: int, end: int, m: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return path(start, start + k, m) + [_mth(leaves, start + k, end)]
        return path(start + k, end, m - k) + [_mth(leaves, start, start + k)]

    return path(0, len(leaves), index)


def root_from_path(leaf: bytes, index: int, size: int, siblings: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2); ValueError for a malformed path."""
    if not 0 <= index < size:
        raise ValueError("leaf index outside the tree")
    fn, sn, node = index, size - 1, leaf
    for sibling in siblings:
        if sn == 0:
            raise ValueError("audit path too long")
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            node = node_hash(node, sibling)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("audit path too short")
    return node


def verify_inclusion(leaf: bytes, index: int, size: int, siblings: Sequence[bytes], root: bytes) -> bool:
    """True when ``siblings`` proves ``leaf`` at ``index`` in the tree of ``size`` leaves with ``root``."""
    try:
        return root_from_path(leaf, index, size, siblings) == root
    except ValueError:
        return False


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """Proof that the first ``old_size`` leaves form a prefix of ``leaves`` (RFC 9162 §2.1.4.1)."""
    n = len(leaves)
    if not 0 < old_size <= n:
        raise ValueError(f"old tree size {old_size} is not in 1..{n}")

    def subproof(m: int, start: int, end: int, complete: bool) -> list[bytes]:
        size = end - start
        if m == size:
            return [] if complete else [_mth(leaves, start, end)]
        k = _split(size)
        if m <= k:
            return subproof(m, start, start + k, complete) + [_mth(leaves, start + k, end)]
        return subproof(m - k, start + k, end, False) + [_mth(leaves, start, start + k)]

    return subproof(old_size, 0, n, True)


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: the tree of ``new_size`` leaves with ``new_root`` extends ``old_root``."""
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    path = list(proof)
    if not path:
        return False
    if old_size & (old_size - 1) == 0:  # an exact power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == old_root and sr == new_root and sn == 0
