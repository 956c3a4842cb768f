"""Feature vectors for the index: a registered model's features through the one Predictor.

A ``seg`` checkpoint gives its pooled bottleneck (global-average-pooled deepest encoder
map), a ``reid``/``cls`` checkpoint its penultimate layer (timm pre-logits): whatever the
kind registered as ``features``. Images are read and normalised by
:func:`medtools.core.preprocess.load_image` with the checkpoint's ``medtools.norm``, at its
image size and channel count; vectors are L2-normalised so a dot product is the cosine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import CheckpointError, InputError


def load_predictor(model: Path, *, device: str | None = None, batch_size: int = 32) -> Any:
    from medtools.core.predict import Predictor

    predictor = Predictor(model, device=device, batch_size=batch_size)
    if predictor.kind.features is None:
        raise CheckpointError(f"{model}: {predictor.kind.name} models register no features; the index takes a seg, reid or cls checkpoint")
    return predictor


def model_record(predictor: Any) -> dict[str, Any]:
    from medtools.core.report import sha256_file

    return {"path": str(predictor.path), "sha256": sha256_file(predictor.path), "kind": predictor.kind.name, "features": predictor.kind.features}


def load(predictor: Any, path: Path) -> np.ndarray:
    """One image → (channels, size, size) float32 model input before the model range."""
    from medtools.core import preprocess

    return preprocess.load_image(path, predictor.size, predictor.in_channels, predictor.norm)


def normalise_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    if (norms <= 0).any() or not np.isfinite(norms).all():
        raise InputError("a feature vector is zero or not finite: cannot L2-normalise it")
    return (features / norms).astype(np.float64)


def embed_arrays(predictor: Any, images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) images in [0, 1] → (N, D) L2-normalised features."""
    return normalise_rows(predictor.features(images).astype(np.float64))


def embed_paths(predictor: Any, items: Iterable[Any], *, on_vectors: Callable[[list[Any], np.ndarray], None], path_of: Callable[[Any], Path] = lambda i: i.path) -> Any:
    """Load each item (per-item errors reported, the batch goes on) and embed in batches.

    ``on_vectors(items, features)`` receives each batch; returns the run's batch Outcome.
    """
    from medtools.core.batch import run_items

    pending: list[Any] = []
    arrays: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            on_vectors(list(pending), embed_arrays(predictor, np.stack(arrays)))
            pending.clear()
            arrays.clear()

    def work(item: Any) -> None:
        arrays.append(load(predictor, path_of(item)))
        pending.append(item)
        if len(pending) >= predictor.batch_size:
            flush()

    outcome = run_items(items, work, name=lambda i: str(path_of(i)), description="features")
    flush()
    return outcome

