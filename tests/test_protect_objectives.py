"""protect's error-minimising objectives (minmin, minminmax), their scheme-aware attacker
(aware:case), and NIH chest X-ray names in the manifest (issue 18)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtools.core.manifest import discover


def _png(path: Path, value: int = 100) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def test_nih_names_give_patient_and_follow_up_outside_the_source_folder(tmp_path: Path) -> None:
    # a protected copy: NIH file names, class folders, but no NIH manifest.csv next to them
    for name in ("00000001_000", "00000001_002", "00000013_005"):
        _png(tmp_path / "copy" / "NORMAL" / f"{name}.png")
    _png(tmp_path / "copy" / "ABNORMAL" / "person7_virus_1.png")
    rows = {r["case"]: r for r in discover([tmp_path / "copy"])}
    assert (rows["00000001_000"]["patient"], rows["00000001_000"]["visit"]) == ("00000001", "000")
    assert (rows["00000001_002"]["patient"], rows["00000001_002"]["visit"]) == ("00000001", "002")
    assert rows["00000013_005"]["patient"] == "00000013"
    assert (rows["person7_virus_1"]["patient"], rows["person7_virus_1"]["visit"]) == ("person7", "")
