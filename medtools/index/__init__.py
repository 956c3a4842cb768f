"""Verifiable encrypted feature index: CKKS-packed features, RFC 9162 Merkle tree, encrypted top-k queries."""
