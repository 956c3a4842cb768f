"""``classify`` and ``cls-eval``: a cls checkpoint on image files, plain or already encrypted.

With ``key`` (the key the model was trained behind, checked by its fingerprint first, so a
wrong key fails with exit 4 before anything is read or written) plain inputs are resized
to the model's size, quantised to 8 bits and encrypted, exactly as in training. Without a
key, an encrypted model takes its inputs as cipher images already (``medtools encrypt
--method M --key K`` of 8-bit images at the model's size): the party running the model
never needs the key. A plain model (``encryption: none``) resizes any input.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.cls.cipher import Encryption, from_config, quantise
from medtools.core.errors import InputError

MIN_SIDE = 2  # pixels: a smaller side has no spatial content to classify
MAX_UPSCALE = 8  # an input side may be at most this many times smaller than the model's size


class Classifier:
    """A loaded cls checkpoint and the cipher its inputs go through."""

    def __init__(self, model: Path | str, *, key: bytes | None = None, device: str | None = None, precision: str | None = None, batch_size: int = 32):
        from medtools.core import ckpt

        from medtools.core.predict import Predictor

        checkpoint = ckpt.load(model, kind="cls")
        # the key is checked before any input is read or any output written
        self.encryption: Encryption | None = from_config(checkpoint.config, key)
        self.predictor = Predictor(checkpoint, device=device, precision=precision, batch_size=batch_size)
        self.config = self.predictor.config
        self.size = int(self.config["image_size"])
        self.class_names = list(self.config["class_names"])
        self.positive = self.config.get("positive") or self.class_names[-1]
        self.method = self.config.get("encryption", "none")

    def load(self, path: Any) -> np.ndarray:
        """One file (or in-memory ``Image``) → (1, H, W) [0, 1] model input (encrypted when the model expects it)."""
        from medtools.core.preprocess import UNIT_NORM, load_image

        if self.encryption is None:  # cipher images: used as they are, never resized
            x = load_image(path, None, 1, UNIT_NORM)
            if x.shape[-2:] != (self.size, self.size):
                raise InputError(f"a cipher image must be {self.size}×{self.size} (the model's size; resizing destroys the cipher), got {x.shape[-1]}×{x.shape[-2]}")
            return x
        from medtools.core.preprocess import resize

        x = load_image(path, None, 1, UNIT_NORM)
        self.check_size(x.shape[-2:])
        x = resize(x[None], self.size)[0]
        if self.encryption.method == "none":
            return x
        return self.encryption.encrypt_batch(quantise(x)[None].astype(np.float32) / 255.0)[0]

    def check_size(self, shape: Sequence[int]) -> None:
        """Refuse an image too small to resize to the model's size (a 1×1 image has nothing to classify)."""
        smallest = max(MIN_SIDE, -(-self.size // MAX_UPSCALE))
        height, width = (int(n) for n in shape)
        if min(height, width) < smallest:
            raise InputError(f"a {height}×{width} image is too small for this model: it takes {self.size}×{self.size} images and upscales at most {MAX_UPSCALE}×, so each side needs at least {smallest} pixels")

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.predictor.predict(images, softmax=True)

    def record(self, path: str, probs: np.ndarray) -> dict[str, Any]:
        index = int(np.argmax(probs))
        return {
            "path": path,
            "label": self.class_names[index],
            "probability": float(probs[self.class_names.index(self.positive)]),
            "positive": self.positive,
            "probabilities": {c: float(p) for c, p in zip(self.class_names, probs)},
        }

    def run(self, paths: Sequence[Any], names: Sequence[str] | None = None) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
        """(name, record | error) per input (a path, or an in-memory ``Image`` named by ``names``),
        in batches of the predictor's batch size."""
        step = self.predictor.batch_size
        names = [str(p) for p in paths] if names is None else list(names)
        for start in range(0, len(paths), step):
            chunk = list(zip(names[start : start + step], paths[start : start + step]))
            images, failed = [], {}
            for name, source in chunk:
                try:
                    images.append((name, self.load(source)))
                except (InputError, OSError, ValueError) as exc:
                    failed[name] = exc
            probs = self.probabilities(np.stack([x for _, x in images])) if images else np.zeros((0, len(self.class_names)))
            ready = {name: self.record(name, p) for (name, _), p in zip(images, probs)}
            for name, _ in chunk:
                yield name, failed.get(name) or ready[name]


def evaluate_folder(
    data: Path | str | Sequence[Path | str],
    model: Path | str,
    *,
    key: bytes | None = None,
    positive: str | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    device: str | None = None,
    precision: str | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Metrics of a cls checkpoint against class folders or a manifest (core.metrics)."""
    from medtools.core.metrics import evaluate
    from medtools.cls.train import image_rows

    classifier = Classifier(model, key=key, device=device, precision=precision, batch_size=batch_size)
    rows = image_rows(data)
    unknown = sorted({r["class"] for r in rows} - set(classifier.class_names))
    if unknown:
        raise InputError(f"classes {unknown} are not the model's {classifier.class_names}")
    records, truth, patients, errors = [], [], [], []
    by_path = {r["image"]: r for r in rows}
    for path, result in classifier.run([r["image"] for r in rows]):
        if isinstance(result, Exception):
            errors.append({"path": path, "error": str(result)})
            continue
        records.append(result)
        truth.append(by_path[path]["class"])
        patients.append(by_path[path]["patient"])
    if not records:
        raise InputError(f"no image could be classified ({errors[0]['error'] if errors else 'none found'})")
    probs = np.array([[r["probabilities"][c] for c in classifier.class_names] for r in records])
    metrics = evaluate(truth, probs, classifier.class_names, positive=positive or classifier.positive, patients=patients, bootstrap=bootstrap, seed=seed)
    metrics["encryption"] = classifier.method
    metrics["inputs"] = "plain, encrypted here with the key" if classifier.encryption is not None and classifier.method != "none" else "as given" if classifier.method != "none" else "plain"
    metrics["errors"] = errors
    return metrics


def classify_command(
    inputs: Sequence[str],
    model: Path | str,
    *,
    key: bytes | None = None,
    csv_output: bool = False,
    output: Path | None = None,
    batch_size: int = 32,
    device: str | None = None,
    precision: str | None = None,
    explain: str | None = None,
    explain_dir: Path | None = None,
) -> int:
    """``classify``: one JSON line (or CSV row) per image on stdout or in ``output``; exit code.
    ``explain``: each image's saliency map under ``explain_dir`` (mirroring the inputs, named as
    ``medtools explain`` names it), the paths and numbers in the record's ``explain``."""
    import csv
    import io
    import json

    from medtools.core import batch, report
    from medtools.core.errors import UsageError
    from medtools.core.inputs import expand_inputs
    from medtools.core.io import RASTER_EXTS, atomic_path

    if (explain is None) != (explain_dir is None):
        raise UsageError("--explain METHOD and --explain-dir DIR go together")
    if explain is not None:
        from medtools import api

        api.check_explain_method(explain)
    classifier = Classifier(model, key=key, device=device, precision=precision, batch_size=batch_size)  # wrong key: exit 4 here
    items = expand_inputs(inputs, exts=RASTER_EXTS, **({"output": explain_dir} if explain_dir is not None else {}))
    lines: list[str] = []
    columns = ["path", "label", "probability", *classifier.class_names, *(["explain"] if explain else [])]

    def emit(line: str) -> None:
        if output is None:
            print(line, flush=True)
        else:
            lines.append(line)

    def emit_record(result: dict[str, Any]) -> None:
        if csv_output:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="").writerow([result["path"], result["label"], f"{result['probability']:.6f}", *(f"{result['probabilities'][c]:.6f}" for c in classifier.class_names), *([";".join(result["explain"]["outputs"])] if explain else [])])
            emit(buffer.getvalue())
        else:
            emit(json.dumps(result))

    if csv_output:
        emit(",".join(columns))
    pairs = classifier.run([str(i.path) for i in items])
    if explain is not None:
        pairs = _with_maps(pairs, classifier, {str(i.path): i for i in items}, explain, explain_dir)
    outcome = batch.run_pairs(pairs, emit=emit_record, total=len(items), description="classify")
    if output is not None and outcome.ok:
        with atomic_path(output) as tmp:
            Path(tmp).write_text("\n".join(lines) + "\n")
        report.log(f"wrote {output}")
    return outcome.exit_code


def _with_maps(pairs: Iterator[tuple[str, Any]], classifier: Classifier, items: dict[str, Any], method: str, folder: Path) -> Iterator[tuple[str, Any]]:
    """``classify --explain``: each classified image's map through ``medtools.api.explain_beside``
    with the loaded classifier (plain-frame maps for a block cipher with the key)."""
    from medtools import api
    from medtools.core import report
    from medtools.core.inputs import output_for
    from medtools.core.io import read_image

    for name, result in pairs:
        if not isinstance(result, Exception):
            try:
                stem = output_for(items[name], folder, ext="")  # the mirrored place, checked against the inputs
                written, numbers = api.explain_beside([read_image(name)], classifier, stem.parent, stem.name, method=method)
                for record in numbers["targets"]:
                    for flag in record["flags"]:
                        report.warn(f"{name}: explain target {record['target']}: {flag}")
                result = {**result, "explain": {"outputs": [str(p) for p in written], **numbers}}
            except Exception as exc:  # reported per image by the batch driver
                result = exc
        yield name, result


def render_metrics(result: dict[str, Any]) -> list[str]:
    """cls-eval's table for people: metrics with their patient-bootstrap intervals, confusion matrix."""
    ci = result.get("ci95") or {}
    lines = []
    for name in ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity"):
        value, interval = result[name], ci.get(name)
        text = "n/a" if value is None else f"{value:.4f}"
        lines.append(f"{name:<18}{text:>8}" + (f"  [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""))
    lines.append(f"confusion (rows truth, cols pred, {', '.join(result['class_names'])}): {result['confusion_matrix']}  n={result['n']}")
    return lines


def eval_job(data: Any, model: Path | str, *, seed: int, **options: Any) -> int:
    """``cls-eval``: the metrics on stdout (table or JSON with its run record); exit 1 when some images failed."""
    from medtools.core import report
    from medtools.core.errors import EXIT_OK, EXIT_PARTIAL

    record = report.RunRecord(seed=seed)
    record.add_checkpoint(model)
    result = evaluate_folder(data, model, seed=seed, **options)
    report.emit_result(result, render_metrics, record=record)
    return EXIT_PARTIAL if result["errors"] else EXIT_OK
