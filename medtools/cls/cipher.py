"""Encryption of model inputs on the fly, its key check, and augmentation that commutes with it.

Images go in as 8-bit grey levels at the model's size (a [0, 1] image is quantised by
``round(255·x)``), are encrypted with ``medtools.imagecipher`` (the same functions as
``medtools encrypt --method block|logistic-sine``) and come out as [0, 1] cipher images.
So a plain PNG encrypted by ``medtools encrypt`` at the model's size and a plain image
encrypted here give the same model input.

Augmentation (``augment``) uses only block-aligned moves: a cyclic shift of the image by
whole blocks and a mirror of the block *grid* (block columns swap places, block contents
stay as they are). The block cipher applies one transform inside every block, so both moves
commute with it exactly: ``encrypt(augment(x)) == augment(encrypt(x))`` (tested), and a
server that holds only cipher images could augment them itself. Nothing non-trivial
commutes with the logistic-sine cipher (one global permutation + plaintext-dependent
diffusion), so there the augmented plain image is encrypted after augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medtools.core.errors import IntegrityError, UsageError

LEVELS_BITS = 8


@dataclass(frozen=True)
class Encryption:
    """Which cipher a model sees through; ``key`` stays in memory only (never in a checkpoint)."""

    method: str = "none"
    key: bytes | None = field(default=None, repr=False)
    block_size: int = 16

    def __post_init__(self) -> None:
        from medtools.cls import ENCRYPTIONS

        if self.method not in ENCRYPTIONS:
            raise UsageError(f"unknown --encryption {self.method!r}; choose from {', '.join(ENCRYPTIONS)}")
        if self.method != "none" and self.key is None:
            raise UsageError(f"--encryption {self.method} needs --key FILE (a 256-bit key: `medtools keys gen-key FILE`)")
        if self.method == "none" and self.key is not None:
            raise UsageError("--key is only for --encryption block|logistic-sine")

    @property
    def key_id(self) -> str | None:
        from medtools.imagecipher.keyfile import key_id

        return key_id(self.key) if self.key is not None else None

    def config(self) -> dict[str, Any]:
        """The checkpoint's description of the cipher: method, block size, key fingerprint."""
        out: dict[str, Any] = {"encryption": self.method}
        if self.method == "block":
            out["block_size"] = self.block_size
        if self.key is not None:
            out["key_id"] = self.key_id
        return out

    def check_size(self, size: int) -> None:
        if self.method == "block" and size % self.block_size:
            fits = [b for b in (2, 4, 8, 16, 32) if size % b == 0]
            raise UsageError(f"--size {size} does not split into {self.block_size}×{self.block_size} blocks (block sizes that fit: {fits}; or pick a size divisible by {self.block_size})")

    def encrypt_levels(self, levels: np.ndarray) -> np.ndarray:
        """(H, W) uint8 plain levels → cipher levels (unchanged for ``none``)."""
        if self.method == "none":
            return levels
        from medtools.imagecipher import methods

        return methods.apply(levels, LEVELS_BITS, self.method, key=self.key, block_size=self.block_size)

    def encrypt_batch(self, images: np.ndarray) -> np.ndarray:
        """(N, 1, H, W) [0, 1] float → (N, 1, H, W) [0, 1] float cipher images."""
        if self.method == "none":
            return images.astype(np.float32)
        levels = quantise(images)
        out = np.stack([self.encrypt_levels(level[0])[None] for level in levels])
        return out.astype(np.float32) / 255.0


def quantise(images: np.ndarray) -> np.ndarray:
    """[0, 1] float → uint8 grey levels (round half to even, clipped)."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def from_config(config: dict[str, Any], key: bytes | None) -> Encryption | None:
    """The cipher a checkpoint was trained behind, checked against a user's key.

    Returns the Encryption to apply to plain inputs, or None when inputs are to be used as
    they are (an encrypted model and no key: the inputs are cipher images already). A key
    whose fingerprint is not the checkpoint's is an IntegrityError (exit 4).
    """
    method = config.get("encryption", "none")
    if method == "none":
        if key is not None:
            raise UsageError("this model was trained on plain images; --key is only for models trained with --encryption")
        return Encryption()
    if key is None:
        return None
    enc = Encryption(method, key, int(config.get("block_size", 16)))
    if enc.key_id != config.get("key_id"):
        raise IntegrityError(f"the key's fingerprint {enc.key_id} is not the one this model was trained with ({config.get('key_id')}): wrong key")
    return enc


def augment(levels: np.ndarray, rng: np.random.Generator, block: int, *, max_shift: int = 1, flip: float = 0.5) -> np.ndarray:
    """Block-aligned augmentation of (H, W) levels: shift by whole blocks (cyclic), mirror the block grid."""
    return apply_moves(levels, random_moves(rng, levels.shape, block, max_shift=max_shift, flip=flip), block)


def random_moves(rng: np.random.Generator, shape: tuple[int, ...], block: int, *, max_shift: int = 1, flip: float = 0.5) -> tuple[int, int, bool]:
    dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
    return dy, dx, bool(rng.random() < flip)


def apply_moves(levels: np.ndarray, moves: tuple[int, int, bool], block: int) -> np.ndarray:
    """Shift (dy, dx) in blocks, then mirror the block columns when the flag is set."""
    dy, dx, mirror = moves
    height, width = levels.shape[:2]
    if height % block or width % block:
        raise UsageError(f"a {height}×{width} image does not split into {block}×{block} blocks")
    out = np.roll(levels, (dy * block, dx * block), axis=(0, 1))
    if mirror:
        grid = out.reshape(height // block, block, width // block, block, *out.shape[2:])
        out = grid[:, :, ::-1].reshape(out.shape)
    return np.ascontiguousarray(out)
