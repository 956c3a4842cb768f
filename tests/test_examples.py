"""The brain-privacy example's result scripts: summarise.py (both layouts) and frontier.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

EXAMPLE = ROOT / "examples" / "brain-privacy"


def _write(path: Path, data: dict | list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, list):
        path.write_text("".join(json.dumps(row) + "\n" for row in data))
    else:
        path.write_text(json.dumps(data))


def _seg(wt: float) -> dict:
    return {"mean": {"WT": {"dice": wt}, "TC": {"dice": wt - 0.1}, "ET": {"dice": wt - 0.2}}}


def _script(name: str, *args: object) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLE / name), *map(str, args)], capture_output=True, text=True, check=True)
    return proc.stdout


def _cross_visit_cell(work: Path, name: str, adaptive: float) -> None:
    _write(work / name / "reid-A.json", {"top1": 0.1, "chance": 0.25})
    _write(work / name / "reid-B.json", {"top1": 0.2})
    _write(work / name / "reid-C.json", {"top1": adaptive})
    _write(work / name / "seg-eval.json", _seg(0.9))
    _write(work / name / "protect-rest.jsonl", [{"case": "a", "psnr": 30.0, "ssim": 0.8, "linf": 0.05}, {"skipped": "b"}])


def test_summarise_and_frontier_average_replicates(tmp_path):
    work = tmp_path / "work"
    _write(work / "raw" / "reid-A.json", {"top1": 0.5, "chance": 0.25})
    _write(work / "raw" / "reid-B.json", {"top1": 0.4})
    _write(work / "raw" / "seg-eval.json", _seg(0.95))
    for seed, top1 in ((2, 0.5), (3, 0.3)):
        _write(work / "raw" / f"reid-C-seed{seed}.json", {"top1": top1})
    for name, adaptive, seed in (("signature-0.05", 0.2, 2), ("signature-0.05-rep1", 0.4, 3), ("signature-0.5", 0.9, 2)):
        _cross_visit_cell(work, name, adaptive)
        _script("summarise.py", "--work", work, "--cell", work / name, "--objective", "signature", "--eps", name.split("-")[1], "--raw-adaptive", work / "raw" / f"reid-C-seed{seed}.json")
    result = json.loads((work / "signature-0.05" / "results.json").read_text())
    assert result["protected"]["adaptive_top1"] == 0.2 and result["cases"] == 1
    assert result["raw"]["dice_regions"] == pytest.approx({"WT": 0.95, "TC": 0.85, "ET": 0.75})
    table = _script("frontier.py", work, "--objectives", "signature", "--epsilons", "0.05 0.1")
    # the two replicates of eps 0.05 are averaged; eps 0.5 is not an eps 0.05 replicate
    assert "| signature | 0.05 | 2 | 0.100 | 0.200 | 0.300 [0.200–0.400] | 0.400 |" in table
    assert "- signature: eps 0.05 (adaptive 0.300" in table
    assert (work / "frontier.png").stat().st_size > 0


def test_summarise_single_exam_layout_has_no_adaptive_attacker(tmp_path):
    cell = tmp_path / "work" / "signature-0.05"
    _write(cell / "raw-reid-A.json", {"top1": 1.0, "chance": 0.5})
    _write(cell / "raw-reid-B.json", {"top1": 1.0})
    _write(cell / "raw-seg-eval.json", _seg(0.5))
    _write(cell / "reid-A.json", {"top1": 0.4})
    _write(cell / "reid-B.json", {"top1": 0.6})
    _write(cell / "seg-eval.json", _seg(0.45))
    _write(cell / "protect.jsonl", [{"case": "x", "psnr": 38.0, "ssim": 0.99, "linf": 0.05}])
    table = _script("summarise.py", "--single-exam", "--print", "--work", cell.parent, "--cell", cell, "--objective", "signature", "--eps", 0.05)
    assert "| protected | 0.400 | 0.600 | – | 0.4500 / 0.3500 / 0.2500 | 38.00 |" in table
    assert json.loads((cell / "results.json").read_text())["protected"]["adaptive_top1"] is None
