"""Segmentation under attack (issue 19, robustness): FGSM/PGD on the segmenter's inputs
(brain/robust.py), ``seg-eval --attack`` and the adversarial batches of ``seg-train --adv-train``,
on a tiny segmenter trained once on the brain phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def seg(tmp_path_factory, brain_phantom):
    """A two-modality segmenter (resnet18, 64²) trained for a few seconds on all 8 cases; a manifest of 2 of them."""
    from medtools.brain.segment import train_segmenter
    from medtools.core.manifest import discover, to_csv

    work = tmp_path_factory.mktemp("robust")
    rows = discover([brain_phantom])
    (work / "cases.csv").write_text(to_csv(rows))
    (work / "test.csv").write_text(to_csv([r for r in rows if r["visit"] == rows[0]["visit"]][:2]))
    torch.set_num_threads(1)
    train_segmenter(work / "cases.csv", work / "seg.safetensors", modalities=["flair", "t1ce"], encoder="resnet18", size=48, epochs=3, batch_size=8, steps_per_epoch=8, val_fraction=0.0, device="cpu")
    return work


def _slices(seg_dir: Path):
    """(predictor, slices, class-index labels) of the first test case."""
    from medtools.brain.cases import resolve_cases, load_case
    from medtools.brain.robust import _class_labels
    from medtools.core.predict import Predictor
    from medtools.core.preprocess import volume_to_slices

    predictor = Predictor(seg_dir / "seg.safetensors", kind="seg", device="cpu", precision="fp32")
    case = resolve_cases([str(seg_dir / "test.csv")])[0]
    loaded = load_case(case, predictor.modalities, predictor.norm, with_label=True)
    return predictor, loaded.slices, volume_to_slices(_class_labels(predictor, loaded.label))


def test_attack_curve_cli_eps0_is_clean_dice_and_attacks_lower_it(seg, tmp_path):
    from medtools.brain.cases import resolve_cases
    from medtools.brain.evaluate import evaluate_pair
    from medtools.brain.segment import segment_cases

    # clean Dice through the ordinary path (segment + seg-eval's scoring), in-process
    cases = resolve_cases([str(seg / "test.csv")])
    clean = []
    for case, written in segment_cases(cases, seg / "seg.safetensors", tmp_path / "pred", device="cpu", workers=0):
        clean.append(evaluate_pair(written[0], case.label, with_hd95=False)["WT"]["dice"])
    proc = run_cli("seg-eval", seg / "test.csv", "-m", seg / "seg.safetensors", "--attack", "fgsm", "--eps", "0.1,0", "--json", "-q", check=True)
    result = json.loads(proc.stdout)
    assert result["eps"] == [0.0, 0.1] and result["attack"] == "fgsm" and result["steps"] == 1
    wt = result["dice"]["WT"]
    assert wt[0] == pytest.approx(float(np.mean(clean)), abs=1e-9)
    assert wt[0] > 0.3, "the tiny model must segment something for the attack to matter"
    assert wt[1] < wt[0] - 0.05
    assert set(result["cases"]) == {c.case for c in cases} and result["run"]["checkpoints"]
    # a usage error without the model (in-process: one CLI start is enough)
    from medtools.brain.jobs import seg_eval_attack
    from medtools.core.errors import UsageError

    with pytest.raises(UsageError):
        seg_eval_attack(seg / "test.csv", None, attack="fgsm", model=None, eps="0", steps=None, step_size=None, batch_size=None, device="cpu", seed=0)


def test_perturbations_respect_budget_and_pgd_beats_fgsm(seg):
    from medtools.brain.robust import dice_curve, perturb, seg_loss

    predictor, slices, labels = _slices(seg)
    x, y = torch.from_numpy(slices[:6]), torch.from_numpy(labels[:6]).long()
    assert torch.equal(perturb(predictor.forward, x, y, attack="fgsm", eps=0.0), x)
    losses = {}
    for attack in ("noise", "fgsm", "pgd"):
        adv = perturb(predictor.forward, x, y, attack=attack, eps=0.03, generator=torch.Generator().manual_seed(0))
        assert float((adv - x).abs().max()) <= 0.03 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        with torch.no_grad():
            losses[attack] = float(seg_loss(predictor.forward(adv), y))
    with torch.no_grad():
        clean_loss = float(seg_loss(predictor.forward(x), y))
    assert clean_loss < losses["fgsm"] <= losses["pgd"] + 1e-3
    assert losses["noise"] < losses["fgsm"], "random signs of the same size must hurt less than the gradient's"
    curve = dice_curve(predictor, slices, labels, attack="pgd", eps=[0.05, 0.0], steps=3, batch_size=8)
    assert curve["eps"] == [0.0, 0.05] and curve["dice"][1] < curve["dice"][0]


def test_adversarial_batch_perturbs_the_chosen_fraction(seg):
    from medtools.brain.robust import adversarial_batch
    from medtools.core.ckpt import load_model

    _, net = load_model(seg / "seg.safetensors", kind="seg")
    net.train()
    predictor_free_slices = _slices(seg)
    images = torch.from_numpy(predictor_free_slices[1][:8]).float()
    labels = torch.from_numpy(predictor_free_slices[2][:8]).long()
    for fraction, expected in ((0.25, 2), (0.5, 4), (1.0, 8), (0.0, 0)):
        out = adversarial_batch(net, images, labels, fraction, 0.02, 2, generator=torch.Generator().manual_seed(1))
        changed = (out != images).flatten(1).any(1)
        assert int(changed.sum()) == expected
        assert float((out - images).abs().max()) <= 0.02 + 1e-6
        assert net.training and all(p.grad is None for p in net.parameters())


def test_adv_settings_and_eps_parsing():
    from medtools.brain.robust import adv_settings, parse_eps
    from medtools.core.errors import UsageError

    assert adv_settings(0.0, None) is None
    assert adv_settings(0.5, 0.02) == {"fraction": 0.5, "eps": 0.02, "steps": 3, "step_size": pytest.approx(0.02 * 2.5 / 3), "attack": "pgd"}
    for bad in ((1.5, 0.02, 3), (0.5, None, 3), (0.5, 0.02, 0)):
        with pytest.raises(UsageError):
            adv_settings(*bad)
    assert parse_eps("0.02, 0,0.01,0.02") == [0.0, 0.01, 0.02]
    for bad in ("x", "-0.1", "", "2"):
        with pytest.raises(UsageError):
            parse_eps(bad)


def test_seg_train_adv_train_perturbs_the_fraction_of_every_batch_and_records_it(seg, monkeypatch, tmp_path):
    import medtools.brain.robust as robust
    from medtools.brain.segment import train_segmenter
    from medtools.core.ckpt import load

    real, counts = robust.adversarial_batch, []

    def counting(net, images, labels, fraction, eps, steps, **kw):
        out = real(net, images, labels, fraction, eps, steps, **kw)
        counts.append((len(images), int((out != images).flatten(1).any(1).sum()), float((out - images).abs().max())))
        return out

    monkeypatch.setattr(robust, "adversarial_batch", counting)
    result = train_segmenter(seg / "test.csv", tmp_path / "adv.safetensors", modalities=["flair", "t1ce"], encoder="resnet18", size=32, epochs=1, batch_size=8, steps_per_epoch=3, val_fraction=0.0, device="cpu", adv_train=0.25, adv_eps=0.02, adv_steps=1)
    assert [(n, changed) for n, changed, _ in counts] == [(8, 2)] * 3
    assert max(linf for *_, linf in counts) <= 0.02 + 1e-6
    recorded = load(tmp_path / "adv.safetensors", tensors=False).provenance["recipe"]["adv_train"]
    assert recorded == result["recipe"]["adv_train"] == {"fraction": 0.25, "eps": 0.02, "steps": 1, "step_size": 0.05, "attack": "pgd"}
