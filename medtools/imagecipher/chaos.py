"""Logistic-sine chaotic image cipher: permutation + four chained diffusion passes.

The logistic-sine system (LSS) of Zhou, Bao & Chen, "A new 1D chaotic system for image
encryption", Signal Processing 97 (2014) 172-182:

    x' = (r·x·(1 − x) + (4 − r)·sin(π·x)/4) mod 1,   r ∈ (0, 4], x ∈ (0, 1)

Key schedule (docs/formats.md has the byte-level description): a 256-bit key is expanded
with HKDF-SHA256/SHAKE256 (``derive.py``) into the starting points x0 and parameters r of
L parallel LSS orbits ("lanes"), each with 53 + 53 bits of key material, so even one lane
carries more than 2^100 keys. Lanes are iterated together, which vectorises the map with
numpy; after a burn-in their samples give

* the pixel permutation (stable argsort of n samples, the classic chaotic sort),
* four key-dependent S-boxes over the M = 2^bits grey levels (argsort of M samples each),
* four keystreams k1..k4 of n grey levels (the low 48 bits of ⌊x·2^52⌋).

Cipher (flat image p of n levels, arithmetic mod M):

    a = p[perm]
    b = S1[iv1 + prefix(a + k1)]     forward chain
    c = S2[iv2 + suffix(b + k2)]     backward chain
    d = S3[iv3 + prefix(c + k3)]     forward chain
    y = S4[iv4 + suffix(d + k4)]     backward chain

A prefix sum is a chained diffusion c_i = f(c_{i−1}, p_i) that numpy computes without a
Python loop; the S-boxes make each pass non-linear. A change at chain position j reaches
every later position in pass 1 and every earlier one in pass 2, unless the sum of the
differences pass 1 left behind is 0 mod M (probability 1/M); pass 3 turns the constant
difference in front of j into a random one. Pass 4 repeats pass 2, so a change is lost
for positions before j only if both sums vanish (probability ~1/M²): measured on chest
X-rays, three passes missed in ~1 of 200 one-pixel trials. One changed pixel changes
~(1 − 1/M) of the cipher pixels by a uniform amount (NPCR ≈ 99.61 %, UACI ≈ 33.46 % for
8 bits).

sin(πx) is evaluated with a fixed odd Taylor polynomial (degree 21, truncation error
< 2e-18 on the folded range, so it agrees with libm to rounding) built from IEEE
add/multiply only, so every machine computes the same orbit
bit for bit: libm and SIMD sin differ in the last bit between CPUs and chaos would amplify
that into a different key stream. Same key + same image → same cipher image (there is no
nonce, so the file stays a plain image of the same size); see docs/secure.md for what that
means. For confidentiality of medical data use the AES-GCM container.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from medtools.imagecipher import derive

BURN_IN = 64  # iterations discarded before sampling (transient of the orbit)
MIN_LANES = 1024
MAX_STEPS = 256  # lanes grow with the image so that at most this many sequential steps run
PASSES = 4  # diffusion passes: forward, backward, forward, backward
# sin(θ) = Σ (−1)^k θ^(2k+1)/(2k+1)!, k = 0..10 (θ ≤ π/2 after folding)
_SIN_COEFFS = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(11))
_RESEED = 0.6180339887498949  # an orbit that lands exactly on 0 (a fixed point) restarts here


def _sin_pi(x: np.ndarray) -> np.ndarray:
    """sin(π·x) for x ∈ [0, 1) with IEEE add/multiply only (deterministic on every CPU)."""
    theta = np.minimum(x, 1.0 - x) * math.pi  # sin(πx) = sin(π(1 − x)); θ ∈ [0, π/2]
    square = theta * theta
    poly = np.full_like(x, _SIN_COEFFS[-1])
    for coeff in _SIN_COEFFS[-2::-1]:
        poly *= square
        poly += coeff
    return poly * theta


def lss_step(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """One logistic-sine iteration for every lane."""
    y = r * x * (1.0 - x) + (4.0 - r) * 0.25 * _sin_pi(x)
    y -= np.floor(y)
    y[y == 0.0] = _RESEED
    return y


def lane_parameters(key: bytes, label: str, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """(x0, r) per lane from 16 key-stream bytes each: 53-bit fractions, x0 ∈ (0,1), r ∈ (0,4)."""
    words = np.frombuffer(derive.stream(key, f"logistic-sine/{label}", 16 * lanes), dtype="<u8").reshape(lanes, 2)
    scale = 2.0**-53
    x0 = ((words[:, 0] >> np.uint64(11)).astype(np.float64) + 0.5) * scale
    r = ((words[:, 1] >> np.uint64(11)).astype(np.float64) + 0.5) * scale * 4.0
    return x0, r


def lss_samples(key: bytes, label: str, count: int) -> np.ndarray:
    """``count`` chaotic samples in [0, 1): lanes iterated together, read step by step."""
    lanes = max(MIN_LANES, -(-count // MAX_STEPS))
    steps = -(-count // lanes)
    x, r = lane_parameters(key, label, lanes)
    for _ in range(BURN_IN):
        x = lss_step(x, r)
    out = np.empty((steps, lanes), dtype=np.float64)
    for step in range(steps):
        x = lss_step(x, r)
        out[step] = x
    return out.reshape(-1)[:count]


def _levels_dtype(bits: int) -> np.dtype:
    if not 1 <= bits <= 16:
        raise ValueError(f"logistic-sine works on 1..16-bit images, got {bits} bits")
    return np.dtype(np.uint8 if bits <= 8 else np.uint16)


def _keystream(samples: np.ndarray, count: int, dtype: np.dtype, mask: int) -> np.ndarray:
    """Grey levels from the low 48 bits of ⌊x·2^52⌋ (the top bits carry the map's bias)."""
    words = np.floor(samples * 2.0**52).astype("<u8")
    parts = words.view(np.uint8).reshape(-1, 8)[:, :6].reshape(-1)  # little-endian bytes 0..5
    if dtype == np.uint16:
        parts = parts.view("<u2")
    stream = parts[:count].astype(dtype)
    return stream & dtype.type(mask)


@dataclass(frozen=True)
class Schedule:
    """Everything the cipher needs for one key, image size and bit depth."""

    perm: np.ndarray
    sboxes: tuple[np.ndarray, ...]
    inverse_sboxes: tuple[np.ndarray, ...]
    streams: tuple[np.ndarray, ...]
    ivs: tuple[int, ...]
    bits: int

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1


@functools.lru_cache(maxsize=4)
def schedule(key: bytes, n: int, bits: int) -> Schedule:
    """The key schedule for n pixels of ``bits`` bits (cached: batches of one size reuse it)."""
    if len(key) != derive.KEY_BYTES:
        raise ValueError(f"logistic-sine needs a {8 * derive.KEY_BYTES}-bit key, got {8 * len(key)} bits")
    dtype = _levels_dtype(bits)
    levels = 1 << bits
    mask = levels - 1
    geometry = f"{n}/{bits}"
    perm = np.argsort(lss_samples(key, f"perm/{geometry}", n), kind="stable")
    boxes = []
    for index in range(PASSES):
        box = np.argsort(lss_samples(key, f"sbox{index}/{geometry}", levels), kind="stable").astype(dtype)
        boxes.append(box)
    inverse = []
    for box in boxes:
        inv = np.empty_like(box)
        inv[box] = np.arange(levels, dtype=dtype)
        inverse.append(inv)
    per_sample = 6 if dtype == np.uint8 else 3
    count = PASSES * (n + 1)
    flat = _keystream(lss_samples(key, f"stream/{geometry}", -(-count // per_sample)), count, dtype, mask)
    streams = tuple(flat[i * n : (i + 1) * n] for i in range(PASSES))
    ivs = tuple(int(v) for v in flat[PASSES * n :])
    return Schedule(perm, tuple(boxes), tuple(inverse), streams, ivs, bits)


CHAIN_WIDTH = 16384  # columns of the chain matrix (see _layout)


def _layout(n: int) -> tuple[int, int]:
    """(rows R, columns L) of the chain matrix holding the first R·L levels; the rest is the tail.

    The chain visits the matrix column by column (top to bottom, then the next column) and
    then the tail. Summing row after row is one vectorised add over L columns, so the
    sequential part is R ≤ n/L + 16 numpy calls instead of n Python steps.
    """
    width = min(CHAIN_WIDTH, max(1, n // 16))
    return n // width, width


def _scalar(value: int, like: np.ndarray) -> np.ndarray:
    return np.array([value], dtype=like.dtype)


def _prefix(x: np.ndarray, iv: int) -> np.ndarray:
    """iv + inclusive prefix sums of x in chain order (wrapping in x's dtype)."""
    rows, cols = _layout(x.size)
    out = np.empty_like(x)
    main, acc = x[: rows * cols].reshape(rows, cols), out[: rows * cols].reshape(rows, cols)
    acc[0] = main[0]
    for row in range(1, rows):
        np.add(acc[row - 1], main[row], out=acc[row])
    totals = acc[-1].copy()
    acc += np.cumsum(totals, dtype=x.dtype) - totals + _scalar(iv, x)  # carry of earlier columns
    tail = x[rows * cols :]
    if tail.size:
        out[rows * cols :] = np.cumsum(tail, dtype=x.dtype) + acc[-1, -1:]
    return out


def _suffix(x: np.ndarray, iv: int) -> np.ndarray:
    """iv + inclusive suffix sums of x in chain order (the backward chain)."""
    rows, cols = _layout(x.size)
    out = np.empty_like(x)
    tail, tail_out = x[rows * cols :], out[rows * cols :]
    after_main = _scalar(iv, x)
    if tail.size:
        tail_out[:] = np.cumsum(tail[::-1], dtype=x.dtype)[::-1] + after_main
        after_main = tail_out[:1].copy()
    main, acc = x[: rows * cols].reshape(rows, cols), out[: rows * cols].reshape(rows, cols)
    acc[-1] = main[-1]
    for row in range(rows - 2, -1, -1):
        np.add(acc[row + 1], main[row], out=acc[row])
    totals = acc[0].copy()
    acc += np.cumsum(totals[::-1], dtype=x.dtype)[::-1] - totals + after_main  # carry of later columns
    return out


def _unprefix(y: np.ndarray, iv: int) -> np.ndarray:
    """Inverse of ``_prefix``: each value minus its predecessor in chain order."""
    rows, cols = _layout(y.size)
    x = np.empty_like(y)
    acc, main = y[: rows * cols].reshape(rows, cols), x[: rows * cols].reshape(rows, cols)
    np.subtract(acc[1:], acc[:-1], out=main[1:])
    np.subtract(acc[0, 1:], acc[-1, :-1], out=main[0, 1:])
    np.subtract(acc[0, :1], _scalar(iv, y), out=main[0, :1])
    tail = y[rows * cols :]
    if tail.size:
        x[rows * cols :] = np.diff(tail, prepend=acc[-1, -1:])
    return x


def _unsuffix(y: np.ndarray, iv: int) -> np.ndarray:
    """Inverse of ``_suffix``: each value minus its successor in chain order."""
    rows, cols = _layout(y.size)
    x = np.empty_like(y)
    tail, tail_x = y[rows * cols :], x[rows * cols :]
    after_main = _scalar(iv, y)
    if tail.size:
        np.subtract(tail[:-1], tail[1:], out=tail_x[:-1])
        np.subtract(tail[-1:], after_main, out=tail_x[-1:])
        after_main = tail[:1]
    acc, main = y[: rows * cols].reshape(rows, cols), x[: rows * cols].reshape(rows, cols)
    np.subtract(acc[:-1], acc[1:], out=main[:-1])
    np.subtract(acc[-1, :-1], acc[0, 1:], out=main[-1, :-1])
    np.subtract(acc[-1, -1:], after_main, out=main[-1, -1:])
    return x


def _pair_table(box: np.ndarray) -> np.ndarray:
    """For 8-bit S-boxes: a 65536-entry table mapping two levels (one uint16) at once."""
    wide = box.astype("<u2")
    return (wide[None, :] | (wide[:, None] << 8)).reshape(-1)


def _lookup(box: np.ndarray, values: np.ndarray) -> np.ndarray:
    """box[values]; 8-bit levels go two at a time through the pair table (half the gathers)."""
    if box.dtype != np.uint8 or values.size < 2:
        return box.take(values, mode="clip")  # indices are levels < len(box): no bounds check needed
    pairs = _pair_table_cached(box.tobytes())
    even = values.size - values.size % 2
    out = np.empty_like(values)
    out[:even] = pairs.take(values[:even].view("<u2"), mode="clip").view(np.uint8)
    out[even:] = box.take(values[even:])
    return out


@functools.lru_cache(maxsize=24)
def _pair_table_cached(box_bytes: bytes) -> np.ndarray:
    return _pair_table(np.frombuffer(box_bytes, dtype=np.uint8))


def _mod(values: np.ndarray, sched: Schedule) -> np.ndarray:
    """Reduce mod M = 2^bits (free for 8 and 16 bits: the dtype wraps)."""
    if sched.bits not in (8, 16):
        values &= values.dtype.type(sched.mask)
    return values


def _check_levels(flat: np.ndarray, bits: int) -> np.ndarray:
    dtype = _levels_dtype(bits)
    if flat.size and int(flat.max()) >= (1 << bits):
        raise ValueError(f"pixel values up to {int(flat.max())} do not fit in {bits} bits")
    return np.ascontiguousarray(flat, dtype=dtype)


def encrypt(levels: np.ndarray, key: bytes, bits: int) -> np.ndarray:
    """Cipher image of the same shape; ``levels`` holds unsigned integers < 2^bits."""
    flat = _check_levels(levels.reshape(-1), bits)
    if flat.size == 0:
        return levels.copy()
    sched = schedule(bytes(key), flat.size, bits)
    values = flat.take(sched.perm, mode="clip")  # a permutation: always in range
    for index, (box, stream, iv) in enumerate(zip(sched.sboxes, sched.streams, sched.ivs)):
        chain = _suffix if index % 2 else _prefix
        values = _lookup(box, _mod(chain(values + stream, iv), sched))
    return values.reshape(levels.shape)


def decrypt(cipher: np.ndarray, key: bytes, bits: int) -> np.ndarray:
    """Exact inverse of ``encrypt`` for the same key and bit depth."""
    flat = _check_levels(cipher.reshape(-1), bits)
    if flat.size == 0:
        return cipher.copy()
    sched = schedule(bytes(key), flat.size, bits)
    values = flat
    for index in reversed(range(PASSES)):
        unchain = _unsuffix if index % 2 else _unprefix
        values = _mod(unchain(_lookup(sched.inverse_sboxes[index], values), sched.ivs[index]) - sched.streams[index], sched)
    plain = np.empty_like(values)
    plain[sched.perm] = values
    return plain.reshape(cipher.shape)
