"""Synthetic data with the layouts of real data, so every tool runs with no download.

Brain: multi-modal MRI (flair, t1, t1ce, t2) in BraTS layout with BraTS labels
(1 necrotic core, 2 edema, 4 enhancing). Each patient has a stable identity — head shape,
ventricles, a cortical texture field and a scanner bias field — that a re-identification
network can learn; visits differ by pose, noise, contrast and tumor growth.

Chest X-ray: lungs, ribs, heart, clavicles with per-patient anatomy and optional
pneumonia-like opacities, 8-bit PNG named ``p<patient>-<image>-<class>.png``.

Everything is deterministic for a seed (numpy Generator per patient and visit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medtools.core.inputs import skip_existing
from medtools.core.io import Image, write_image

BRAIN_MODALITIES = ("flair", "t1", "t1ce", "t2")
# relative intensities per tissue: background, scalp, csf, white matter, gray matter, edema, enhancing, necrosis
_TISSUE = ("background", "scalp", "csf", "wm", "gm", "edema", "enhancing", "necrosis")
_CONTRAST = {
    "flair": (0.0, 0.30, 0.15, 0.45, 0.55, 0.92, 0.70, 0.55),
    "t1": (0.0, 0.70, 0.15, 0.80, 0.60, 0.45, 0.50, 0.25),
    "t1ce": (0.0, 0.70, 0.15, 0.80, 0.60, 0.45, 1.00, 0.25),
    "t2": (0.0, 0.20, 1.00, 0.35, 0.50, 0.85, 0.60, 0.90),
}


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field / (field.std() + 1e-8)).astype(np.float32)


@dataclass
class BrainIdentity:
    radii: np.ndarray  # head ellipsoid semi-axes (normalised units)
    ventricle: np.ndarray  # (dx, rx, ry, rz)
    texture: np.ndarray  # cortical texture field (patient space, 48³)
    bias: np.ndarray  # bias-field polynomial coefficients
    contrast_jitter: np.ndarray  # (4 modalities, 8 tissues)
    tumor_center: np.ndarray
    tumor_radius: float
    spots: np.ndarray  # (k, 4): centre xyz + radius of white-matter hyperintensities (stable per patient)


def brain_identity(seed: int, patient: int) -> BrainIdentity:
    rng = _rng(seed, 1, patient)
    radii = np.array([rng.uniform(0.68, 0.84), rng.uniform(0.80, 0.94), rng.uniform(0.75, 0.92)])
    ventricle = np.array([rng.uniform(0.07, 0.16), rng.uniform(0.05, 0.11), rng.uniform(0.14, 0.28), rng.uniform(0.18, 0.35)])
    texture = _smooth_field(rng, (48, 48, 48), rng.uniform(1.5, 3.0))
    bias = rng.uniform(-0.18, 0.18, size=4)
    jitter = rng.uniform(0.85, 1.15, size=(4, 8))
    side = rng.choice([-1, 1])
    center = np.array([side * rng.uniform(0.25, 0.45), rng.uniform(-0.4, 0.4), rng.uniform(-0.25, 0.25)])
    k = int(rng.integers(3, 9))
    spots = np.column_stack([rng.uniform(-0.45, 0.45, size=(k, 3)) * [1, 1, 0.8], rng.uniform(0.05, 0.10, size=k)])
    return BrainIdentity(radii, ventricle, texture, bias, jitter, center, rng.uniform(0.14, 0.22), spots)


def brain_volume(
    seed: int, patient: int, visit: int, *, size: int = 128, slices: int = 32
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One visit of one patient → ({modality: float32 volume (x,y,z)}, label volume uint8)."""
    ident = brain_identity(seed, patient)
    rng = _rng(seed, 2, patient, visit)
    axes = [np.linspace(-1, 1, size, dtype=np.float32), np.linspace(-1, 1, size, dtype=np.float32), np.linspace(-1, 1, slices, dtype=np.float32)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    # visit pose: in-plane rotation and translation, applied as the inverse map to patient space
    angle = np.deg2rad(rng.uniform(-6, 6))
    shift = rng.uniform(-0.05, 0.05, size=3)
    cos, sin = np.cos(angle), np.sin(angle)
    px = cos * (x - shift[0]) + sin * (y - shift[1])
    py = -sin * (x - shift[0]) + cos * (y - shift[1])
    pz = z - shift[2] * 0.3
    r = np.sqrt((px / ident.radii[0]) ** 2 + (py / ident.radii[1]) ** 2 + (pz / ident.radii[2]) ** 2)
    # texture sampled in patient space so it moves with the head
    coords = np.stack([(px + 1) * 23.5, (py + 1) * 23.5, (pz + 1) * 23.5])
    texture = ndimage.map_coordinates(ident.texture, coords.reshape(3, -1), order=1, mode="nearest").reshape(x.shape)

    tissue = np.zeros(x.shape, dtype=np.uint8)
    tissue[r < 1.0] = 1  # scalp
    brain = r < 0.90
    tissue[brain] = 4  # gray matter
    tissue[brain & (r + 0.08 * texture < 0.72)] = 3  # white matter with a patient-specific boundary
    dx, vx, vy, vz = ident.ventricle
    for sign in (-1, 1):
        v = ((px - sign * dx) / vx) ** 2 + ((py + 0.05) / vy) ** 2 + (pz / vz) ** 2
        tissue[brain & (v < 1.0)] = 2
    tissue[(r >= 0.88) & (r < 0.90)] = 2  # thin outer CSF
    hyper = np.zeros(x.shape, dtype=bool)
    for sx, sy, sz, sr in ident.spots:
        hyper |= (px - sx) ** 2 + (py - sy) ** 2 + ((pz - sz) * 0.8) ** 2 < sr**2
    hyper &= tissue == 3

    # tumor grows with the visit number
    growth = 1.0 + 0.3 * (visit - 1) + rng.uniform(-0.05, 0.05)
    radius = ident.tumor_radius * growth
    tc = ident.tumor_center
    d = np.sqrt((px - tc[0]) ** 2 + (py - tc[1]) ** 2 + ((pz - tc[2]) * 1.2) ** 2) + 0.02 * texture
    label = np.zeros(x.shape, dtype=np.uint8)
    edema, enhancing, core = d < radius * 1.9, d < radius, d < radius * 0.55
    label[brain & edema] = 2
    label[brain & enhancing] = 4
    label[brain & core] = 1
    tissue[label == 2] = 5
    tissue[label == 4] = 6
    tissue[label == 1] = 7

    bias = 1.0 + ident.bias[0] * px + ident.bias[1] * py + ident.bias[2] * pz + ident.bias[3] * (px * py)
    noise_level = rng.uniform(0.015, 0.035)
    gain = rng.uniform(0.92, 1.08)
    volumes = {}
    for m, name in enumerate(BRAIN_MODALITIES):
        table = np.asarray(_CONTRAST[name], dtype=np.float32) * ident.contrast_jitter[m].astype(np.float32)
        table[0] = 0.0
        signal = table[tissue] * (1.0 + 0.10 * texture * (tissue >= 3))
        signal = np.where(hyper & (label == 0), signal * (1.6 if name in ("flair", "t2") else 0.8), signal) * bias * gain
        noisy = np.abs(signal + noise_level * rng.standard_normal(x.shape) + 1j * noise_level * rng.standard_normal(x.shape))
        volumes[name] = (noisy * 1000.0).astype(np.float32)
    return volumes, label


def brain_affine(size: int, slices: int, spacing: tuple[float, float, float] = (1.5, 1.5, 4.0)) -> np.ndarray:
    """LPS-like diag(-sx, -sy, sz) with the volume centred on the origin (as BraTS/NIfTI exports)."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [spacing[0] * (size - 1) / 2, spacing[1] * (size - 1) / 2, -spacing[2] * (slices - 1) / 2]
    return affine


def write_brain_phantoms(
    output: Path,
    *,
    patients: int,
    visits: int,
    size: int = 128,
    slices: int = 32,
    seed: int = 0,
    overwrite: bool = False,
    on_write: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Write ``patients × visits`` BraTS-layout cases; returns the written files.

    ``on_write(path)`` is called as each file lands (the CLI prints paths as it goes).
    """
    written = _Written(on_write)
    affine = brain_affine(size, slices)
    for patient in range(1, patients + 1):
        for visit in range(1, visits + 1):
            case = f"phantom-p{patient:03d}_v{visit}"
            folder = output / case
            targets = {m: folder / f"{case}_{m}.nii.gz" for m in (*BRAIN_MODALITIES, "seg")}
            if skip_existing(targets.values(), overwrite, log=_quiet):
                continue
            volumes, label = brain_volume(seed, patient, visit, size=size, slices=slices)
            for name, volume in volumes.items():
                written.append(write_image(Image(np.rint(volume).astype(np.int16), affine=affine, format="nifti"), targets[name]))
            written.append(write_image(Image(label, affine=affine, format="nifti"), targets["seg"]))
    return list(written)


class _Written(list):
    """A list of written paths that reports each one as it is added."""

    def __init__(self, on_write: Callable[[Path], None] | None):
        super().__init__()
        self._on_write = on_write

    def append(self, path: Path) -> None:
        super().append(path)
        if self._on_write is not None:
            self._on_write(path)


# ------------------------------------------------------------------ chest X-ray


def cxr_image(seed: int, patient: int, index: int, *, pneumonia: bool, size: int = 128) -> np.ndarray:
    """One synthetic frontal chest radiograph (uint8, size×size)."""
    anatomy = _rng(seed, 3, patient)
    rng = _rng(seed, 4, patient, index)
    lung_w, lung_h = anatomy.uniform(0.26, 0.34), anatomy.uniform(0.50, 0.62)
    lung_gap = anatomy.uniform(0.06, 0.12)
    heart_r = anatomy.uniform(0.20, 0.27)
    rib_period = anatomy.uniform(0.10, 0.14)
    rib_curve = anatomy.uniform(0.25, 0.45)
    body_w = anatomy.uniform(0.80, 0.95)
    clavicle_tilt = anatomy.uniform(0.10, 0.25)
    texture = _smooth_field(anatomy, (64, 64), 2.0)

    ys, xs = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    shift = rng.uniform(-0.04, 0.04, size=2)
    angle = np.deg2rad(rng.uniform(-3, 3))
    x = np.cos(angle) * (xs - shift[0]) + np.sin(angle) * (ys - shift[1])
    y = -np.sin(angle) * (xs - shift[0]) + np.cos(angle) * (ys - shift[1])

    body = np.clip(1.0 - (np.abs(x) / body_w) ** 6, 0, 1)
    image = 0.55 * body
    lungs = np.zeros_like(x)
    for sign in (-1, 1):
        cx = sign * (lung_gap + lung_w)
        d = ((x - cx) / lung_w) ** 2 + ((y + 0.05) / lung_h) ** 2
        lungs = np.maximum(lungs, np.clip(1.2 - d, 0, 1))
    image -= 0.35 * lungs
    heart = np.clip(1.0 - ((x + 0.08) / heart_r) ** 2 - ((y - 0.22) / (heart_r * 1.1)) ** 2, 0, 1)
    image += 0.30 * np.sqrt(heart)
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (y + rib_curve * x**2) / rib_period)
    image += 0.10 * (ribs**6) * body * (np.abs(x) > 0.05)
    spine = np.exp(-(x / 0.05) ** 2)
    image += 0.15 * spine
    for sign in (-1, 1):
        line = y + 0.62 - sign * clavicle_tilt * x
        image += 0.18 * np.exp(-(line / 0.025) ** 2) * (np.abs(x) < 0.6)
    tex = ndimage.zoom(texture, size / 64, order=1)[:size, :size]
    image += 0.03 * tex * lungs
    if pneumonia:
        # its own random stream: the exposure and noise below stay those of the normal twin,
        # so the opacities are the only difference between the classes
        opacity = _rng(seed, 6, patient, index)
        for _ in range(opacity.integers(1, 4)):
            side = opacity.choice([-1, 1])
            cx, cy = side * (lung_gap + lung_w * opacity.uniform(0.5, 1.3)), opacity.uniform(-0.2, 0.45)
            r = opacity.uniform(0.10, 0.22)
            image += opacity.uniform(0.15, 0.28) * np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / r**2)) * lungs
    image = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.03, 0.03)
    image += rng.normal(0, 0.015, size=image.shape)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def write_cxr_phantoms(
    output: Path,
    *,
    n: int,
    patients: int | None = None,
    size: int = 128,
    seed: int = 0,
    overwrite: bool = False,
    on_write: Callable[[Path], None] | None = None,
) -> list[Path]:
    """``n`` images from ``patients`` patients (default n // 2), half of the patients with pneumonia."""
    patients = max(1, patients or n // 2)
    # exactly half of the patients (rounded down) have pneumonia, chosen at random: a coin
    # per patient often gave one class only for small sets
    sick = {int(p) + 1 for p in _rng(seed, 5).permutation(patients)[: patients // 2]}
    written = _Written(on_write)
    for i in range(n):
        patient = i % patients + 1
        index = i // patients + 1
        pneumonia = patient in sick
        cls = "PNEUMONIA" if pneumonia else "NORMAL"
        target = output / cls / f"p{patient:04d}-{index:02d}-{cls.lower()}.png"
        if skip_existing(target, overwrite, log=_quiet):
            continue
        written.append(write_image(Image(cxr_image(seed, patient, index, pneumonia=pneumonia, size=size), format="png"), target))
    return list(written)


def _quiet(_: str) -> None:
    """Phantom generation resumes silently (existing files are simply kept)."""

