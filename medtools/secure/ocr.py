"""OCR engines that find burned-in text for the Clean Pixel Data option (``secure/pixels.py``).

Both run offline and see the same prepared frame, the white top-hat of the image (a grey opening
of size ``TOPHAT`` subtracted): thin bright strokes — letters — stay, anatomy, the black border
and gradients go. Each engine returns the words it finds as (text, confidence 0–100, x0, y0, x1,
y1) in frame pixels, and says how far a box grows before it is filled.

* ``rapidocr`` (default; the ``deid`` extra, ``rapidocr-onnxruntime``): the PP-OCRv4 text
  detector (DB) and recogniser in ONNX, whose models ship inside the wheel (nothing is downloaded
  at run time). The detector sees the top-hat ×``RAPID_GAIN`` as light text on black, its
  shorter side scaled to ``RAPID_SIDE``; every detected box is kept. Recognition (only for the
  report and phi-scan) reads the grown box in the top-hat ×``RAPID_READ_GAIN``. Boxes grow by ``RAPID_MARGIN_X`` × their height left and right (the detector
  clips the first and last character of a line), ``RAPID_MARGIN_Y`` px up and down.
* ``tesseract`` (Debian ``tesseract-ocr``, called as a subprocess with TSV output): the top-hat
  ×``GAIN`` as dark print on white, upscaled ×``UPSCALE`` so that 8-px text reaches Tesseract's
  working size, sparse-text mode (``--psm 11``, LSTM); a word counts when it holds a letter or
  digit and its confidence is at least ``MIN_CONFIDENCE``. Boxes grow by ``MARGIN`` × their
  height on every side.

Settings were chosen on benchmark seed 1 (``benchmarks/deid.py --seed 1``); recall, area and
speed on seed 0 are in docs/results.md. Dark text on a bright background is not searched.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import threading
from typing import Any

import numpy as np

from medtools.core.errors import InputError, UsageError

ENGINES = ("rapidocr", "tesseract")
DEFAULT_ENGINE = "rapidocr"
TOPHAT = 15  # px: strokes narrower than about half of this survive the top-hat

RAPID_GAIN = 4.0  # detection: faint grey strokes made bright
RAPID_READ_GAIN = 2.0  # recognition: ×4 saturates the strokes into blobs the recogniser misreads
RAPID_SIDE = 736  # the detector's input: shorter side scaled up to this (its own default)
RAPID_UNCLIP = 1.2  # DB box expansion (RapidOCR's default 1.6 doubles the redacted area)
RAPID_BOX_THRESH = 0.5
RAPID_MARGIN_X = 0.8  # of the box height, left and right
RAPID_MARGIN_Y = 1  # px, up and down

GAIN = 2.0  # Tesseract: a stroke 128 grey levels above its surroundings becomes black
UPSCALE = 2
MIN_CONFIDENCE = 10.0
MARGIN = 0.3  # of the box height
MIN_MARGIN = 2  # px
TESSERACT_ARGS = ("--psm", "11", "--oem", "1")

TESSERACT_HINT = "install the Tesseract OCR engine (Debian/Ubuntu: apt-get install tesseract-ocr tesseract-ocr-eng)"
RAPID_HINT = "install the deid extra (pip install 'medtools[deid]', which brings rapidocr-onnxruntime) or choose --ocr tesseract"

Word = tuple[str, float, int, int, int, int]


def white_tophat(gray: np.ndarray) -> np.ndarray:
    """The bright thin strokes of a uint8 image (float32, 0..255)."""
    from scipy import ndimage as ndi

    return ndi.white_tophat(gray, size=(TOPHAT, TOPHAT)).astype(np.float32)


# ---------------------------------------------------------------- RapidOCR


def rapidocr_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("rapidocr_onnxruntime") is not None


class RapidOCREngine:
    """PP-OCRv4 detection + recognition (ONNX Runtime, CPU); one session set per thread."""

    name = "rapidocr"

    def __init__(self, threads: int | None = None) -> None:
        if not rapidocr_available():
            raise UsageError(f"--ocr rapidocr: rapidocr-onnxruntime is not installed; {RAPID_HINT}")
        self.threads = threads
        self._local = threading.local()

    def _engine(self) -> Any:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            from rapidocr_onnxruntime import RapidOCR

            threads = {"intra_op_num_threads": self.threads, "inter_op_num_threads": 1} if self.threads else {}
            engine = self._local.engine = RapidOCR(det_limit_side_len=RAPID_SIDE, det_limit_type="min", **threads)
        return engine

    def margins(self, height: int) -> tuple[int, int]:
        return max(MIN_MARGIN, int(round(RAPID_MARGIN_X * height))), RAPID_MARGIN_Y

    def words(self, gray: np.ndarray, *, read: bool = True) -> list[Word]:
        """Every box the detector finds; ``read``: with the text recognised in the grown box and
        its score (else "" and -1: detection alone, about half the time)."""
        engine = self._engine()
        strokes = white_tophat(gray)
        view = np.repeat(np.clip(strokes * RAPID_GAIN, 0.0, 255.0).astype(np.uint8)[..., None], 3, axis=-1)
        quads, _ = engine(view, use_det=True, use_cls=False, use_rec=False, box_thresh=RAPID_BOX_THRESH, unclip_ratio=RAPID_UNCLIP, text_score=0.0)
        h, w = gray.shape
        boxes = []
        for quad in quads or ():
            points = np.asarray(quad, np.float32)
            x0, y0 = np.floor(points.min(axis=0)).astype(int)
            x1, y1 = np.ceil(points.max(axis=0)).astype(int)
            boxes.append((max(0, int(x0)), max(0, int(y0)), min(w, int(x1)), min(h, int(y1))))
        boxes = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
        if not read or not boxes:
            return [("", -1.0, *box) for box in boxes]
        page = np.repeat(np.clip(strokes * RAPID_READ_GAIN, 0.0, 255.0).astype(np.uint8)[..., None], 3, axis=-1)
        crops = []
        for x0, y0, x1, y1 in boxes:  # the detector clips a line's first and last letters: read the grown box
            mx, my = self.margins(y1 - y0)
            crops.append(np.ascontiguousarray(page[max(0, y0 - my - 1) : y1 + my + 1, max(0, x0 - mx) : x1 + mx]))
        texts, _ = engine.text_rec(crops)
        return [(str(text), float(score) * 100.0, *box) for box, (text, score, *_) in zip(boxes, texts)]


# ---------------------------------------------------------------- Tesseract


def tesseract_binary() -> str | None:
    """``MEDTOOLS_TESSERACT`` (an executable path) or ``tesseract`` on PATH; None when absent."""
    named = os.environ.get("MEDTOOLS_TESSERACT")
    if named:
        return named if os.path.isfile(named) and os.access(named, os.X_OK) else None
    return shutil.which("tesseract")


class TesseractEngine:
    """Tesseract 5 as a subprocess on the top-hat as dark print, upscaled."""

    name = "tesseract"

    def __init__(self) -> None:
        binary = tesseract_binary()
        if binary is None:
            raise UsageError(f"--ocr tesseract: tesseract not found; {TESSERACT_HINT}")
        self.binary = binary

    def margins(self, height: int) -> tuple[int, int]:
        margin = max(MIN_MARGIN, int(round(MARGIN * height)))
        return margin, margin

    def prepare(self, gray: np.ndarray) -> np.ndarray:
        page = (255.0 - np.clip(white_tophat(gray) * GAIN, 0.0, 255.0)).astype(np.uint8)
        if UPSCALE != 1:
            page = np.repeat(np.repeat(page, UPSCALE, axis=0), UPSCALE, axis=1)
        return page

    def words(self, gray: np.ndarray, *, read: bool = True) -> list[Word]:
        """Words Tesseract reads (it cannot detect without reading: ``read`` is ignored)."""
        from PIL import Image as PILImage

        buffer = io.BytesIO()
        PILImage.fromarray(self.prepare(gray)).save(buffer, format="PNG", compress_level=1)
        env = {**os.environ, "OMP_THREAD_LIMIT": "1"}  # one core per call: the batch driver runs files in parallel
        try:
            proc = subprocess.run([self.binary, "stdin", "stdout", *TESSERACT_ARGS, "tsv"], input=buffer.getvalue(), capture_output=True, env=env, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InputError(f"tesseract failed: {exc}") from None
        if proc.returncode != 0:
            raise InputError(f"tesseract failed (exit {proc.returncode}): {proc.stderr.decode('utf-8', 'replace').strip()[-200:]}")
        words = []
        reader = csv.DictReader(io.StringIO(proc.stdout.decode("utf-8", "replace")), delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            text = (row.get("text") or "").strip()
            if row.get("level") != "5" or not text:
                continue
            try:
                conf, left, top, width, height = float(row["conf"]), int(row["left"]), int(row["top"]), int(row["width"]), int(row["height"])
            except (KeyError, TypeError, ValueError):
                continue
            if conf < MIN_CONFIDENCE or not any(c.isalnum() for c in text):
                continue
            words.append((text, conf, left // UPSCALE, top // UPSCALE, -(-(left + width) // UPSCALE), -(-(top + height) // UPSCALE)))
        return words


def available(name: str) -> bool:
    """Whether engine ``name`` can run here (no error, nothing loaded)."""
    return rapidocr_available() if name == "rapidocr" else tesseract_binary() is not None


def create(name: str | None = None, *, threads: int | None = None) -> RapidOCREngine | TesseractEngine:
    """The engine ``name`` (default ``DEFAULT_ENGINE``), or UsageError (exit 2) naming what to install."""
    name = DEFAULT_ENGINE if name is None else name
    if name == "rapidocr":
        return RapidOCREngine(threads=threads)
    if name == "tesseract":
        return TesseractEngine()
    raise UsageError(f"--ocr {name!r}: choose one of {', '.join(ENGINES)}")
