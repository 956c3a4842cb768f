"""core.merkle: RFC 9162 inclusion and consistency proofs (verification by the RFC's algorithms)."""

from __future__ import annotations

import pytest

from medtools.core import merkle


def leaves(n: int) -> list[bytes]:
    return [merkle.hash_leaf(b"entry %d" % i) for i in range(n)]


def test_hashes_are_domain_separated():
    import hashlib

    assert merkle.hash_leaf(b"x") == hashlib.sha256(b"\x00x").digest()
    a, b = leaves(2)
    assert merkle.node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    # a leaf whose data is two hashes is not the inner node over them (second-preimage safe)
    assert merkle.hash_leaf(a + b) != merkle.node_hash(a, b)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_inclusion_proofs_verify_and_reject_wrong_leaf_or_index(n):
    items = leaves(n)
    root = merkle.tree_root(items)
    for i in range(n):
        path = merkle.audit_path(items, i)
        assert merkle.verify_inclusion(items[i], i, n, path, root)
        if n > 1:
            assert not merkle.verify_inclusion(items[(i + 1) % n], i, n, path, root)
            assert not merkle.verify_inclusion(items[i], (i + 1) % n, n, path, root)
    with pytest.raises(ValueError):
        merkle.audit_path(items, n)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 9, 16, 21])
def test_consistency_proofs_between_every_prefix_and_the_full_tree(n):
    items = leaves(n)
    new_root = merkle.tree_root(items)
    for m in range(1, n + 1):
        old_root = merkle.tree_root(items[:m])
        proof = merkle.consistency_proof(items, m)
        assert merkle.verify_consistency(m, n, old_root, new_root, proof), (m, n)
        if m < n:
            # a rewritten old entry, a forged proof node or a changed new tree all fail
            forged_old = merkle.tree_root([merkle.hash_leaf(b"rewritten")] + items[1:m])
            assert not merkle.verify_consistency(m, n, forged_old, new_root, proof)
            assert not merkle.verify_consistency(m, n, old_root, new_root, [bytes(32)] + proof[1:])
            assert not merkle.verify_consistency(m, n, old_root, merkle.tree_root(items[:-1] + [bytes(32)]), proof)


def test_consistency_proof_sizes_follow_the_rfc_example():
    # RFC 9162 §2.1.5: proof(3, D[7]) = [c, d, g, l] has 4 nodes; proof(4, D[7]) = [l] has 1; proof(6, D[7]) = [i, j, k] has 3
    items = leaves(7)
    assert [len(merkle.consistency_proof(items, m)) for m in (3, 4, 6)] == [4, 1, 3]
