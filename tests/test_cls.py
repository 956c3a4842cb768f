"""cls family: one CLI pipeline (slices → cls-train → classify → cls-eval) plus unit tests of the
cipher side (attacks, augmentation that commutes with the block cipher, key fingerprint)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from medtools.cls import attack, cipher
from medtools.core import metrics
from medtools.core.errors import IntegrityError, UsageError
from medtools.imagecipher import block, chaos
from medtools.imagecipher.keyfile import key_id

KEY = bytes(range(32))
# OpenMP's spin-waiting makes torch subprocesses 10× slower on an oversubscribed CPU
ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
OTHER_KEY = bytes(range(1, 33))


def smooth_images(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Dark background with bright smooth blobs (MRI-like statistics), 8-bit."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.35)
        head = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * r**2)))
        texture = 0.3 * np.sin(rng.uniform(3, 8) * x + rng.uniform(0, 6)) * np.cos(rng.uniform(3, 8) * y)
        image = np.clip(200 * head * (1 + texture) + rng.normal(0, 2, head.shape), 0, 255)
        out.append(image.astype(np.uint8))
    return out


# ----------------------------------------------------------------------------- unit tests


def test_known_plaintext_recovers_block_images_exactly_and_fails_on_logistic_sine():
    plains = smooth_images(5, 32, seed=1)
    ciphers = [block.encrypt(p, KEY, 8, 8) for p in plains]
    result = attack.known_plaintext(plains, ciphers, "block", 8)
    assert result["block_transform"]["exact_fraction"] == 1.0
    chaotic = [chaos.encrypt(p, KEY, 8) for p in plains]
    result = attack.known_plaintext(plains, chaotic, "logistic-sine", 8)
    for name in ("block_transform", "keystream"):
        assert result[name]["exact_fraction"] == 0.0
        assert result[name]["pixel_accuracy"] < 0.05  # chance is 1/256 per pixel


def test_ciphertext_only_attack_undoes_most_of_the_block_cipher():
    plains = smooth_images(40, 32, seed=2)
    ciphers = [block.encrypt(p, KEY, 8, 4) for p in plains]
    source, negated = attack.ciphertext_only(ciphers, 4, trials=2000)
    true_source, true_negative, _ = block.transform(KEY, 4, 1)
    assert np.mean(negated == true_negative[:, 0]) == 1.0
    recovered = [block.apply_recovered(c, source, negated, 8, 4) for c in ciphers]
    got = attack._summary(plains, recovered)
    baseline = attack._summary(plains, ciphers)
    assert got["ssim_mean"] > baseline["ssim_mean"] + 0.3
    assert np.mean(source == true_source) > 0.5


def test_block_aligned_augmentation_commutes_with_the_block_cipher_only():
    rng = np.random.default_rng(3)
    plain = smooth_images(1, 32, seed=3)[0]
    moves = [(1, -1, True), (0, 1, False), (-1, 0, True)]
    for move in moves:
        assert np.array_equal(block.encrypt(cipher.apply_moves(plain, move, 8), KEY, 8, 8), cipher.apply_moves(block.encrypt(plain, KEY, 8, 8), move, 8))
    # the random draw is one of these moves and a real change of the image
    augmented = cipher.augment(plain, rng, 8, flip=1.0)
    assert not np.array_equal(augmented, plain)
    # a test that can fail: a pixel-level mirror does not commute, nor does logistic-sine
    mirrored = plain[:, ::-1]
    assert not np.array_equal(block.encrypt(np.ascontiguousarray(mirrored), KEY, 8, 8), block.encrypt(plain, KEY, 8, 8)[:, ::-1])
    move = (0, 1, False)
    assert not np.array_equal(chaos.encrypt(cipher.apply_moves(plain, move, 8), KEY, 8), cipher.apply_moves(chaos.encrypt(plain, KEY, 8), move, 8))


def test_key_check_from_a_checkpoint_config():
    enc = cipher.Encryption("block", KEY, 8)
    config = enc.config()
    assert config == {"encryption": "block", "block_size": 8, "key_id": key_id(KEY)}
    assert cipher.from_config(config, KEY).key == KEY
    assert cipher.from_config(config, None) is None  # cipher images used as they are
    with pytest.raises(IntegrityError):
        cipher.from_config(config, OTHER_KEY)
    with pytest.raises(UsageError):
        cipher.from_config({"encryption": "none"}, KEY)
    with pytest.raises(UsageError):
        cipher.Encryption("block", None)


def test_metrics_and_patient_bootstrap():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.2, 0.8]])
    truth = ["NoTumor", "NoTumor", "NoTumor", "Tumor", "Tumor", "Tumor"]
    result = metrics.evaluate(truth, probs, ["NoTumor", "Tumor"], patients=["a", "a", "b", "b", "c", "c"], bootstrap=200)
    assert result["positive"] == "Tumor"
    assert result["confusion_matrix"] == [[2, 1], [1, 2]]
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["sensitivity"] == pytest.approx(2 / 3) and result["specificity"] == pytest.approx(2 / 3)
    assert result["auc"] == pytest.approx(8 / 9)
    low, high = result["ci95"]["accuracy"]
    assert low <= result["accuracy"] <= high and result["bootstrap"]["unit"] == "patient"
    assert metrics.positive_class(["ABNORMAL", "NORMAL"]) == "ABNORMAL"


# ----------------------------------------------------------------------------- one CLI pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Phantom volumes → slices → block-encrypted cls-train (tiny) → its outputs."""
    from medtools.phantom.generate import write_brain_phantoms

    root = tmp_path_factory.mktemp("cls")
    write_brain_phantoms(root / "train", patients=4, visits=1, size=32, slices=12, seed=0)
    write_brain_phantoms(root / "test", patients=3, visits=1, size=32, slices=12, seed=7)
    key, other = root / "k.key", root / "other.key"
    key.write_text(KEY.hex() + "\n")
    other.write_text(OTHER_KEY.hex() + "\n")
    key.chmod(0o600)  # `encrypt` refuses key files open to others
    other.chmod(0o600)
    run_cli("slices", root / "train", "-o", root / "sl", "-q", env=ENV, check=True)
    run_cli("slices", root / "test", "-o", root / "sl-test", "-q", env=ENV, check=True)
    train = run_cli("cls-train", root / "sl", "-o", root / "cls.safetensors", "--arch", "resnet10t", "--size", "32", "--block-size", "8",
                    "--encryption", "block", "--key", key, "--epochs", "3", "--val-fraction", "0.25", "--json", "-q", env=ENV, check=True)
    return {"root": root, "key": key, "other": other, "model": root / "cls.safetensors", "train": json.loads(train.stdout)}


def test_slices_keep_the_patient_id_and_split_by_patient(pipeline):
    root = pipeline["root"]
    with open(root / "sl" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["file"].split("/")[0] for r in rows} == {"Tumor", "NoTumor"}
    for row in rows:
        assert Path(row["file"]).name.startswith(row["patient_id"] + "_")
        assert (int(row["tumor_pixels"]) > 0) == row["file"].startswith("Tumor/")
    train = pipeline["train"]
    assert train["train_patients"] == 3 and train["val_patients"] == 1  # whole patients held out


def test_classify_with_the_right_key_wrong_key_and_cipher_files(pipeline, tmp_path):
    root, model = pipeline["root"], pipeline["model"]
    tumour = sorted((root / "sl-test" / "Tumor").glob("*.png"))[:3]
    right = run_cli("classify", *tumour, "-m", model, "--key", pipeline["key"], env=ENV, check=True)
    records = [json.loads(line) for line in right.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in tumour]
    assert {r["label"] for r in records} <= {"Tumor", "NoTumor"} and all(0 <= r["probability"] <= 1 for r in records)
    out = tmp_path / "wrong.jsonl"
    wrong = run_cli("classify", *tumour, "-m", model, "--key", pipeline["other"], "-o", out, env=ENV)
    assert wrong.returncode == 4 and wrong.stdout == "" and not out.exists()
    assert "wrong key" in wrong.stderr
    # a file encrypted as `medtools encrypt` does is classified as it is, without the key, identically
    from medtools.imagecipher.methods import process_file  # what `medtools encrypt --method block` runs

    process_file(tumour[0], tmp_path / "enc" / tumour[0].name, "block", key=KEY, block_size=8, window=5, decrypt=False)
    enc = run_cli("classify", tmp_path / "enc" / tumour[0].name, "-m", model, "--csv", env=ENV, check=True)
    header, row = enc.stdout.splitlines()
    assert header.split(",")[:3] == ["path", "label", "probability"]
    assert float(row.split(",")[2]) == pytest.approx(records[0]["probability"], abs=1e-5)


def test_cls_eval_beats_chance_on_held_out_phantom_patients(pipeline):
    result = run_cli("cls-eval", pipeline["root"] / "sl-test", "-m", pipeline["model"], "--key", pipeline["key"], "--bootstrap", "100", "--json", "-q", env=ENV, check=True)
    metrics_ = json.loads(result.stdout)
    assert metrics_["patients"] == 3 and metrics_["encryption"] == "block"
    assert metrics_["balanced_accuracy"] > 0.7, metrics_
    assert sum(map(sum, metrics_["confusion_matrix"])) == metrics_["n"]


def test_checkpoint_has_the_key_fingerprint_never_the_key(pipeline):
    from medtools.core.ckpt import read_metadata

    meta = read_metadata(pipeline["model"])
    config = json.loads(meta["medtools.config"])
    assert config["encryption"] == "block" and config["key_id"] == key_id(KEY)
    raw = pipeline["model"].read_bytes()
    for secret in (KEY, KEY.hex().encode(), str(pipeline["key"]).encode(), pipeline["key"].name.encode()):
        assert secret not in raw


def test_classify_refuses_an_image_too_small_for_the_model_as_one_item_error(tmp_path, capsys):
    """A 1×1 image is an item error naming its size (not a confident label); the others are classified."""
    from medtools.cls.classify import classify_command
    from medtools.core import ckpt, registry
    from medtools.core.io import Image, write_image

    config = {"arch": "resnet10t", "in_channels": 1, "num_classes": 2, "image_size": 32, "class_names": ["NoTumor", "Tumor"], "encryption": "none"}
    kind = registry.get("cls")
    net = registry.resolve(kind.builder)(**registry.check_config(kind, config))
    model = ckpt.save(tmp_path / "plain.safetensors", net.state_dict(), kind="cls", config=config, norm={"method": "unit"})
    good, dot = tmp_path / "good.png", tmp_path / "dot.png"
    write_image(Image(smooth_images(1, 48)[0], format="png"), good)
    write_image(Image(np.full((1, 1), 200, np.uint8), format="png"), dot)
    code = classify_command([str(good), str(dot)], model, device="cpu")
    out, err = capsys.readouterr()
    assert code == 1
    assert [json.loads(line)["path"] for line in out.splitlines()] == [str(good)]
    assert "dot.png" in err and "1×1" in err and "32×32" in err
    assert classify_command([str(dot)], model, device="cpu") == 5  # nothing usable
