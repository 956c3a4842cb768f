"""A checkpoint names no one: no path and no case or patient id from its manifest in any checkpoint
a ``*-train`` command writes; ids only with --keep-ids, as HMACs the key holder recomputes;
``ckpt strip`` cleans an old checkpoint with every tensor bit-identical; ``info`` shows what a
checkpoint reveals; ``serve`` refuses a checkpoint that names its training data.

Every trainer runs once at the tiniest settings (one or two steps at 32²): seg-train through the
CLI (the flags), the others through their family functions, all in one module fixture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

KEY = bytes(range(32))


def _header(path: Path) -> str:
    raw = path.read_bytes()
    return raw[8 : 8 + int.from_bytes(raw[:8], "little")].decode()


def _metadata(path: Path) -> dict[str, str]:
    return json.loads(_header(path)).get("__metadata__", {})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every trainer's checkpoint (seg, cls, synth, umn with --keep-ids; reid, ae without) and the
    ids of the data each saw."""
    from medtools.brain.reid import train_reid
    from medtools.cls.train import train_classifier
    from medtools.collab.autoencoder import latent_shapes, train_autoencoder
    from medtools.collab.latents import write_latent
    from medtools.collab.umn import train_umn
    from medtools.core.manifest import read_csv
    from medtools.phantom.generate import write_brain_phantoms, write_cxr_phantoms
    from medtools.synth.train import train_ddpm

    work = tmp_path_factory.mktemp("ckpt-ids")
    key = work / "ids.key"
    key.write_text(KEY.hex() + "\n")
    key.chmod(0o600)
    write_brain_phantoms(work / "brain", patients=3, visits=1, size=32, slices=6, seed=0)
    run_cli("manifest", work / "brain", "-o", work / "cases.csv", check=True)
    rows = read_csv(work / "cases.csv")
    write_cxr_phantoms(work / "cxr", n=8, patients=4, size=32, seed=0)
    images = sorted((work / "cxr").rglob("*.png"))
    out = work / "models"
    tiny = {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "device": "cpu"}
    keep = {"keep_ids": True, "id_key": key}
    run_cli("seg-train", work / "cases.csv", "-o", out / "seg.safetensors", "--encoder", "tu-test_resnet", "--size", "32", "--epochs", "1", "--steps-per-epoch", "2", "-b", "4",
            "--modalities", "flair", "--binary", "--keep-ids", "--id-key", key, "-q", check=True)
    train_reid(work / "cases.csv", out / "reid.safetensors", arch="test_resnet", size=32, modalities=["flair"], **tiny)
    train_classifier(work / "cxr", out / "cls.safetensors", arch="resnet10t", size=32, block_size=8, val_fraction=0.25, **tiny, **keep)
    train_ddpm(inputs=[str(work / "cxr")], output=out / "ddpm.safetensors", size=32, widths=(16, 32), attention=(), layers_per_block=1, ema_decay=None, **tiny, **keep)
    train_autoencoder([work / "cxr"], out / "ae.safetensors", size=32, widths=(8, 16, 32), latent_channels=(2, 4, 8), **tiny)
    umn_cases = [f"UMN-CASE-{i:04d}" for i in range(4)]
    rng = np.random.default_rng(0)
    for case in umn_cases:
        for source in ("ae-image", "ae-mask"):
            z = [rng.standard_normal(shape).astype(np.float32) for shape in latent_shapes([2, 4, 8], 32)]
            write_latent(work / "lat" / f"{case}_{source}.safetensors", z, {"case": case, "source": source, "key_id": "client-a", "state": "protected"})
    train_umn([work / "lat"], out / "umn.safetensors", keys=None, widths=(8, 16, 32), **tiny, **keep)
    ids = {
        "seg": {r["case"] for r in rows} | {r["patient"] for r in rows},
        "reid": {r["case"] for r in rows},  # its patient ids are its outputs (config.class_names), checked apart
        "cls": {p.name.split("-")[0] for p in images} | {p.name for p in images},
        "ddpm": {p.name.split("-")[0] for p in images} | {p.name for p in images},
        "ae": {p.stem for p in images},
        "umn": set(umn_cases),
    }
    return {"work": work, "out": out, "key": key, "rows": rows, "images": images, "umn_cases": umn_cases, "ids": ids}


def test_no_checkpoint_holds_a_path_or_a_clear_id(trained) -> None:
    """Every file every trainer wrote (checkpoint, best/last copies, training state): no manifest
    id and no absolute path anywhere in the safetensors header."""
    from medtools.core.ids import reveals

    written = sorted(trained["out"].glob("*.safetensors"))
    kinds = {json.loads(_header(p))["__metadata__"]["medtools.kind"] for p in written}
    assert {"seg", "reid", "cls", "ddpm", "ae-image", "umn", "train-state"} <= kinds
    secrets = {str(trained["work"]), str(trained["work"].parent), str(Path.home()), "/tmp/"}
    for path in written:
        header = json.loads(_header(path))
        meta = header["__metadata__"]
        if meta["medtools.kind"] == "reid":  # a patient re-identifier names the identities it outputs, nothing else
            config = json.loads(meta["medtools.config"])
            assert set(config.pop("class_names")) <= {r["patient"] for r in trained["rows"]}
            header["__metadata__"] = {**meta, "medtools.config": json.dumps(config)}
        text = json.dumps(header)
        stem = path.name.split(".")[0]
        for secret in trained["ids"][stem] | secrets:
            assert len(secret) >= 4 and secret not in text, f"{path.name} holds {secret!r}"
        if meta["medtools.kind"] != "train-state":
            assert not reveals(meta)["identifying"], path.name
    ae = _metadata(trained["out"] / "ae.safetensors")
    assert len(ae["medtools.data_sha256"]) == 64 and ae["medtools.items"] == str(len(trained["images"])) and "medtools.data" not in ae


def test_keep_ids_stores_hmacs_the_key_holder_recomputes(trained) -> None:
    from medtools.core.ids import id_hmac
    from medtools.core.secrets import key_id

    rows = trained["rows"]
    seg = json.loads(_metadata(trained["out"] / "seg.safetensors")["medtools.ids"])
    assert seg["scheme"] == "hmac-sha256/v1" and seg["key_id"] == key_id(KEY)
    assert set(seg["train_cases"]) | set(seg["val_cases"]) == {id_hmac(KEY, r["case"]) for r in rows}
    assert set(seg["train_patients"]) | set(seg["val_patients"]) == {id_hmac(KEY, r["patient"]) for r in rows}
    assert len(seg["val_cases"]) >= 1 and not set(seg["train_patients"]) & set(seg["val_patients"])
    cls = json.loads(_metadata(trained["out"] / "cls.safetensors")["medtools.ids"])
    patients = {p.name.split("-")[0] for p in trained["images"]}
    assert set(cls["train_patients"]) | set(cls["val_patients"]) == {id_hmac(KEY, p) for p in patients}
    ddpm = json.loads(_metadata(trained["out"] / "ddpm.safetensors")["medtools.ids"])
    assert set(ddpm["train_images"]) == {id_hmac(KEY, p.name) for p in trained["images"]}
    umn = json.loads(_metadata(trained["out"] / "umn.safetensors")["medtools.ids"])
    assert umn["train_cases"] == sorted(id_hmac(KEY, c) for c in trained["umn_cases"])
    assert id_hmac(bytes(32), trained["umn_cases"][0]) not in umn["train_cases"]  # another key gives other values
    for name in ("reid", "ae"):  # without --keep-ids: no ids at all
        assert "medtools.ids" not in _metadata(trained["out"] / f"{name}.safetensors")


def test_keep_ids_needs_a_private_key_file(trained, tmp_path) -> None:
    from medtools.core.errors import UsageError
    from medtools.core.train import TrainOptions

    proc = run_cli("seg-train", trained["work"] / "cases.csv", "-o", tmp_path / "x.safetensors", "--keep-ids")
    assert proc.returncode == 2 and "--id-key" in proc.stderr and not (tmp_path / "x.safetensors").exists()
    with pytest.raises(UsageError, match="--keep-ids"):
        TrainOptions(id_key=trained["key"])
    loose = tmp_path / "loose.key"
    loose.write_text(KEY.hex() + "\n")
    loose.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        TrainOptions(keep_ids=True, id_key=loose).id_provenance(train_cases=["a"])


@pytest.fixture(scope="module")
def old_style(trained) -> Path:
    """A seg checkpoint as seg-train wrote them before: the manifest's path and the ids in the clear."""
    from safetensors.torch import load_file

    from medtools.core import ckpt

    source = ckpt.load(trained["out"] / "seg.safetensors", tensors=False)
    rows = trained["rows"]
    provenance = {k: v for k, v in source.provenance.items() if k != "ids"}
    provenance.update(data=str(trained["work"] / "cases.csv"), train_cases=[r["case"] for r in rows[1:]], val_cases=[rows[0]["case"]], val_patients=[rows[0]["patient"]])
    provenance["recipe"] = {**provenance["recipe"], "note": str(trained["work"] / "notes.txt")}
    path = trained["work"] / "old" / "old-seg.safetensors"
    ckpt.save(path, load_file(str(trained["out"] / "seg.safetensors")), kind="seg", config=source.config, norm=source.norm, provenance=provenance)
    return path


def test_info_shows_what_a_checkpoint_reveals(trained, old_style) -> None:
    old = json.loads(run_cli("info", old_style, "--json", check=True).stdout)
    assert old["reveals"]["identifying"] and set(old["reveals"]["clear_ids"]) == {"train_cases", "val_cases", "val_patients"}
    assert set(old["reveals"]["paths"]) == {"data", "recipe"}
    new = json.loads(run_cli("info", trained["out"] / "seg.safetensors", "--json", check=True).stdout)
    assert not new["reveals"]["identifying"] and new["reveals"]["keyed_ids"]["groups"]["train_cases"] >= 1
    text = run_cli("info", old_style, trained["out"] / "reid.safetensors", check=True).stdout
    assert "reveals: clear ids in train_cases, val_cases, val_patients; paths in data, recipe" in text
    assert "reveals: config.class_names: 2 patient ids (the identities this re-identification model outputs)" in text


def test_strip_removes_ids_and_paths_and_keeps_every_tensor(trained, old_style, tmp_path) -> None:
    import torch
    from safetensors.torch import load_file

    from medtools.core import ckpt

    out = tmp_path / "shared.safetensors"
    proc = run_cli("ckpt", "strip", old_style, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    before, after = load_file(str(old_style)), load_file(str(out))
    assert before.keys() == after.keys()
    for name, tensor in before.items():  # bit-identical: same dtype, shape and bytes
        assert after[name].dtype == tensor.dtype and after[name].shape == tensor.shape
        assert torch.equal(after[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name
    text = _header(out)
    for secret in trained["ids"]["seg"] | {str(trained["work"])}:
        assert secret not in text, secret
    stripped = ckpt.load(out, kind="seg", tensors=False)
    assert stripped.config == ckpt.load(old_style, tensors=False).config and stripped.provenance["label_map"]
    assert stripped.provenance["stripped"] == {"removed": ["data", "train_cases", "val_cases", "val_patients"], "paths_replaced": 1}
    assert stripped.provenance["recipe"]["note"] == "<path removed>"
    ckpt.build_model(ckpt.load(out, kind="seg"))  # still a working model
    again = run_cli("ckpt", "strip", trained["out"] / "seg.safetensors", "-o", tmp_path / "no-hmacs.safetensors", "--json", check=True)
    assert json.loads(again.stdout)["removed"] == ["ids"]  # keyed ids go too: a shared copy links no one
    same = run_cli("ckpt", "strip", old_style, "-o", old_style)
    assert same.returncode == 2 and len(same.stderr.strip().splitlines()) == 1
    assert ckpt.read_metadata(old_style)["medtools.data"]  # untouched


def test_serve_refuses_a_checkpoint_with_clear_ids(trained, old_style, tmp_path) -> None:
    pytest.importorskip("fastapi")
    from medtools.core.errors import CheckpointError
    from medtools.secure.keystore import KeyStore
    from medtools.serve.app import build

    store = tmp_path / "store.json"
    KeyStore.create(store, log_n=10).add_user("alice", b"correct horse", log_n=10)
    models = old_style.parent
    with pytest.raises(CheckpointError, match="ckpt strip"):
        build(models, store, device="cpu")
    app, state = build(models, store, device="cpu", allow_identifying=True)
    try:
        assert list(state.models) == ["old-seg"]
    finally:
        state.close()
    proc = run_cli("serve", "--models", models, "--store", store, "--port", "0")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3 and len(lines) == 1, proc.stderr
    assert str(old_style) in lines[0] and "medtools ckpt strip" in lines[0] and "--allow-identifying-checkpoints" in lines[0]
    clean = tmp_path / "clean"
    run_cli("ckpt", "strip", old_style, "-o", clean / "seg.safetensors", check=True)
    app, state = build(clean, store, device="cpu")
    state.close()
    assert os.path.exists(old_style)


def test_hmac_vector_and_what_counts_as_identifying() -> None:
    """The documented vector (docs/formats.md); counts, hashes and words are not ids."""
    from medtools.core.ids import id_hmac, reveals

    assert id_hmac(bytes(range(32)), "p1") == "07dcf91caf9ae8ea5969873a970cc04b3cd0195b2768712a93d833a0f0eff64d"
    plain = {"medtools.kind": "reid", "medtools.config": json.dumps({"label": "visit", "class_names": ["v1", "v2"]}), "medtools.split": "patient", "medtools.val_patients": "3", "medtools.data_sha256": "ab" * 32, "medtools.clients": '["1f2e"]'}
    assert reveals(plain) == {"identifying": False, "clear_ids": [], "paths": [], "keyed_ids": None, "outputs": None}
    old = {**plain, "medtools.subjects": '["S-1"]', "medtools.files": '["a/b.png"]', "medtools.note": "C:\\\\data\\\\x.csv"}
    assert reveals(old)["clear_ids"] == ["subjects"] and reveals(old)["paths"] == ["files", "note"]
