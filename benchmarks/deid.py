"""Burned-in text removal (`deid --clean-pixels`): recall, precision and speed per OCR engine; prints one JSON document.

    python benchmarks/deid.py [--ocr both|rapidocr|tesseract] [--images 12] [--seed 0] [--size 512] [--workers 2] [--quick]

Real images from ../shared/data (HC18 fetal ultrasound PNGs, pediatric chest X-ray JPEGs),
resized to size²; on each, ``--strings`` PHI strings (names, IDs, dates, institutions) are
rendered with a fixed seed: a random font (DejaVu Sans/Serif/Mono, bold or not, when installed;
Pillow's own font otherwise), 8–32 px, white or grey, rotated ±5°, half of them in a corner
(the black border of ultrasound frames) and half anywhere on the image. The ink of every
character is kept as ground truth. Then the cleaner runs with each engine and:

* char_recall: rendered characters whose ink lies ≥ 95 % inside a redaction box;
* read_after: rendered words (3+ letters/digits) that an OCR engine still reads anywhere in
  the cleaned image (goal 0), per reader (every installed engine reads every cleaned image);
* non_text_redacted: fraction of the area outside the strings' boxes that was redacted (the
  X-rays' own burned-in laterality markers count here: they are text, but not rendered);
* s_per_image: wall time of one image with the cores of the machine (OCR included; RapidOCR
  runs its ONNX sessions on the cores, Tesseract one core per call); images_per_s with
  ``--workers`` threads, one core each, as `deid --workers` runs files.

Settings are chosen on seed 1 and reported on seed 0 (docs/results.md).

    python benchmarks/deid.py --anatomy [--placement mixed|corners] [--only hc18|cxr] [--work DIR] [--seed 0]

The anatomy part: does cleaning change what a model sees? Held-out images resized to size²
(HC18: the exams of fold 0 of 5, as examples/brain-privacy/split_patients.py; CXR: a quarter of
the patient groups of manifest.csv) get PHI rendered as above, are written as PNG and cleaned
with ``medtools deid --clean-pixels``. A U-Net (``seg-train``, ResNet18, 128², 10 epochs) and a
ResNet18 classifier (``cls-train``, 128², 6 epochs), trained on the other images without text,
run on four variants: original (no text), phi (text, not cleaned), cleaned (what deid wrote
with the default ``--fill background``), inpainted (what ``deid --clean-pixels --fill inpaint``
wrote: the boxes filled from their surroundings by OpenCV's Telea inpainting). Reported: Dice against the reference masks and between the predictions,
accuracy and changed answers, and the characters the cleaner covered. ``--quick`` (make bench)
runs both parts small: one-epoch models at 64²/32², 2 HC18 frames and 4 X-rays.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansCondensed.ttf")
SURNAMES = ("MUELLER", "Smith", "GARCIA", "Nguyen", "OKAFOR", "Kowalski", "ROSSI", "Andersson", "TANAKA", "Dubois")
GIVEN = ("Anna", "JOHN", "Maria", "PETER", "Fatima", "LUCAS", "Sofia", "Ahmed", "ELENA", "Noah")
PLACES = ("St Mary Hospital", "City General", "Klinikum Nord", "Royal Infirmary", "Hopital Sud")


def phi_strings(rng: np.random.Generator, n: int) -> list[str]:
    name = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}" if rng.random() < 0.5 else f"{rng.choice(SURNAMES)}, {rng.choice(GIVEN)}"
    ident = rng.choice(["ID ", "MRN ", "PID: ", ""]) + "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(6, 10))))
    year, month, day = int(rng.integers(1930, 2020)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    date = rng.choice([f"{year}-{month:02d}-{day:02d}", f"{day:02d}.{month:02d}.{year}", f"DOB {month:02d}/{day:02d}/{year}", f"{year}{month:02d}{day:02d}"])
    pool = [name, ident, date, str(rng.choice(PLACES))]
    return [str(s) for s in pool[:n]]


def fonts(size: int, rng: np.random.Generator):
    from PIL import ImageFont

    installed = [FONT_DIR / f for f in FONTS if (FONT_DIR / f).exists()]
    if installed:
        return ImageFont.truetype(str(installed[int(rng.integers(0, len(installed)))]), size)
    return ImageFont.load_default(size=size)


def render(image: np.ndarray, strings: list[str], rng: np.random.Generator, *, border_only: bool = False) -> tuple[np.ndarray, list[dict]]:
    """Draw the strings; return the image and, per string, its box and per-character ink masks.
    Every other string goes near a corner, the others anywhere; ``border_only``: all near a corner."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    out = image.astype(np.float32).copy()
    h, w = image.shape
    truth, taken = [], np.zeros((h, w), bool)
    for index, text in enumerate(strings):
        size = int(rng.integers(8, 33))
        font = fonts(size, rng)
        fill = 255 if rng.random() < 0.5 else int(rng.integers(160, 231))
        angle = float(rng.uniform(-5, 5))
        probe = ImageDraw.Draw(PILImage.new("L", (1, 1)))
        x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font)
        cw, ch = x1 + 4, y1 + 4
        layers = []
        for i, char in enumerate(text):
            layer = PILImage.new("L", (cw, ch))
            ImageDraw.Draw(layer).text((2 + probe.textlength(text[:i], font=font), 2), char, fill=255, font=font)
            layers.append(np.asarray(layer.rotate(angle, resample=PILImage.BILINEAR, expand=True)))
        full = np.maximum.reduce(layers)
        lh, lw = full.shape
        for _attempt in range(50):
            corner = border_only or index % 2 == 0
            if corner:
                top = int(rng.choice([rng.integers(2, max(3, h // 10)), rng.integers(max(3, h - h // 10 - lh), max(4, h - lh - 1))]))
                left = int(rng.choice([rng.integers(2, max(3, w // 10)), rng.integers(max(3, w - w // 4 - lw), max(4, w - lw - 1))]))
            else:
                top, left = int(rng.integers(0, max(1, h - lh))), int(rng.integers(0, max(1, w - lw)))
            top, left = max(0, min(top, h - lh)), max(0, min(left, w - lw))
            if not taken[max(0, top - 6) : top + lh + 6, max(0, left - 6) : left + lw + 6].any():
                break
        taken[top : top + lh, left : left + lw] = True
        alpha = full.astype(np.float32) / 255.0
        region = out[top : top + lh, left : left + lw]
        out[top : top + lh, left : left + lw] = region * (1 - alpha) + fill * alpha
        chars = []
        for char, layer in zip(text, layers):
            ys, xs = np.nonzero(layer > 127)
            if char.strip() and len(ys):
                chars.append((ys + top, xs + left))
        truth.append({"text": text, "box": (left, top, left + lw, top + lh), "chars": chars, "size": size})
    return np.clip(np.round(out), 0, 255).astype(np.uint8), truth


def load_images(n: int, size: int) -> list[tuple[str, np.ndarray]]:
    from PIL import Image as PILImage

    hc18 = sorted((DATA / "hc18_ultrasound" / "images").glob("*.png"))[: (n + 1) // 2]
    cxr = sorted((DATA / "cxr").rglob("*.jpeg"))[:: max(1, len(list((DATA / "cxr").rglob("*.jpeg"))) // max(1, n // 2))][: n // 2]
    out = []
    for path in hc18 + cxr:
        with PILImage.open(path) as pil:
            out.append((path.parent.name + "/" + path.name, np.asarray(pil.convert("L").resize((size, size), PILImage.BILINEAR))))
    return out


def tokens(text: str) -> set[str]:
    return {t.upper() for t in re.split(r"[^0-9A-Za-z]+", text) if len(t) >= 3}


def run_engine(name: str, rendered: list, readers: dict, workers: int) -> dict:
    """Clean every rendered image with engine ``name``; recall, residual words, area, time."""
    from concurrent.futures import ThreadPoolExecutor

    from medtools.secure import ocr
    from medtools.secure.pixels import PixelCleaner, find_text

    cleaner = PixelCleaner.create(ocr=name, threads=os.cpu_count())
    cleaner.clean_frames(rendered[0][1][None], union=False)  # load the models once, outside the clock
    chars = covered = non_text = non_text_redacted = 0
    read_after: dict[str, list[str]] = {reader: [] for reader in readers}
    times, per_image = [], []
    for image_name, image, truth in rendered:
        start = time.perf_counter()
        cleaned, records = cleaner.clean_frames(image[None], union=False)
        times.append(time.perf_counter() - start)
        redacted = np.zeros(image.shape, bool)
        for record in records:
            x0, y0, x1, y1 = record["box"]
            redacted[y0:y1, x0:x1] = True
        text_area = np.zeros(image.shape, bool)
        hit = total = 0
        for item in truth:
            x0, y0, x1, y1 = item["box"]
            text_area[max(0, y0 - 4) : y1 + 4, max(0, x0 - 4) : x1 + 4] = True
            for ys, xs in item["chars"]:
                total += 1
                hit += redacted[ys, xs].mean() >= 0.95
        chars += total
        covered += hit
        non_text += (~text_area).sum()
        non_text_redacted += (redacted & ~text_area).sum()
        left = {}
        for reader, engine in readers.items():
            after = set().union(*(tokens(b.text) for b in find_text(cleaned[0], engine=engine)))
            left[reader] = sorted(t for item in truth for t in tokens(item["text"]) if t in after)
            read_after[reader].extend(left[reader])
        per_image.append({"image": image_name, "chars": total, "covered": int(hit), "boxes": len(records), "read_after": left, "s": round(times[-1], 3)})

    parallel_cleaner = PixelCleaner.create(ocr=name, threads=1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # warm one engine per thread
        list(pool.map(lambda item: parallel_cleaner.clean_frames(item[1][None], union=False), rendered[:workers]))
        start = time.perf_counter()
        list(pool.map(lambda item: parallel_cleaner.clean_frames(item[1][None], union=False), rendered))
        parallel = time.perf_counter() - start
    settings = {"tophat": ocr.TOPHAT}
    if name == "rapidocr":
        settings.update(gain=ocr.RAPID_GAIN, side=ocr.RAPID_SIDE, unclip=ocr.RAPID_UNCLIP, box_thresh=ocr.RAPID_BOX_THRESH, margin_x=ocr.RAPID_MARGIN_X, margin_y_px=ocr.RAPID_MARGIN_Y)
    else:
        settings.update(gain=ocr.GAIN, upscale=ocr.UPSCALE, min_confidence=ocr.MIN_CONFIDENCE, margin=ocr.MARGIN, args=" ".join(ocr.TESSERACT_ARGS))
    return {
        "settings": settings,
        "char_recall": round(covered / max(1, chars), 4),
        "chars": int(chars),
        "covered": int(covered),
        "strings_read_after": {reader: len(words) for reader, words in read_after.items()},
        "read_after": read_after,
        "non_text_redacted": round(float(non_text_redacted) / max(1, float(non_text)), 4),
        "s_per_image": round(float(np.mean(times)), 3),
        "s_per_image_max": round(float(np.max(times)), 3),
        "images_per_s": round(len(rendered) / parallel, 2),
        "s_per_image_parallel": round(parallel / len(rendered), 3),
        "per_image": per_image,
    }


# ---------------------------------------------------------------- anatomy: does cleaning touch what a model sees?

HC18_RUN = {"full": {"size": 128, "epochs": 10, "steps": None, "test": None}, "quick": {"size": 64, "epochs": 1, "steps": 2, "test": 2}}
PAIRS = ("cleaned_vs_phi", "cleaned_vs_original", "phi_vs_original", "inpainted_vs_phi")
CXR_RUN = {"full": {"size": 128, "epochs": 6, "steps": None, "test": None, "train": None}, "quick": {"size": 32, "epochs": 1, "steps": 2, "test": 4, "train": 40}}


def medtools(*args: object) -> str:
    """Run one medtools command (the console script beside this Python); its stdout."""
    import shutil
    import subprocess

    script = Path(sys.executable).parent / "medtools"
    command = [str(script)] if script.exists() else [shutil.which("medtools") or "medtools"]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"medtools {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def held_out(groups: list[str], seed: int, folds: int) -> set[str]:
    """Every ``folds``-th group of the sorted groups shuffled with ``seed`` (fold 0 of
    examples/brain-privacy/split_patients.py): the held-out groups."""
    import random

    order = sorted(set(groups))
    random.Random(seed).shuffle(order)
    return set(order[0::folds])


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


VARIANTS = ("original", "phi", "cleaned", "inpainted")


def render_variants(items: list[tuple[str, np.ndarray]], root: Path, rng: np.random.Generator, strings: int, border_only: bool = False) -> dict[str, dict]:
    """Write original/NAME.png and phi/NAME.png (PHI rendered as in the pixel benchmark), then
    clean phi/ with ``medtools deid --clean-pixels`` into cleaned/ (boxes filled with the
    background value) and with ``--fill inpaint`` into inpainted/ (boxes filled from their
    surroundings); per image: the rendered boxes and the cleaner's boxes of each."""
    from PIL import Image as PILImage

    for variant in ("original", "phi"):
        (root / variant).mkdir(parents=True, exist_ok=True)
    info: dict[str, dict] = {}
    for name, image in items:
        phi, truth = render(image, phi_strings(rng, strings), rng, border_only=border_only)
        PILImage.fromarray(image).save(root / "original" / f"{name}.png")
        PILImage.fromarray(phi).save(root / "phi" / f"{name}.png")
        info[name] = {"rendered": [item["box"] for item in truth], "chars": [item["chars"] for item in truth]}
    start = time.perf_counter()
    out = medtools("deid", root / "phi", "-o", root / "cleaned", "--clean-pixels", "--workers", 1, "--json", "--overwrite", "-q")
    seconds = time.perf_counter() - start
    for line in out.splitlines():
        record = json.loads(line)
        name = Path(record["output"]).stem
        info[name]["cleaned"] = [box["box"] for box in record["changes"]["pixel_boxes"]]
    missing = [name for name, item in info.items() if "cleaned" not in item]
    if missing:
        raise SystemExit(f"deid wrote no record for {missing}")
    chars = covered = strings_missed = 0
    for item in info.values():
        redacted = box_mask(item["cleaned"], items[0][1].shape)
        for string in item.pop("chars"):
            hits = [redacted[ys, xs].mean() >= 0.95 for ys, xs in string]
            chars, covered, strings_missed = chars + len(hits), covered + sum(hits), strings_missed + (not all(hits))
    start = time.perf_counter()
    out = medtools("deid", root / "phi", "-o", root / "inpainted", "--clean-pixels", "--fill", "inpaint", "--workers", 1, "--json", "--overwrite", "-q")
    inpaint_seconds = time.perf_counter() - start
    for line in out.splitlines():
        record = json.loads(line)
        info[Path(record["output"]).stem]["inpainted"] = [box["box"] for box in record["changes"]["pixel_boxes"]]
    missing = [name for name, item in info.items() if "inpainted" not in item]
    if missing:
        raise SystemExit(f"deid --fill inpaint wrote no record for {missing}")
    same = sum(sorted(item["inpainted"]) == sorted(item["cleaned"]) for item in info.values())
    recall = {"char_recall": round(covered / max(1, chars), 4), "chars": chars, "covered": int(covered), "strings_not_fully_covered": strings_missed}
    return {"images": info, "deid_s": round(seconds, 1), "deid_inpaint_s": round(inpaint_seconds, 1), "inpaint_same_boxes": f"{same} of {len(info)}", "recall": recall}


def box_mask(boxes: list, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def anatomy_hc18(args: argparse.Namespace, work: Path, mode: str) -> dict:
    """seg-train on the training exams; segment the held-out frames as they are, with PHI, and
    cleaned; Dice between the predictions and against the reference masks."""
    import csv

    from PIL import Image as PILImage

    run = HC18_RUN[mode]
    data = DATA / "hc18_ultrasound"
    rows = list(csv.DictReader(open(data / "labels.csv")))
    test_exams = held_out([r["exam_id"] for r in rows], args.seed, 5)
    train = [r for r in rows if r["exam_id"] not in test_exams]
    test = sorted((r for r in rows if r["exam_id"] in test_exams), key=lambda r: r["filename"])[: run["test"]]
    manifest = write_csv(work / "hc18-train.csv", ["patient", "case", "image", "label"], [[r["exam_id"], Path(r["filename"]).stem, str(data / "images" / r["filename"]), str(data / "masks" / r["mask"])] for r in train])
    model = work / f"hc18-seg-{mode}-seed{args.seed}.safetensors"
    train_s = None
    if not model.exists():
        start = time.perf_counter()
        medtools("seg-train", manifest, "-o", model, "--encoder", "resnet18", "--size", run["size"], "--binary", "--epochs", run["epochs"], "-b", 8, "--seed", args.seed, "--device", "cpu", "-q", *(("--steps-per-epoch", run["steps"]) if run["steps"] else ()))
        train_s = round(time.perf_counter() - start, 1)
    items, truth = [], {}
    for r in test:
        name = Path(r["filename"]).stem
        with PILImage.open(data / "images" / r["filename"]) as pil:
            items.append((name, np.asarray(pil.convert("L").resize((args.size, args.size), PILImage.BILINEAR))))
        with PILImage.open(data / "masks" / r["mask"]) as pil:
            truth[name] = np.asarray(pil.convert("L").resize((args.size, args.size), PILImage.NEAREST)) > 127
    root = work / f"hc18-{args.placement}"
    rendered = render_variants(items, root, np.random.default_rng(args.seed), args.strings, args.placement == "corners")
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for variant in VARIANTS:
        medtools("segment", root / variant, "-m", model, "-o", root / f"pred-{variant}", "--device", "cpu", "--overwrite", "-q")
        for name in truth:
            found = sorted((root / f"pred-{variant}").glob(f"{name}*.png"))
            if len(found) != 1:
                raise SystemExit(f"segment wrote {len(found)} outputs for {variant}/{name}")
            with PILImage.open(found[0]) as pil:
                predictions.setdefault(name, {})[variant] = np.asarray(pil) > 0
    per_image = []
    for name, mask in truth.items():
        p = predictions[name]
        cleaned_boxes = box_mask(rendered["images"][name]["cleaned"], mask.shape)
        rendered_boxes = box_mask(rendered["images"][name]["rendered"], mask.shape)
        per_image.append({
            "image": name,
            "dice_truth": {v: round(dice(p[v], mask), 4) for v in p},
            "dice_cleaned_vs_phi": round(dice(p["cleaned"], p["phi"]), 4),
            "dice_cleaned_vs_original": round(dice(p["cleaned"], p["original"]), 4),
            "dice_phi_vs_original": round(dice(p["phi"], p["original"]), 4),
            "dice_inpainted_vs_phi": round(dice(p["inpainted"], p["phi"]), 4),
            "head_under_text": round(float((rendered_boxes & mask).sum()) / max(1, int(mask.sum())), 4),
            "head_redacted": round(float((cleaned_boxes & mask).sum()) / max(1, int(mask.sum())), 4),
        })
    mean = lambda key, sub=None: round(float(np.mean([(r[key][sub] if sub else r[key]) for r in per_image])), 4)  # noqa: E731
    delta = [abs(r["dice_truth"]["cleaned"] - r["dice_truth"]["phi"]) for r in per_image]
    delta_original = [abs(r["dice_truth"]["cleaned"] - r["dice_truth"]["original"]) for r in per_image]
    delta_phi_original = [abs(r["dice_truth"]["phi"] - r["dice_truth"]["original"]) for r in per_image]
    delta_inpainted = [abs(r["dice_truth"]["inpainted"] - r["dice_truth"]["phi"]) for r in per_image]
    return {
        "data": f"hc18_ultrasound: {len(test)} frames of {len({r['exam_id'] for r in test})} held-out exams (split by exam, seed {args.seed}); {len(train)} training frames",
        "model": {"command": f"seg-train --encoder resnet18 --size {run['size']} --binary --epochs {run['epochs']} -b 8 --seed {args.seed}" + (f" --steps-per-epoch {run['steps']}" if run["steps"] else ""), "train_s": train_s},
        "images": len(per_image),
        "dice_truth": {v: mean("dice_truth", v) for v in VARIANTS},
        "mean_abs_delta_dice_cleaned_vs_phi": round(float(np.mean(delta)), 4),
        "max_abs_delta_dice_cleaned_vs_phi": round(float(np.max(delta)), 4),
        "mean_abs_delta_dice_cleaned_vs_original": round(float(np.mean(delta_original)), 4),
        "mean_abs_delta_dice_phi_vs_original": round(float(np.mean(delta_phi_original)), 4),
        "mean_abs_delta_dice_inpainted_vs_phi": round(float(np.mean(delta_inpainted)), 4),
        "dice_between_predictions": {"cleaned_vs_phi": mean("dice_cleaned_vs_phi"), "cleaned_vs_original": mean("dice_cleaned_vs_original"), "phi_vs_original": mean("dice_phi_vs_original"), "inpainted_vs_phi": mean("dice_inpainted_vs_phi")},
        "head_under_rendered_text": mean("head_under_text"),
        "head_redacted": mean("head_redacted"),
        "recall": rendered["recall"],
        "deid_s": rendered["deid_s"],
        "deid_inpaint_s": rendered["deid_inpaint_s"],
        "inpaint_same_boxes": rendered["inpaint_same_boxes"],
        "per_image": per_image,
    }


def anatomy_cxr(args: argparse.Namespace, work: Path, mode: str) -> dict:
    """cls-train on the training patients; classify the held-out X-rays as they are, with PHI,
    and cleaned; accuracy of each and the predictions that change."""
    import csv

    from PIL import Image as PILImage

    from collections import Counter

    run = CXR_RUN[mode]
    data = DATA / "cxr"
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    test_groups = held_out([r["group_id"] for r in rows], args.seed, 4)
    train = [r for r in rows if r["group_id"] not in test_groups]
    test = [r for r in rows if r["group_id"] in test_groups]
    if run["train"]:
        train = train[:: max(1, len(train) // run["train"])][: run["train"]]
    if run["test"]:
        test = test[:: max(1, len(test) // run["test"])][: run["test"]]
    manifest = write_csv(work / "cxr-train.csv", ["patient", "case", "image", "class"], [[r["group_id"], Path(r["file"]).stem, str(data / r["file"]), r["label"]] for r in train])
    model = work / f"cxr-cls-{mode}-seed{args.seed}.safetensors"
    train_s = None
    if not model.exists():
        start = time.perf_counter()
        medtools("cls-train", manifest, "-o", model, "--arch", "resnet18", "--size", run["size"], "--epochs", run["epochs"], "-b", 32, "--seed", args.seed, "--device", "cpu", "-q", *(("--steps-per-epoch", run["steps"]) if run["steps"] else ()))
        train_s = round(time.perf_counter() - start, 1)
    items, labels = [], {}
    for r in test:
        name = Path(r["file"]).stem
        with PILImage.open(data / r["file"]) as pil:
            items.append((name, np.asarray(pil.convert("L").resize((args.size, args.size), PILImage.BILINEAR))))
        labels[name] = r["label"]
    root = work / f"cxr-{args.placement}"
    rendered = render_variants(items, root, np.random.default_rng(args.seed + 1), args.strings, args.placement == "corners")
    predicted: dict[str, dict[str, tuple[str, float]]] = {}
    for variant in VARIANTS:
        for line in medtools("classify", root / variant, "-m", model, "--device", "cpu", "-q").splitlines():
            record = json.loads(line)
            predicted.setdefault(Path(record["path"]).stem, {})[variant] = (record["label"], float(record["probability"]))
    if set(predicted) != set(labels):
        raise SystemExit(f"classify answered for {len(predicted)} of {len(labels)} images")
    accuracy = {v: round(100.0 * float(np.mean([predicted[n][v][0] == labels[n] for n in labels])), 2) for v in VARIANTS}
    flips = lambda a, b: sorted(n for n in labels if predicted[n][a][0] != predicted[n][b][0])  # noqa: E731
    dp = lambda a, b: round(float(np.mean([abs(predicted[n][a][1] - predicted[n][b][1]) for n in labels])), 4)  # noqa: E731
    return {
        "data": f"cxr: {len(test)} held-out X-rays of {len({r['group_id'] for r in test})} patients ({sum(l == 'PNEUMONIA' for l in labels.values())} pneumonia; split by patient group, seed {args.seed}); {len(train)} training images",
        "model": {"command": f"cls-train --arch resnet18 --size {run['size']} --epochs {run['epochs']} -b 32 --seed {args.seed}" + (f" --steps-per-epoch {run['steps']}" if run["steps"] else ""), "train_s": train_s},
        "images": len(labels),
        "accuracy": accuracy,
        "delta_accuracy_pt_cleaned_vs_phi": round(accuracy["cleaned"] - accuracy["phi"], 2),
        "delta_accuracy_pt_cleaned_vs_original": round(accuracy["cleaned"] - accuracy["original"], 2),
        "delta_accuracy_pt_inpainted_vs_phi": round(accuracy["inpainted"] - accuracy["phi"], 2),
        "delta_accuracy_pt_inpainted_vs_original": round(accuracy["inpainted"] - accuracy["original"], 2),
        "changed_predictions": {pair: len(flips(*pair.split("_vs_"))) for pair in PAIRS},
        "changed_to": {pair: dict(Counter(predicted[n][pair.split("_vs_")[0]][0] for n in flips(*pair.split("_vs_")))) for pair in PAIRS},
        "mean_abs_delta_probability": {pair: dp(*pair.split("_vs_")) for pair in PAIRS},
        "image_redacted": round(float(np.mean([box_mask(rendered["images"][n]["cleaned"], (args.size, args.size)).mean() for n in labels])), 4),
        "recall": rendered["recall"],
        "deid_s": rendered["deid_s"],
        "deid_inpaint_s": rendered["deid_inpaint_s"],
        "inpaint_same_boxes": rendered["inpaint_same_boxes"],
        "per_image": [{"image": n, "truth": labels[n], **{v: [predicted[n][v][0], round(predicted[n][v][1], 4)] for v in VARIANTS}} for n in sorted(labels)],
    }


def anatomy(args: argparse.Namespace) -> dict:
    """Segmentation (HC18) and classification (CXR) of cleaned vs uncleaned vs original images."""
    import tempfile

    mode = "quick" if args.quick else "full"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="deid-anatomy-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = {
        "mode": mode,
        "size": args.size,
        "strings_per_image": args.strings,
        "placement": args.placement,
        "seed": args.seed,
    }
    if args.only in (None, "hc18"):
        result["hc18"] = anatomy_hc18(args, work, mode)
    if args.only in (None, "cxr"):
        result["cxr"] = anatomy_cxr(args, work, mode)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["goal"] = {}
    if "hc18" in result:
        result["goal"]["hc18_mean_abs_delta_dice_le_0.01"] = result["hc18"]["mean_abs_delta_dice_cleaned_vs_phi"] <= 0.01
        result["goal"]["hc18_inpaint_mean_abs_delta_dice_le_0.01"] = result["hc18"]["mean_abs_delta_dice_inpainted_vs_phi"] <= 0.01
    if "cxr" in result:
        result["goal"]["cxr_abs_delta_accuracy_le_1pt"] = abs(result["cxr"]["delta_accuracy_pt_cleaned_vs_phi"]) <= 1.0
        result["goal"]["cxr_inpaint_abs_delta_accuracy_le_1pt"] = abs(result["cxr"]["delta_accuracy_pt_inpainted_vs_phi"]) <= 1.0
    if not args.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ocr", choices=("both", "rapidocr", "tesseract"), default="both")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--strings", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 images, and the anatomy part on a few images with one-epoch models, for a smoke run")
    parser.add_argument("--anatomy", action="store_true", help="only the anatomy part: segmentation/classification of cleaned vs uncleaned images")
    parser.add_argument("--placement", choices=("mixed", "corners"), default="mixed", help="anatomy part: half the strings near a corner and half anywhere (mixed), or all near a corner")
    parser.add_argument("--only", choices=("hc18", "cxr"), default=None, help="anatomy part: one data set only (default both)")
    parser.add_argument("--work", default=None, help="anatomy part: keep images, predictions and models here (models found there are reused)")
    args = parser.parse_args()
    if args.quick:
        args.images = 2

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from medtools.secure import ocr

    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor() or platform.machine(), "python": platform.python_version()}
    if args.anatomy:
        if not ocr.available("rapidocr") or not DATA.exists():
            print(json.dumps({"benchmark": "deid-anatomy", "skipped": "rapidocr-onnxruntime (deid's default engine) not installed, or ../shared/data not found"}))
            return
        print(json.dumps({"benchmark": "deid-anatomy", "machine": machine, **anatomy(args)}, indent=1))
        return
    names = [n for n in (("rapidocr", "tesseract") if args.ocr == "both" else (args.ocr,)) if ocr.available(n)]
    if not names or not DATA.exists():
        print(json.dumps({"benchmark": "deid-pixels", "skipped": f"no OCR engine of {args.ocr} installed, or ../shared/data not found"}))
        return
    rng = np.random.default_rng(args.seed)
    rendered = [(name, *render(image, phi_strings(rng, args.strings), rng)) for name, image in load_images(args.images, args.size)]
    readers = {n: ocr.create(n, threads=os.cpu_count()) for n in ocr.ENGINES if ocr.available(n)}
    result = {
        "benchmark": "deid-pixels",
        "images": len(rendered),
        "size": args.size,
        "strings_per_image": args.strings,
        "seed": args.seed,
        "workers": args.workers,
        "machine": machine,
        "engines": {name: run_engine(name, rendered, readers, args.workers) for name in names},
    }
    if args.quick and ocr.available("rapidocr"):  # make bench: the anatomy part too, in small
        result["anatomy"] = anatomy(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
