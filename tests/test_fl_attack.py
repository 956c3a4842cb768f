"""fl-attack: gradient inversion of one site's update, plain and DP (tiny model, seeded)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli


def _phantom() -> np.ndarray:
    """A 32×32 8-bit 'scan': a bright ellipse with a dark inclusion on a gradient background."""
    yy, xx = np.mgrid[:32, :32] / 32.0
    ellipse = (xx - 0.5) ** 2 + 1.5 * (yy - 0.45) ** 2 < 0.1
    inclusion = (xx - 0.6) ** 2 + (yy - 0.5) ** 2 < 0.02
    return np.clip(np.rint(255 * (0.25 + 0.5 * ellipse - 0.2 * inclusion + 0.15 * xx)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def phantom_png(tmp_path_factory):
    from medtools.core.io import Image, write_image

    folder = tmp_path_factory.mktemp("fl-attack-in")
    return write_image(Image(_phantom(), format="png"), folder / "scan.png")


@pytest.fixture(scope="module")
def attacked(phantom_png):
    """Plain and DP (ε = 8) attacks on the phantom with the small CNN (seeded)."""
    from medtools import api

    return api.fl_attack(phantom_png, kind="cls", arch="lenet", size=32, steps=300, dp_epsilon=8.0, seed=0)


def test_plain_update_leaks_dp_update_does_not(attacked):
    images, record = attacked
    plain, dp, start = record["plain"], record["dp"], record["baseline"]
    assert images["plain"].shape == images["dp"].shape == (32, 32)
    # the plain update gives the image back; the DP one no better than the random start
    assert plain["ssim"] > dp["ssim"] + 0.3, record
    assert plain["ssim"] > start["ssim"] + 0.3, record
    assert plain["psnr"] > dp["psnr"] + 5, record
    assert plain["label_used"] == plain["label_true"]  # iDLG reads the label off the plain update


def test_dp_noise_is_calibrated_by_the_accountant(attacked):
    _, record = attacked
    dp = record["dp"]["dp"]
    assert dp["library"] == "opacus" and dp["accountant"] == "rdp"
    assert dp["epsilon"] == pytest.approx(8.0, abs=0.05)  # what the RDP accountant spends for σ
    assert dp["noise_multiplier"] > 0.3
    assert record["plain"]["dp"] is None


def test_seeded_runs_are_bit_identical(phantom_png):
    from medtools import api

    first = api.fl_attack(phantom_png, arch="lenet", steps=5, dp_epsilon=4.0, seed=3)
    second = api.fl_attack(phantom_png, arch="lenet", steps=5, dp_epsilon=4.0, seed=3)
    other = api.fl_attack(phantom_png, arch="lenet", steps=5, dp_epsilon=4.0, seed=4)
    for arm in ("plain", "dp"):
        assert np.array_equal(first[0][arm], second[0][arm])
        assert not np.array_equal(first[0][arm], other[0][arm])


def test_label_is_inferred_from_the_update(phantom_png):
    from medtools import api
    from medtools.fl.attack import AttackSettings

    _, record = api.fl_attack(phantom_png, arch="lenet", settings=AttackSettings(steps=1, extra={"label": 1}))
    assert record["plain"]["label_true"] == 1 and record["plain"]["label_used"] == 1


def test_checkpoint_with_batchnorm_is_attacked_as_groupnorm(phantom_png, tmp_path):
    """A cls checkpoint (BatchNorm) runs; both arms use the GroupNorm model Opacus can train."""
    import torch

    from medtools import api
    from medtools.core import ckpt, registry

    config = dict(registry.get("cls").tiny[0])
    torch.manual_seed(0)
    model = ckpt.new_model("cls", config)
    path = ckpt.save(tmp_path / "cls.safetensors", model.state_dict(), kind="cls", config=config, norm={"method": "unit"})
    images, record = api.fl_attack(phantom_png, path, steps=2, dp_epsilon=8.0)
    assert images["plain"].shape == (32, 32)
    from medtools.fl.attack import prepare_model

    target = prepare_model(path)
    assert "BatchNorm2d->GroupNorm" in target.description["layers_replaced"]
    assert target.description["sha256"] and target.size == 32
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in target.model.modules())


def test_segmenter_with_known_mask(phantom_png):
    from medtools import api
    from medtools.core.io import Image

    mask = Image(((_phantom() > 150) * 255).astype(np.uint8), format="png")
    images, record = api.fl_attack(phantom_png, kind="seg", mask=mask, steps=2, labels="known")
    assert record["plain"]["mask"] == "known" and images["plain"].shape == (32, 32)
    _, record = api.fl_attack(phantom_png, kind="seg", mask=mask, steps=2)  # the attacker optimises the mask too
    assert record["plain"]["mask"] == "optimised"
    with pytest.raises(Exception, match="mask"):
        api.fl_attack(phantom_png, kind="seg", steps=1)


def test_cli_writes_pngs_and_json_lines(phantom_png, tmp_path):
    from medtools.core.io import read_image

    out = tmp_path / "out"
    proc = run_cli("fl-attack", phantom_png, "-o", out, "--steps", "20", "--dp-epsilon", "8", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 1
    record = lines[0]
    assert sorted(p.rsplit("/", 1)[1] for p in record["outputs"]) == ["scan_dp.png", "scan_plain.png"]
    for arm in ("plain", "dp", "baseline"):
        assert {"psnr", "ssim"} <= set(record[arm])
    assert record["dp"]["dp"]["target_epsilon"] == 8.0 and record["settings"]["steps"] == 20
    written = read_image(out / "scan_plain.png")
    assert written.array.shape == (32, 32) and written.array.dtype == np.uint8
    # without --json: the written paths; a rerun skips what exists
    again = run_cli("fl-attack", phantom_png, "-o", out, "--steps", "20")
    assert again.returncode == 0 and again.stdout == ""
    plain = run_cli("fl-attack", phantom_png, "-o", tmp_path / "plain", "--steps", "2")
    assert plain.returncode == 0 and plain.stdout.strip() == str(tmp_path / "plain" / "scan_plain.png")


def test_cli_errors_leave_no_output(phantom_png, tmp_path):
    out = tmp_path / "out"
    missing = run_cli("fl-attack", tmp_path / "nope.png", "-o", out, "--steps", "1")
    assert missing.returncode == 5 and "nope.png" in missing.stderr
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"not a checkpoint")
    bad_model = run_cli("fl-attack", phantom_png, "-m", corrupt, "-o", out, "--steps", "1")
    assert bad_model.returncode == 3, bad_model.stderr
    bad_eps = run_cli("fl-attack", phantom_png, "-o", out, "--dp-epsilon", "-1")
    assert bad_eps.returncode == 2 and "--dp-epsilon" in bad_eps.stderr
    no_mask = run_cli("fl-attack", phantom_png, "-o", out, "--kind", "seg", "--steps", "1")
    assert no_mask.returncode == 2 and "--mask" in no_mask.stderr
    no_output = run_cli("fl-attack", phantom_png, "--steps", "1")
    assert no_output.returncode == 2
    assert not out.exists()
