"""Block-wise learnable image encryption (Tanaka, "Learnable Image Encryption", IEEE ICCE-TW 2018).

The image is cut into B×B blocks and every block gets the same key-dependent transform:

1. pixel shuffle: the B² positions of a block are permuted,
2. negative-positive transformation: selected (position, channel) values v become M−1−v,
3. channel shuffle: the colour channels are permuted (a no-op for grey images).

Because the transform is identical in every block and for every image encrypted with the
key, a CNN whose first layer sees whole blocks (stride B) can learn on cipher images as
well as on plain ones: that is the purpose. It is *not* a confidentiality cipher: one
changed pixel changes one cipher pixel, block statistics and the histogram (up to
negation) survive, and one known plain/cipher pair gives away the whole transform
(``known_plaintext_attack`` below; docs/secure.md reports the numbers).
"""

from __future__ import annotations

import numpy as np

from medtools.imagecipher import derive


def _check(levels: np.ndarray, block: int) -> tuple[int, int, int]:
    if levels.ndim not in (2, 3) or (levels.ndim == 3 and levels.shape[2] > 4):
        raise ValueError(f"block encryption works on 2-D grey or colour images, got shape {levels.shape}")
    height, width = levels.shape[:2]
    channels = levels.shape[2] if levels.ndim == 3 else 1
    if block < 1 or height % block or width % block:
        divisors = [d for d in range(2, min(height, width) + 1) if height % d == 0 and width % d == 0]
        raise ValueError(f"a {height}×{width} image does not split into {block}×{block} blocks; block sizes that fit: {divisors or 'none'}")
    return height, width, channels


def transform(key: bytes, block: int, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixel permutation of B², negative mask of (B², C), channel permutation of C) for a key."""
    label = f"block/{block}/{channels}"
    pixels = derive.permutation(key, f"{label}/pixels", block * block)
    negative = derive.bits(key, f"{label}/negative", block * block * channels).reshape(block * block, channels)
    channel_order = derive.permutation(key, f"{label}/channels", channels)
    return pixels, negative, channel_order


def _to_blocks(levels: np.ndarray, block: int) -> np.ndarray:
    height, width = levels.shape[:2]
    channels = levels.shape[2] if levels.ndim == 3 else 1
    grid = levels.reshape(height // block, block, width // block, block, channels)
    return grid.transpose(0, 2, 1, 3, 4).reshape(-1, block * block, channels)


def _from_blocks(blocks: np.ndarray, shape: tuple[int, ...], block: int) -> np.ndarray:
    height, width = shape[:2]
    channels = blocks.shape[2]
    grid = blocks.reshape(height // block, width // block, block, block, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(shape)


def encrypt(levels: np.ndarray, key: bytes, bits: int, block: int = 16) -> np.ndarray:
    """Cipher image of the same shape (levels are unsigned integers < 2^bits)."""
    _, _, channels = _check(levels, block)
    pixels, negative, channel_order = transform(key, block, channels)
    blocks = _to_blocks(levels, block)[:, pixels][:, :, channel_order]
    top = levels.dtype.type((1 << bits) - 1)
    blocks = np.where(negative[None], top - blocks, blocks)
    return _from_blocks(blocks, levels.shape, block)


def decrypt(cipher: np.ndarray, key: bytes, bits: int, block: int = 16) -> np.ndarray:
    """Exact inverse of ``encrypt``."""
    _, _, channels = _check(cipher, block)
    pixels, negative, channel_order = transform(key, block, channels)
    top = cipher.dtype.type((1 << bits) - 1)
    blocks = _to_blocks(cipher, block)
    blocks = np.where(negative[None], top - blocks, blocks)
    plain = np.empty_like(blocks)
    plain[:, :, channel_order] = blocks
    unshuffled = np.empty_like(plain)
    unshuffled[:, pixels] = plain
    return _from_blocks(unshuffled, cipher.shape, block)


def known_plaintext_attack(plain: np.ndarray, cipher: np.ndarray, bits: int, block: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Recover the block transform from ONE plain/cipher pair.

    For every cipher sub-pixel (position, channel) pick the plain sub-pixel and polarity
    that agree with it in the most blocks. Returns (source index, negated) per sub-pixel,
    usable with ``apply_recovered`` to decrypt any other image of the same key.
    """
    _check(plain, block)
    top = (1 << bits) - 1
    p = _to_blocks(plain, block).reshape(-1, block * block * (plain.shape[2] if plain.ndim == 3 else 1)).astype(np.int64)
    c = _to_blocks(cipher, block).reshape(p.shape).astype(np.int64)
    # agreement[q, s]: blocks where cipher sub-pixel q equals plain sub-pixel s (or its negative)
    size = p.shape[1]
    same = np.zeros((size, size), dtype=np.int64)
    flipped = np.zeros((size, size), dtype=np.int64)
    step = max(1, (1 << 24) // (size * size))  # bounded memory for large images
    for start in range(0, p.shape[0], step):
        pc, cc = p[start : start + step], c[start : start + step]
        same += (cc[:, :, None] == pc[:, None, :]).sum(axis=0)
        flipped += (cc[:, :, None] == top - pc[:, None, :]).sum(axis=0)
    negated = flipped.max(axis=1) > same.max(axis=1)
    source = np.where(negated, flipped.argmax(axis=1), same.argmax(axis=1))
    return source, negated


def apply_recovered(cipher: np.ndarray, source: np.ndarray, negated: np.ndarray, bits: int, block: int = 16) -> np.ndarray:
    """Decrypt with a transform recovered by ``known_plaintext_attack``."""
    top = (1 << bits) - 1
    c = _to_blocks(cipher, block)
    flat = c.reshape(c.shape[0], -1).astype(np.int64)
    flat = np.where(negated[None], top - flat, flat)
    plain = np.zeros_like(flat)
    plain[:, source] = flat
    return _from_blocks(plain.astype(cipher.dtype).reshape(c.shape), cipher.shape, block)


def unshuffle(array: np.ndarray, key: bytes, block: int = 16) -> np.ndarray:
    """Positions only: an (H, W) array in the cipher image's frame (a saliency map) → the plain
    image's frame, undoing the pixel shuffle of a grey image's blocks (the negative-positive
    transformation moves no pixel)."""
    _check(array, block)
    pixels, _, _ = transform(key, block, 1)
    blocks = _to_blocks(array, block)
    plain = np.empty_like(blocks)
    plain[:, pixels] = blocks
    return _from_blocks(plain, array.shape, block)
