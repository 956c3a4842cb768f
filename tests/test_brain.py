"""Brain privacy pipeline on tiny phantoms (CPU, seconds per step): train, segment, evaluate,
attack, protect — through the real CLI, checking stdout, exit codes and files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from medtools.core.io import read_image
from medtools.core.preprocess import normalise_intensity

SEG_FLAGS = ["--encoder", "resnet18", "--size", "64", "--epochs", "4", "--steps-per-epoch", "10", "-b", "8", "--modalities", "flair,t1ce", "-q"]
REID_FLAGS = ["--size", "64", "--epochs", "5", "--steps-per-epoch", "20", "-b", "16", "--modalities", "flair,t1ce", "-q"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, brain_phantom):
    """Manifest, a segmenter and an attacker trained once for the module."""
    work = tmp_path_factory.mktemp("brain-work")
    run_cli("manifest", brain_phantom, "-o", work / "cases.csv", check=True)
    run_cli("seg-train", work / "cases.csv", "-o", work / "seg.safetensors", *SEG_FLAGS, check=True)
    run_cli("reid-train", work / "cases.csv", "-o", work / "reid.safetensors", *REID_FLAGS, check=True)
    return work


def _visit_manifest(work: Path, visit: str) -> Path:
    lines = (work / "cases.csv").read_text().splitlines()
    target = work / f"cases_{visit}.csv"
    target.write_text("\n".join([lines[0]] + [l for l in lines[1:] if l.split(",")[2] == visit]) + "\n")
    return target


def test_seg_train_beats_all_background(trained, tmp_path):
    proc = run_cli("segment", trained / "cases.csv", "-m", trained / "seg.safetensors", "-o", tmp_path / "pred", check=True)
    written = proc.stdout.split()
    assert len(written) == 8 and all(Path(p).exists() for p in written)
    scores = json.loads(run_cli("seg-eval", tmp_path / "pred", trained / "cases.csv", "--no-hd95", "--json", check=True).stdout)
    # an all-background model scores Dice 0 on whole tumor; a few seconds of training must beat it clearly
    assert scores["mean"]["WT"]["dice"] > 0.3
    assert scores["mean"]["WT"]["cases"] == 8


def test_segment_keeps_geometry_and_skips_existing(trained, brain_phantom, tmp_path):
    case = sorted(brain_phantom.iterdir())[0]
    out = tmp_path / "pred"
    first = run_cli("segment", case, "-m", trained / "seg.safetensors", "-o", out, check=True)
    pred_path = Path(first.stdout.split()[0])
    pred, source = read_image(pred_path), read_image(next(case.glob("*_flair.nii.gz")))
    assert pred.array.shape == source.array.shape
    np.testing.assert_allclose(pred.affine, source.affine)
    assert pred.array.dtype == np.uint8 and set(np.unique(pred.array)) <= {0, 1, 2, 4}
    again = run_cli("segment", case, "-m", trained / "seg.safetensors", "-o", out)
    assert again.returncode == 0 and again.stdout == ""  # existing output skipped, batch resumes


def test_segment_pipeline_through_stdin(trained, brain_phantom, tmp_path):
    cases = "\n".join(str(p) for p in sorted(brain_phantom.iterdir())[:2]) + "\n"
    proc = run_cli("segment", "-", "-m", trained / "seg.safetensors", "-o", tmp_path / "out", "--json", input=cases, check=True)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len([r for r in records if "outputs" in r]) == 2
    assert records[-1]["summary"] == {"ok": 2, "failed": 0, "skipped": 0}
    assert records[-1]["run"]["checkpoints"]


def test_wrong_modality_count_and_wrong_kind(trained, brain_phantom, tmp_path):
    single = next(brain_phantom.glob("*/*_flair.nii.gz"))
    proc = run_cli("segment", single, "-m", trained / "seg.safetensors", "-o", tmp_path)
    assert proc.returncode == 5  # the only item failed: nothing usable
    assert "flair, t1ce" in proc.stderr
    wrong = run_cli("segment", single, "-m", trained / "reid.safetensors", "-o", tmp_path)
    assert wrong.returncode == 3 and "expected a seg checkpoint" in wrong.stderr
    missing = run_cli("segment", single, "-m", tmp_path / "nope.safetensors", "-o", tmp_path)
    assert missing.returncode == 3


def test_reid_across_visits_beats_chance(trained):
    result = json.loads(run_cli("reid-eval", _visit_manifest(trained, "v2"), "-m", trained / "reid.safetensors", "--json", check=True).stdout)
    assert result["chance"] == 0.25
    assert result["top1"] >= 0.45  # trained on visit 1 only, tested on visit 2


def test_protect_blinds_whitebox_and_respects_eps(trained, brain_phantom, tmp_path):
    v1 = _visit_manifest(trained, "v1")
    raw = json.loads(run_cli("reid-eval", v1, "-m", trained / "reid.safetensors", "--json", check=True).stdout)["top1"]
    out = tmp_path / "protected"
    proc = run_cli("protect", v1, "--attacker", trained / "reid.safetensors", "--utility", trained / "seg.safetensors", "--eps", "0.05", "--steps", "5", "-o", out, "--json", check=True)
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len([r for r in records if "case" in r]) == 4
    # re-read from disk: a manifest of the protected files, same patients and cases
    run_cli("manifest", out, "-o", tmp_path / "protected.csv", check=True)
    protected = json.loads(run_cli("reid-eval", tmp_path / "protected.csv", "-m", trained / "reid.safetensors", "--json", check=True).stdout)["top1"]
    assert protected < raw - 0.3, (raw, protected)
    for path in out.glob("*/*.nii.gz"):
        source = brain_phantom / path.parent.name / path.name
        before, after = read_image(source), read_image(path)
        assert after.array.dtype == before.array.dtype
        np.testing.assert_allclose(after.affine, before.affine)
        _, window = normalise_intensity(before.array.astype(np.float32))
        budget = 0.05 * (window["high"] - window["low"])
        linf = np.abs(after.array.astype(np.float64) - before.array.astype(np.float64)).max()
        assert 0 < linf <= budget + 1e-6
    again = run_cli("protect", v1, "--attacker", trained / "reid.safetensors", "-o", out)
    assert again.returncode == 0 and again.stdout == ""


def test_protect_keeps_segmentation_better_than_random_noise(trained, brain_phantom):
    import torch

    from medtools.brain.cases import resolve_cases, load_case
    from medtools.brain.pgd import load_attackers, pgd_delta
    from medtools.brain.segment import load_segmenter

    seg = load_segmenter(trained / "seg.safetensors", device="cpu")
    attacker = load_attackers([trained / "reid.safetensors"], torch.device("cpu"))[0]
    case = resolve_cases([str(sorted(brain_phantom.iterdir())[0])])[0]
    slices = load_case(case, ["flair", "t1ce"], seg.norm).slices
    x = torch.from_numpy(slices)
    eps = 0.05
    delta = pgd_delta(x, [(attacker, [0, 1])], eps=eps, steps=5, step_size=0.0125, objective="untargeted", identity=[None], utility=(seg, [0, 1]), utility_weight=1.0, generator=torch.Generator().manual_seed(0))
    random = eps * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    clean = seg.predict(slices, softmax=True)

    def output_change(perturbed: torch.Tensor) -> float:
        """Mean KL(seg(clean) || seg(perturbed)) per pixel: how much the segmentation output moved."""
        p = seg.predict(perturbed.numpy(), softmax=True)
        return float(np.mean(np.sum(clean * (np.log(clean + 1e-8) - np.log(p + 1e-8)), axis=1)))

    assert float(delta.abs().max()) <= eps + 1e-6
    assert output_change(x + delta) < output_change(x + random)


def test_signature_objective_misleads_an_adaptive_attacker(trained, tmp_path):
    """An attacker retrained on signature-protected first visits does worse on protected second
    visits than the raw attacker across visits: it learnt the first visits' secret patterns."""
    from medtools.brain.pgd import case_decoy, signature_pattern

    key = tmp_path / "key"
    key.write_bytes(b"a secret of this release")
    key.chmod(0o644)
    refused = run_cli("protect", _visit_manifest(trained, "v1"), "--attacker", trained / "reid.safetensors", "--objective", "signature", "--key-file", key, "-o", tmp_path / "refused", "-q")
    assert refused.returncode == 2 and "chmod 600" in refused.stderr and not (tmp_path / "refused").exists()
    key.chmod(0o600)
    manifests = {}
    for visit in ("v1", "v2"):
        out = tmp_path / f"protected-{visit}"
        run_cli("protect", _visit_manifest(trained, visit), "--attacker", trained / "reid.safetensors", "--objective", "signature", "--key-file", key, "--eps", "0.05", "--steps", "3", "-o", out, "-q", check=True)
        manifests[visit] = tmp_path / f"protected-{visit}.csv"
        run_cli("manifest", out, "-o", manifests[visit], check=True)
    # the decoy is secret (keyed), per case, never the true identity; the pattern is keyed per case
    assert {case_decoy(b"k", f"case{i}", 2, 4) for i in range(40)} == {0, 1, 3}
    np.testing.assert_array_equal(signature_pattern(b"k", "P1-v1", 2, 16, 16, 0.1), signature_pattern(b"k", "P1-v1", 2, 16, 16, 0.1))
    assert not np.array_equal(signature_pattern(b"k", "P1-v1", 2, 16, 16, 0.1), signature_pattern(b"k", "P1-v2", 2, 16, 16, 0.1))
    assert not np.array_equal(signature_pattern(b"k", "P1-v1", 2, 16, 16, 0.1), signature_pattern(b"j", "P1-v1", 2, 16, 16, 0.1))
    assert np.abs(signature_pattern(b"k", "P1", 1, 16, 16, 0.1)).max() == pytest.approx(0.1)
    raw = json.loads(run_cli("reid-eval", _visit_manifest(trained, "v2"), "-m", trained / "reid.safetensors", "--json", check=True).stdout)["top1"]
    run_cli("reid-train", manifests["v1"], "-o", tmp_path / "adaptive.safetensors", "--val-fraction", "0", "--seed", "2", *REID_FLAGS, check=True)
    adaptive = json.loads(run_cli("reid-eval", manifests["v2"], "-m", tmp_path / "adaptive.safetensors", "--json", check=True).stdout)["top1"]
    assert adaptive < raw, (raw, adaptive)  # 4 patients, 3 PGD steps; 6-patient numbers with replicates: docs/results.md


def test_predictor_resizes_maps_back_but_not_class_logits(tmp_path):
    """protect on 256² slices with a 128² attacker: class logits come back untouched, maps at the input size."""
    import torch

    from medtools.core import ckpt
    from medtools.core.predict import Predictor
    from medtools.core.registry import get

    shapes = {}
    for kind in ("reid", "seg"):
        config = dict(get(kind).tiny[1])
        net = ckpt.new_model(kind, config)
        path = ckpt.save(tmp_path / f"{kind}.safetensors", net.state_dict(), kind=kind, config=config)
        shapes[kind] = tuple(Predictor(path, device="cpu").forward(torch.rand(3, config["in_channels"], 48, 48)).shape)
    assert shapes == {"reid": (3, 2), "seg": (3, 4, 48, 48)}
