"""deid --clean-pixels / --clean-descriptors and phi-scan on images with burned-in PHI.

Text is drawn with Pillow's own font at known places (on a dark border and on the "anatomy"),
in a PNG, a single-frame DICOM, a multi-frame DICOM and a NIfTI volume, and on one real HC18
ultrasound frame. After cleaning, OCR reads none of the strings, every pixel outside the
reported boxes is unchanged, and phi-scan passes what it failed before (exit 7). The default
engine (RapidOCR) runs every case; Tesseract, the option, runs the PNG case. ``--fill inpaint``
fills the boxes from their surroundings: the same checks hold.
"""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest

from conftest import run_cli

pydicom = pytest.importorskip("pydicom")
def _rapidocr() -> bool:
    import importlib.util

    return importlib.util.find_spec("rapidocr_onnxruntime") is not None


needs_ocr = pytest.mark.skipif(not _rapidocr(), reason="rapidocr-onnxruntime not installed (the deid extra: pip install -e '.[deid]'; make and .ci/run install it)")
needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed (Debian: apt-get install tesseract-ocr; .ci/run installs it)")

STRINGS = (("DOE^JOHN", (12, 10), 22), ("ID 4839201", (150, 214), 18), ("1970-01-01", (120, 112), 20))
NAME_PARTS = ("DOE", "JOHN", "4839201", "1970")


def phantom(seed: int = 0) -> np.ndarray:
    """256² uint8: black border, a smooth bright ellipse with noise (the anatomy)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    body = np.exp(-(((yy - 140) / 90.0) ** 2 + ((xx - 128) / 100.0) ** 2) * 2.0) * 150 + 20
    image = body + rng.normal(0, 4, body.shape)
    image[:40] = 0
    return np.clip(image, 0, 255).astype(np.uint8)


def burn(image: np.ndarray, value: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """The image with STRINGS drawn in, and the mask of their ink."""
    from PIL import Image, ImageDraw, ImageFont

    pil = Image.fromarray(image)
    ink = Image.new("L", pil.size)
    for text, xy, size in STRINGS:
        font = ImageFont.load_default(size=size)
        ImageDraw.Draw(pil).text(xy, text, fill=value, font=font)
        ImageDraw.Draw(ink).text(xy, text, fill=255, font=font)
    return np.asarray(pil), np.asarray(ink) > 0


def read(frame: np.ndarray, parts=NAME_PARTS, engine: str = "rapidocr") -> set[str]:
    """The parts of the PHI strings that OCR reads anywhere in the frame."""
    from medtools.secure import ocr
    from medtools.secure.pixels import find_text

    text = " ".join(box.text for box in find_text(frame, engine=ocr.create(engine))).upper()
    return {part for part in parts if part in text}


def boxes_mask(records, shape, frame=None) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for record in records:
        if frame is None or record.get("frame", 0) == frame:
            x0, y0, x1, y1 = record["box"]
            mask[y0:y1, x0:x1] = True
    return mask


def write_dicom(path, frames: np.ndarray, *, burned_in: str = "YES") -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "DOE^JOHN", "4839201", "19700101"
    ds.Modality, ds.Manufacturer = "OT", "Phantom"
    ds.StudyDescription = "US follow-up Doe^John 1970-01-01"
    ds.SeriesDescription = "Series of JOHN DOE"
    ds.ImageComments = "call 555-123-4567 about patient 4839201"
    ds.BurnedInAnnotation = burned_in
    frames = np.asarray(frames, np.uint16) * 16  # 12-bit data in 16-bit words
    n = frames.shape[0]
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if n > 1:
        ds.NumberOfFrames = n
    ds.PixelData = frames.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture(scope="module")
def burned():
    return burn(phantom())


@pytest.mark.parametrize("engine", [pytest.param("rapidocr", marks=needs_ocr), pytest.param("tesseract", marks=needs_tesseract)])
def test_png_text_gone_and_pixels_outside_boxes_unchanged(tmp_path, burned, engine):
    from PIL import Image

    image, ink = burned
    assert read(image, engine=engine) == set(NAME_PARTS)  # the engine reads them before
    Image.fromarray(image).save(tmp_path / "scan.png")
    original = (tmp_path / "scan.png").read_bytes()
    proc = run_cli("deid", tmp_path / "scan.png", "-o", tmp_path / "out", "--clean-pixels", "--ocr", engine, "--json", "--audit-csv", tmp_path / "audit.csv", check=True)
    record = json.loads(proc.stdout)
    boxes = record["changes"]["pixel_boxes"]
    assert boxes and all("DOE" not in json.dumps(b) for b in boxes)  # the report masks the text
    cleaned = np.asarray(Image.open(record["output"]))
    assert not read(cleaned, engine=engine)
    inside = boxes_mask(boxes, image.shape)
    assert np.array_equal(cleaned[~inside], image[~inside])  # anatomy untouched outside the boxes
    assert inside[ink].mean() > 0.98  # the ink is under the boxes
    rows = list(csv.DictReader(open(tmp_path / "audit.csv")))
    assert len(rows) == len(boxes) and {r["what"] for r in rows} == {"pixels"}
    assert (tmp_path / "scan.png").read_bytes() == original  # the input is never rewritten


@needs_ocr
def test_dicom_single_and_multi_frame_cleaned_descriptors_kept_clean(tmp_path, burned):
    image, ink = burned
    plain = phantom(1)
    (tmp_path / "in").mkdir()
    write_dicom(tmp_path / "in" / "one.dcm", image[None])
    write_dicom(tmp_path / "in" / "cine.dcm", np.stack([plain, image, plain]))  # the text in one frame of three
    proc = run_cli("deid", tmp_path / "in", "-o", tmp_path / "out", "--clean-pixels", "--clean-descriptors", "--json", check=True)
    records = {json.loads(line)["input"].split("/")[-1]: json.loads(line) for line in proc.stdout.splitlines()}
    for name, frames_in in (("one.dcm", image[None]), ("cine.dcm", np.stack([plain, image, plain]))):
        ds = pydicom.dcmread(tmp_path / "out" / name)
        frames = ds.pixel_array.reshape(frames_in.shape) // 16
        assert ds.BurnedInAnnotation == "NO"
        codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
        assert {"113100", "113101", "113105"} <= codes
        boxes = records[name]["changes"]["pixel_boxes"]
        inside = boxes_mask(boxes, image.shape)
        for k in range(frames.shape[0]):
            assert np.array_equal(frames[k][~inside], frames_in[k][~inside])  # every frame: same boxes, nothing else
        text_frame = frames[1] if name == "cine.dcm" else frames[0]
        assert inside[ink].mean() > 0.98
        assert not read(text_frame.astype(np.uint8))
        # Clean Descriptors: kept, without the patient's name, ID, birth date, phone number
        for keyword in ("StudyDescription", "SeriesDescription", "ImageComments"):
            value = str(ds.get(keyword, ""))
            assert value, keyword
            assert not re.search(r"(?i)doe|john|4839201|1970|555", value), (keyword, value)
        assert "US follow-up" in ds.StudyDescription
        assert not ds.get("PatientName") and not ds.get("PatientBirthDate")

    # phi-scan: the originals fail (exit 7, findings masked), the cleaned files pass
    dirty = run_cli("phi-scan", tmp_path / "in", "--json")
    assert dirty.returncode == 7, dirty.stderr
    findings = [json.loads(line) for line in dirty.stdout.splitlines()]
    kinds = {f["kind"] for f in findings}
    assert {"phi tag", "pixel text", "burned-in annotation", "not de-identified"} <= kinds
    assert "DOE^JOHN" not in dirty.stdout and "4839201" not in dirty.stdout
    clean = run_cli("phi-scan", tmp_path / "out", "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout == ""


@needs_ocr
def test_nifti_slices_cleaned(tmp_path, burned):
    import nibabel as nib

    from medtools.secure.pixels import volume_from_slices

    image, ink = burned
    slices = np.stack([phantom(2), image]).astype(np.int16)
    volume = volume_from_slices(slices, (256, 256, 2))
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "vol.nii.gz")
    proc = run_cli("deid", tmp_path / "vol.nii.gz", "-o", tmp_path / "out", "--clean-pixels", "--json", check=True)
    record = json.loads(proc.stdout)
    from medtools.secure.pixels import volume_slices

    after = volume_slices(np.asarray(nib.load(record["output"]).dataobj))
    for k in range(2):  # each slice: its own boxes, nothing outside them changed
        inside = boxes_mask(record["changes"]["pixel_boxes"], image.shape, frame=k)
        assert np.array_equal(after[k][~inside], slices[k][~inside])
    assert inside[ink].mean() > 0.98
    assert not read(after[1].astype(np.uint8))


def test_burned_in_flag_needs_cleaning_and_descriptors_without_ocr(tmp_path):
    write_dicom(tmp_path / "flagged.dcm", phantom()[None], burned_in="YES")
    refused = run_cli("deid", tmp_path / "flagged.dcm", "-o", tmp_path / "a.dcm")
    assert refused.returncode == 5 and "BurnedInAnnotation" in refused.stderr and not (tmp_path / "a.dcm").exists()
    run_cli("deid", tmp_path / "flagged.dcm", "-o", tmp_path / "b.dcm", "--allow-burned-in", "--clean-descriptors", check=True)
    ds = pydicom.dcmread(tmp_path / "b.dcm")
    assert ds.BurnedInAnnotation == "YES"  # not cleaned: the flag stays
    assert ds.StudyDescription == "US follow-up * *" and "4839201" not in ds.ImageComments
    run_cli("deid", tmp_path / "flagged.dcm", "-o", tmp_path / "c.dcm", "--allow-burned-in", check=True)
    assert not pydicom.dcmread(tmp_path / "c.dcm").get("StudyDescription")  # basic profile: removed
    scan = run_cli("phi-scan", tmp_path / "b.dcm", tmp_path / "c.dcm", "--no-pixels")
    assert scan.returncode == 7 and scan.stdout.split() == [str(tmp_path / "b.dcm"), str(tmp_path / "c.dcm")]  # YES still flagged


def test_without_the_engine_exit_2_with_the_package_to_install(tmp_path):
    from PIL import Image

    Image.fromarray(phantom()).save(tmp_path / "x.png")
    proc = run_cli("deid", tmp_path / "x.png", "-o", tmp_path / "out", "--clean-pixels", "--ocr", "tesseract", env={"MEDTOOLS_TESSERACT": str(tmp_path / "missing")})
    assert proc.returncode == 2 and "tesseract-ocr" in proc.stderr and not (tmp_path / "out").exists()
    unknown = run_cli("deid", tmp_path / "x.png", "-o", tmp_path / "out", "--clean-pixels", "--ocr", "easyocr")
    assert unknown.returncode == 2 and "rapidocr, tesseract" in unknown.stderr
    alone = run_cli("deid", tmp_path / "x.png", "-o", tmp_path / "out", "--ocr", "tesseract")
    assert alone.returncode == 2 and "--clean-pixels" in alone.stderr
    png = run_cli("deid", tmp_path / "x.png", "-o", tmp_path / "out")
    assert png.returncode == 5  # a PNG is only de-identified by cleaning its pixels


REAL_STRINGS = (("GARCIA^MARIA", "corner", 20, 255), ("MRN 5520193", "corner", 16, 230), ("1984-03-12", "anatomy", 18, 200))
REAL_PARTS = ("GARCIA", "MARIA", "5520193", "1984")


@needs_ocr
def test_real_ultrasound_frame_cleaned_anatomy_untouched(tmp_path, shared_data):
    """One HC18 frame (400×270, as stored) with a name and an ID in the black border and a grey
    date on the anatomy: every string is cleaned and unreadable, nothing outside the boxes moves."""
    from PIL import Image, ImageDraw, ImageFont

    source = sorted((shared_data / "hc18_ultrasound" / "images").glob("*.png"))[-1]
    frame = np.asarray(Image.open(source).convert("L"))
    h, w = frame.shape
    pil, ink = Image.fromarray(frame), Image.new("L", (w, h))
    places = {"corner": [(12, 10), (12, 36)], "anatomy": [(w // 2 - 60, h // 2)]}
    for text, where, size, value in REAL_STRINGS:
        font = ImageFont.load_default(size=size)
        xy = places[where].pop(0)
        ImageDraw.Draw(pil).text(xy, text, fill=value, font=font)
        ImageDraw.Draw(ink).text(xy, text, fill=255, font=font)
    image, ink = np.asarray(pil), np.asarray(ink) > 0
    assert read(image, REAL_PARTS) == set(REAL_PARTS)
    pil.save(tmp_path / "us.png")
    record = json.loads(run_cli("deid", tmp_path / "us.png", "-o", tmp_path / "out", "--clean-pixels", "--json", check=True).stdout)
    cleaned = np.asarray(Image.open(record["output"]))
    inside = boxes_mask(record["changes"]["pixel_boxes"], image.shape)
    assert inside[ink].mean() > 0.98
    assert not read(cleaned, REAL_PARTS)
    assert np.array_equal(cleaned[~inside], image[~inside])
    from scipy import ndimage as ndi

    near_text = ndi.binary_dilation(ink, iterations=8)  # the strings and 8 px around them
    assert (inside & ~near_text).mean() < 0.02  # the boxes hold the text, not the anatomy


BORDER_STRINGS = (("DOE^JOHN", (12, 6), 22), ("ID 4839201", (140, 10), 18))


def anatomy_mask(image: np.ndarray) -> np.ndarray:
    """A classical segmentation of the anatomy: above Otsu's threshold, holes filled."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    return ndi.binary_fill_holes(image > threshold_otsu(image))


@needs_ocr
def test_text_in_the_border_cleaned_segmentation_as_without_text(tmp_path):
    """PHI burned into the black border only: the cleaned image segments exactly as the image
    without text did (the uncleaned one does not), and no box reaches the anatomy."""
    from PIL import Image, ImageDraw, ImageFont

    plain = phantom(2)
    pil = Image.fromarray(plain)
    for text, xy, size in BORDER_STRINGS:
        ImageDraw.Draw(pil).text(xy, text, fill=255, font=ImageFont.load_default(size=size))
    image = np.asarray(pil)
    reference = anatomy_mask(plain)
    assert not np.array_equal(anatomy_mask(image), reference)  # the text is segmented as well
    Image.fromarray(image).save(tmp_path / "us.png")
    record = json.loads(run_cli("deid", tmp_path / "us.png", "-o", tmp_path / "out", "--clean-pixels", "--json", check=True).stdout)
    cleaned = np.asarray(Image.open(record["output"]))
    inside = boxes_mask(record["changes"]["pixel_boxes"], image.shape)
    assert inside.any() and not (inside & reference).any()
    assert np.array_equal(anatomy_mask(cleaned), reference)
    assert np.array_equal(cleaned[40:], plain[40:])  # below the border: the phantom's own pixels


# ---------------------------------------------------------------- --fill inpaint


@needs_ocr
def test_inpaint_fill_text_gone_phi_scan_clean_outside_unchanged(tmp_path, burned):
    """--fill inpaint on a PNG and a 3-frame DICOM (text in the middle frame): OCR reads none of
    the strings, phi-scan passes, every pixel outside the boxes is unchanged, the boxes hold
    values from around them (not the black background) within the image's range, and the audit
    (JSON, CSV) and the DICOM header say the boxes were inpainted."""
    from PIL import Image

    image, ink = burned
    plain = phantom(1)
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "scan.png")
    cine = np.stack([plain, image, plain])
    write_dicom(tmp_path / "in" / "cine.dcm", cine)
    proc = run_cli("deid", tmp_path / "in", "-o", tmp_path / "out", "--clean-pixels", "--fill", "inpaint", "--json", "--audit-csv", tmp_path / "audit.csv", check=True)
    records = {json.loads(line)["input"].split("/")[-1]: json.loads(line) for line in proc.stdout.splitlines()}
    assert {r["changes"]["pixel_fill"] for r in records.values()} == {"inpaint"}

    cleaned = np.asarray(Image.open(tmp_path / "out" / "scan.png"))
    inside = boxes_mask(records["scan.png"]["changes"]["pixel_boxes"], image.shape)
    assert inside[ink].mean() > 0.98 and not read(cleaned)
    assert np.array_equal(cleaned[~inside], image[~inside])
    date_box = inside.copy()
    date_box[:100] = date_box[140:] = False  # the box of the date, on the anatomy (values 20..170)
    assert date_box.any() and cleaned[date_box].min() > 0  # filled from the anatomy, no black box
    assert cleaned[date_box].max() < 255  # and not from the white ink

    ds = pydicom.dcmread(tmp_path / "out" / "cine.dcm")
    frames = ds.pixel_array.reshape(cine.shape)
    assert frames.dtype == np.uint16 and ds.BurnedInAnnotation == "NO"
    assert "inpainted" in ds.DeidentificationMethod[1] and "113101" in {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    inside = boxes_mask(records["cine.dcm"]["changes"]["pixel_boxes"], image.shape)
    stored = cine.astype(np.uint16) * 16
    for k in range(3):
        assert np.array_equal(frames[k][~inside], stored[k][~inside])
        assert stored[k][~inside].min() <= frames[k][inside].min() and frames[k][inside].max() <= stored[k][~inside].max()
    assert not read((frames[1] // 16).astype(np.uint8))

    rows = [r for r in csv.DictReader(open(tmp_path / "audit.csv")) if r["what"] == "pixels"]
    assert len(rows) == sum(len(r["changes"]["pixel_boxes"]) for r in records.values())
    assert {r["action"] for r in rows} == {"inpainted (ocr)"}
    scan = run_cli("phi-scan", tmp_path / "out", "--json")
    assert scan.returncode == 0, scan.stdout + scan.stderr
    assert scan.stdout == ""


def test_inpaint_frame_keeps_dtype_range_and_outside():
    """Signed 16-bit, float with NaN outside the box, and RGB: the dtype stays, the filled values
    lie within the known pixels' range, nothing outside the box moves."""
    pytest.importorskip("cv2")
    from medtools.secure.pixels import inpaint_frame

    rng = np.random.default_rng(0)
    box = (20, 10, 40, 25)
    inside = np.zeros((48, 64), bool)
    inside[10:25, 20:40] = True
    ct = rng.integers(-1000, 1500, (48, 64)).astype(np.int16)
    ct[inside] = 3000  # "text": brighter than anything around
    volume = rng.normal(0, 1, (48, 64)).astype(np.float64)
    volume[0, 0] = np.nan
    volume[inside] = 50.0
    rgb = rng.integers(0, 200, (48, 64, 3)).astype(np.uint8)
    rgb[inside] = 255
    for frame in (ct, volume, rgb):
        out = inpaint_frame(frame, [box])
        assert out.dtype == frame.dtype and out.shape == frame.shape
        np.testing.assert_array_equal(out[~inside], frame[~inside])  # NaN included
        known = frame[~inside]
        assert np.nanmin(known) <= out[inside].min() and out[inside].max() <= np.nanmax(known)
    assert np.array_equal(inpaint_frame(ct, [box]), inpaint_frame(ct, [box]))  # deterministic


def test_fill_needs_clean_pixels_and_a_known_value(tmp_path):
    from PIL import Image

    Image.fromarray(phantom()).save(tmp_path / "x.png")
    alone = run_cli("deid", tmp_path / "x.png", "-o", tmp_path / "out", "--fill", "inpaint")
    assert alone.returncode == 2 and "--clean-pixels" in alone.stderr
    unknown = run_cli("deid", tmp_path / "x.png", "-o", tmp_path / "out", "--clean-pixels", "--fill", "blur")
    assert unknown.returncode == 2 and "background | inpaint" in unknown.stderr and not (tmp_path / "out").exists()


@needs_ocr
def test_api_deid_dataset_inpaint(tmp_path, burned):
    """The in-memory entry point takes the same fill and records it."""
    from medtools import api

    image, ink = burned
    write_dicom(tmp_path / "one.dcm", image[None])
    ds = pydicom.dcmread(tmp_path / "one.dcm")
    audit: dict = {}
    api.deid_dataset(ds, clean_pixels=True, fill="inpaint", audit=audit)
    assert audit["pixel_fill"] == "inpaint" and audit["pixel_boxes"]
    assert list(ds.DeidentificationMethod)[1].endswith("inpainted (OpenCV Telea)")
    inside = boxes_mask(audit["pixel_boxes"], image.shape)
    after = ds.pixel_array // 16
    assert np.array_equal(after[~inside], image[~inside]) and not read(after.astype(np.uint8))
