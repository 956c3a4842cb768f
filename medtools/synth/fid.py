"""FID, KID and precision/recall between two image sets, with torch-fidelity's metrics.

Two feature extractors:

* **Inception-v3** (torch-fidelity's TF-compatible port, 2048-d pool features): the FID of
  the literature. Its weights cannot be downloaded here, so they are looked up offline:
  ``--inception-weights PATH``, env ``MEDTOOLS_INCEPTION_WEIGHTS``, then torch-fidelity's
  and pytorch-fid's file names in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``);
  otherwise exit 3 saying where to put the file. pytorch-fid's
  ``pt_inception-2015-12-05-6726825d.pth`` (the same network) is accepted and converted.
  Grayscale images are replicated to 3 channels (as torch-fidelity's ``convert("RGB")``);
  16-bit images are scaled to 8 bits; resizing to 299×299 is torch-fidelity's own
  TF1-compatible bilinear inside the extractor.
* **A medtools classifier** (``--features CKPT``, kind reid or cls): the Fréchet distance of
  its penultimate features, a "medical FID" (cf. RadImageNet-based FID). It is reported
  as ``fd_medtools`` with the checkpoint named, never as Inception FID.

Features are extracted in batches (bounded memory); statistics can be saved (``--save-stats``)
and reused as an input. Weights files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core import report
from medtools.core.errors import CheckpointError, InputError, UsageError

TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + TORCH_FIDELITY_FILE
ENV_WEIGHTS = "MEDTOOLS_INCEPTION_WEIGHTS"
PRC_NEIGHBOURS = 3  # torch-fidelity's default k of the k-NN manifolds (Kynkäänniemi et al. 2019)

# pytorch-fid's InceptionV3 wrapper (blocks.B.I.) → the Inception3 / torch-fidelity module names
_PYTORCH_FID_BLOCKS = {
    "0.0": "Conv2d_1a_3x3", "0.1": "Conv2d_2a_3x3", "0.2": "Conv2d_2b_3x3",
    "1.0": "Conv2d_3b_1x1", "1.1": "Conv2d_4a_3x3",
    "2.0": "Mixed_5b", "2.1": "Mixed_5c", "2.2": "Mixed_5d", "2.3": "Mixed_6a",
    "2.4": "Mixed_6b", "2.5": "Mixed_6c", "2.6": "Mixed_6d", "2.7": "Mixed_6e",
    "3.0": "Mixed_7a", "3.1": "Mixed_7b", "3.2": "Mixed_7c",
}


# ---------------------------------------------------------------- Inception weights


def hub_checkpoint_dir() -> Path:
    """Where torch.hub (and so torch-fidelity) caches downloaded weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def find_inception_weights(explicit: Path | None = None) -> Path:
    """The Inception weights file to use, or CheckpointError (exit 3) saying where to put one."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise CheckpointError(f"--inception-weights {explicit}: no such file")
        return Path(explicit)
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        if not Path(env).is_file():
            raise CheckpointError(f"{ENV_WEIGHTS}={env}: no such file")
        return Path(env)
    cache = hub_checkpoint_dir()
    for name in (TORCH_FIDELITY_FILE, PYTORCH_FID_FILE):
        if (cache / name).is_file():
            return cache / name
    raise CheckpointError(
        f"Inception-v3 FID weights not found and this tool never downloads. Fetch {INCEPTION_URL} "
        f"(or pytorch-fid's {PYTORCH_FID_FILE}) on a connected machine and put it at {cache / TORCH_FIDELITY_FILE}, "
        f"or pass --inception-weights PATH, or set {ENV_WEIGHTS}; or use --features CKPT for a medtools-feature distance"
    )


def convert_inception_keys(state: dict[str, Any]) -> dict[str, Any]:
    """torch-fidelity key names from torch-fidelity, pytorch-fid (Inception3 or its wrapper) or torchvision files."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    converted: dict[str, Any] = {}
    for key, value in state.items():
        for prefix in ("module.", "model.", "inception."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith("AuxLogits.") or key.endswith("num_batches_tracked"):
            continue  # torchvision's auxiliary head is unused; BatchNorm fills its step counters
        if key.startswith("blocks."):
            block, index, rest = key[len("blocks."):].split(".", 2)
            name = _PYTORCH_FID_BLOCKS.get(f"{block}.{index}")
            if name is None:
                continue
            key = f"{name}.{rest}"
        converted[key] = value
    return converted


def load_inception(path: Path, device: Any):
    """torch-fidelity's FeatureExtractorInceptionV3 (2048-d features) with weights from ``path``."""
    import tempfile

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of every kind
        raise CheckpointError(f"{path}: cannot read Inception weights ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a state dict of Inception weights")
    state = convert_inception_keys(raw)
    if "fc.weight" not in state and "Mixed_7c.branch_pool.conv.weight" in state:
        # pytorch-fid's wrapper stops at pool3; FID uses those 2048-d features, never the logits
        state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    with tempfile.TemporaryDirectory(prefix="medtools-inception-") as tmp:
        converted = Path(tmp) / "weights.pth"
        torch.save(state, converted)
        try:
            extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(converted))
        except RuntimeError as exc:
            lines = " ".join(str(exc).splitlines()[:3])
            raise CheckpointError(f"{path}: these are not Inception-v3 FID weights ({lines[:400]})") from None
    return extractor.to(device).eval()


# ---------------------------------------------------------------- extractors


class Extractor:
    """Images (N, C, H, W) float [0, 1] → features (N, D) float32, plus what it is."""

    name: str
    channels: int
    size: int | None
    identity: dict[str, Any]

    def __call__(self, images: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


class InceptionExtractor(Extractor):
    def __init__(self, weights: Path, device: Any, size: int | None):
        self.net = load_inception(weights, device)
        self.device, self.channels, self.size = device, 3, size
        self.name = "inception-v3-compat"
        self.identity = {"extractor": self.name, "layer": "2048", "weights": weights.name, "size": size}

    def __call__(self, images: Any) -> Any:
        import torch

        pixels = torch.round(images.clamp(0, 1) * 255.0).to(torch.uint8).to(self.device)
        with torch.no_grad():
            return self.net(pixels)[0].float().cpu()


class ClassifierExtractor(Extractor):
    """Penultimate features of a medtools classifier (``reid``/``cls``) through its Predictor."""

    def __init__(self, path: Path, device: Any):
        from medtools.core.predict import Predictor
        from medtools.core.report import sha256_file

        self.predictor = Predictor(path, kind=("reid", "cls"), device=device, precision="fp32")
        config = self.predictor.config
        if "image_size" not in config:
            raise CheckpointError(f"{path}: its config has no image_size; cannot know the input size of its features")
        self.device, self.size, self.channels = self.predictor.device, self.predictor.size, self.predictor.in_channels
        self.name = f"medtools-{self.predictor.kind.name}-{config.get('arch', 'classifier')}"
        self.identity = {"extractor": self.name, "checkpoint": Path(path).name, "sha256": sha256_file(path), "size": self.size}

    def __call__(self, images: Any) -> Any:
        import torch

        return torch.from_numpy(self.predictor.features(images))


class _Images:
    """A map-style dataset of image files for torch's DataLoader (workers load in parallel)."""

    def __init__(self, paths: Sequence[Path], size: int | None, channels: int):
        self.paths, self.size, self.channels = list(paths), size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        import torch

        from medtools.synth.images import load_image

        try:
            return torch.from_numpy(load_image(self.paths[index], self.size, self.channels))
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.paths[index]}: cannot read image ({exc})") from None


def _collate(batch: list[Any]) -> list[Any]:
    return batch


def extract_features(paths: Sequence[Path], extractor: Extractor, *, batch_size: int = 32, workers: int = 0) -> Any:
    """(N, D) float32 features; images of different sizes are batched by size."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(_Images(paths, extractor.size, extractor.channels), batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    out = []
    for batch in report.progress(loader, total=len(loader), description="features"):
        groups: dict[tuple[int, ...], list[Any]] = {}
        order: list[tuple[tuple[int, ...], int]] = []
        for image in batch:
            groups.setdefault(tuple(image.shape), []).append(image)
            order.append((tuple(image.shape), len(groups[tuple(image.shape)]) - 1))
        feats = {shape: extractor(torch.stack(images)) for shape, images in groups.items()}
        out.extend(feats[shape][i] for shape, i in order)
    return torch.stack(out)


# ---------------------------------------------------------------- statistics and metrics


def statistics(features: Any) -> dict[str, np.ndarray]:
    from torch_fidelity.metric_fid import fid_features_to_statistics

    stats = fid_features_to_statistics(features.double())
    return {"mu": stats["mu"].astype(np.float64), "sigma": np.atleast_2d(stats["sigma"]).astype(np.float64)}


def save_statistics(path: Path, features: Any, identity: dict[str, Any]) -> Path:
    from medtools.core.io import atomic_path

    stats = statistics(features)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, mu=stats["mu"], sigma=stats["sigma"], features=features.numpy().astype(np.float32), extractor=np.array(json.dumps(identity, sort_keys=True)))
    return path


def load_statistics(path: Path, identity: dict[str, Any]) -> tuple[Any, dict[str, np.ndarray]]:
    """(features tensor, {mu, sigma}) from a --save-stats file made with the same extractor."""
    import torch

    try:
        with np.load(path, allow_pickle=False) as data:
            saved = json.loads(str(data["extractor"]))
            features = torch.from_numpy(data["features"].astype(np.float32))
            stats = {"mu": data["mu"].astype(np.float64), "sigma": data["sigma"].astype(np.float64)}
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: not a medtools fid statistics file ({exc})") from None
    if saved != identity:
        raise UsageError(f"{path} was computed with {saved}, not with the extractor of this run {identity}; use the same --features/--inception-weights/--size")
    return features, stats


def _features_of(source: str, extractor: Extractor, batch_size: int, workers: int) -> tuple[Any, dict[str, np.ndarray], int]:
    from medtools.synth.images import collect_images

    if source.lower().endswith(".npz") and Path(source).is_file():
        features, stats = load_statistics(Path(source), extractor.identity)
        return features, stats, len(features)
    refs = collect_images([source])
    report.log(f"{source}: {len(refs)} images")
    features = extract_features([r.path for r in refs], extractor, batch_size=batch_size, workers=workers)
    return features, statistics(features), len(refs)


def compute_fid(
    *,
    real: str,
    fake: str | None = None,
    features: Path | None = None,
    inception_weights: Path | None = None,
    size: int | None = None,
    kid: bool = False,
    prc: bool = False,
    save_stats: Path | None = None,
    batch_size: int = 32,
    workers: int = 0,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Fréchet distance (and KID / precision-recall) of FAKE against REAL; or only save REAL's statistics."""
    from medtools.core.device import resolve_device

    if fake is None and save_stats is None:
        raise UsageError("give two inputs (REAL FAKE), or one with --save-stats to store its statistics")
    if features is not None and size is not None:
        raise UsageError("--size applies to Inception only; --features uses its checkpoint's image_size")
    dev = resolve_device(device)
    extractor: Extractor = ClassifierExtractor(features, dev) if features is not None else InceptionExtractor(find_inception_weights(inception_weights), dev, size)
    f_real, s_real, n_real = _features_of(real, extractor, batch_size, workers)
    result: dict[str, Any] = {"extractor": extractor.identity, "real": {"source": real, "count": n_real}, "device": str(dev)}
    if save_stats is not None:
        result["saved_stats"] = str(save_statistics(save_stats, f_real, extractor.identity))
    if fake is None:
        return result
    f_fake, s_fake, n_fake = _features_of(fake, extractor, batch_size, workers)
    result["fake"] = {"source": fake, "count": n_fake}
    if min(n_real, n_fake) < 2:
        raise InputError("each set needs at least 2 images for a covariance")
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    distance = fid_statistics_to_metric(s_real, s_fake, verbose=False)["frechet_inception_distance"]
    metrics: dict[str, float] = {("fid" if isinstance(extractor, InceptionExtractor) else "fd_medtools"): max(0.0, float(distance))}
    if kid:
        from torch_fidelity.metric_kid import kid_features_to_metric

        subset = min(1000, n_real, n_fake)
        values = kid_features_to_metric(f_fake.double(), f_real.double(), kid_subset_size=subset, rng_seed=seed, verbose=False)
        metrics.update({"kid_mean": float(values["kernel_inception_distance_mean"]), "kid_std": float(values["kernel_inception_distance_std"])})
        result["kid_subset_size"] = subset
    if prc:
        from torch_fidelity.metric_prc import prc_features_to_metric

        if min(n_real, n_fake) < PRC_NEIGHBOURS + 1:
            raise UsageError(f"--prc needs at least {PRC_NEIGHBOURS + 1} images per set (k-NN with k = {PRC_NEIGHBOURS})")

        values = prc_features_to_metric(f_fake, f_real, prc_neighborhood=PRC_NEIGHBOURS, verbose=False)  # torch-fidelity: input1 generated, input2 real
        metrics.update({"precision": float(values["precision"]), "recall": float(values["recall"]), "f_score": float(values["f_score"])})
    result["metrics"] = metrics
    return result


def fid_job(*, fake: str | None, features: Path | None, save_stats: Path | None, seed: int, **options: Any) -> int:
    """``fid``: the metrics on stdout (name TAB value, or JSON); only REAL's statistics with no FAKE."""
    from medtools.core import report
    from medtools.core.context import current

    result = compute_fid(fake=fake, features=features, save_stats=save_stats, seed=seed, **options)
    record = report.RunRecord(seed=seed, device=result.pop("device", None))
    if features is not None:
        record.add_checkpoint(features)
    if fake is None and not current().json:
        report.emit_path(result["saved_stats"])
        return 0
    report.emit_result(result, lambda r: [f"{key}\t{value:.6g}" for key, value in r["metrics"].items()], record=record)
    if save_stats is not None:
        report.log(f"wrote {save_stats}")
    return 0
