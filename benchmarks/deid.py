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


def render(image: np.ndarray, strings: list[str], rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Draw the strings; return the image and, per string, its box and per-character ink masks."""
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
            corner = index % 2 == 0
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ocr", choices=("both", "rapidocr", "tesseract"), default="both")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--strings", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="2 images, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.images = 2

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from medtools.secure import ocr

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
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "engines": {name: run_engine(name, rendered, readers, args.workers) for name in names},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
