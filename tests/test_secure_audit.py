"""cipher-audit: Wu et al. bounds, the CLI report with plots, and the block method's honest numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from medtools.secure import audit


def test_wu_bounds_match_the_published_256x256_values():
    bounds = audit.wu_bounds(8, 256 * 256)
    assert bounds["npcr_min"] == pytest.approx(99.5693, abs=1e-4)
    assert bounds["uaci_low"] == pytest.approx(33.2824, abs=1e-4)
    assert bounds["uaci_high"] == pytest.approx(33.6447, abs=1e-4)
    assert audit.ideal(8) == pytest.approx({"npcr": 99.609375, "uaci": 33.463542}, abs=1e-5)
    assert audit.expected_entropy(8, 256 * 256) == pytest.approx(7.99719, abs=1e-5)
    rng = np.random.default_rng(3)
    measured = [audit.entropy(rng.integers(0, 256, 256 * 256)) for _ in range(20)]
    assert np.mean(measured) == pytest.approx(audit.expected_entropy(8, 256 * 256), abs=2e-4)


def test_statistics_on_known_inputs():
    flat = np.arange(256, dtype=np.uint8).repeat(4).reshape(32, 32)
    assert audit.entropy(flat) == pytest.approx(8.0)
    assert audit.chi_square(flat, 8)["statistic"] == pytest.approx(0.0)
    assert audit.npcr_uaci(np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8), 8) == (100.0, 100.0)
    ramp = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    assert all(v > 0.99 for v in audit.correlations(ramp).values())


@pytest.fixture()
def phantom_and_key(tmp_path):
    from medtools.core.io import Image, write_image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:256, 0:256]
    image = np.clip(128 + 60 * np.sin(x / 20) + 50 * np.cos(y / 30) + rng.normal(0, 4, (256, 256)), 0, 255).astype(np.uint8)
    plain = write_image(Image(image, format="png", meta={"bits": 8}), tmp_path / "phantom.png")
    other = write_image(Image(image[::-1, ::-1].copy(), format="png", meta={"bits": 8}), tmp_path / "other.png")
    key = tmp_path / "k.key"
    run_cli("keys", "gen-key", key, check=True)
    return plain, other, key


def test_cli_audit_of_logistic_sine_with_plots(tmp_path, phantom_and_key):
    plain, _, key = phantom_and_key
    cipher_dir = tmp_path / "enc"
    cipher = run_cli("encrypt", plain, "-o", cipher_dir, "--method", "logistic-sine", "--key", key, check=True).stdout.strip()
    proc = run_cli("cipher-audit", plain, cipher, "--method", "logistic-sine", "--key", key, "--plots", tmp_path / "plots", "--json", check=True)
    result = json.loads(proc.stdout)
    assert result["cipher_matches_key"] is True
    assert abs(result["npcr"]["mean"] - 99.61) < 0.1 and abs(result["uaci"]["mean"] - 33.46) < 0.1
    assert result["entropy"]["cipher"] > 7.996
    assert all(abs(v) < 0.02 for v in result["correlation"]["cipher"].values())
    assert all(row["npcr"] > 99.0 for row in result["key_sensitivity"]["encrypt_with_flipped_key"])
    assert all(row["npcr"] > 99.0 for row in result["key_sensitivity"]["decrypt_with_flipped_key"])
    assert len(result["plots"]) == 2
    for path in result["plots"]:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    text = run_cli("cipher-audit", plain, "--method", "logistic-sine", "--key", key, "--trials", "2", check=True).stdout
    assert "NPCR" in text and "UACI" in text and "entropy" in text


def test_cli_audit_reports_what_block_does_not_achieve(tmp_path, phantom_and_key):
    plain, other, key = phantom_and_key
    proc = run_cli("cipher-audit", plain, "--method", "block", "--key", key, "--known-plaintext", other, "--trials", "3", "--json", check=True)
    result = json.loads(proc.stdout)
    assert result["npcr"]["mean"] < 0.01  # one pixel in, one pixel out
    assert result["npcr"]["trials_passing"] == 0
    assert result["chi_square"]["cipher"]["uniform"] is False
    assert result["known_plaintext_attack"]["pixels_recovered_pct"] > 99.0
    wrong = run_cli("cipher-audit", plain, other, "--method", "block", "--key", key, "--trials", "1", "--json")
    assert wrong.returncode == 0 and json.loads(wrong.stdout)["cipher_matches_key"] is False and "not" in wrong.stderr
