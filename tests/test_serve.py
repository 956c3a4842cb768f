"""medtools serve: the API with FastAPI's TestClient, and one real server process on loopback."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from medtools.core.io import Image, read_image, write_image  # noqa: E402
from medtools.core.report import sha256_file  # noqa: E402

SEG_CONFIG = {"arch": "unet", "encoder": "resnet18", "in_channels": 1, "classes": 2, "encoder_depth": 3, "image_size": 32, "label_values": [0, 1], "modalities": ["flair"]}
CLS_CONFIG = {"arch": "resnet10t", "in_channels": 1, "num_classes": 2, "image_size": 32, "class_names": ["NoTumor", "Tumor"], "encryption": "none"}
PASSWORD = "correct horse"


def _has_cls() -> bool:
    import importlib.util

    return importlib.util.find_spec("medtools.cls.classify") is not None


def _has_segment_images() -> bool:
    import medtools.brain.segment as seg

    return hasattr(seg, "segment_images")


needs_segment_images = pytest.mark.skipif(not _has_segment_images(), reason="medtools.brain.segment.segment_images has not landed yet")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A models folder with one tiny seg checkpoint, a key store (alice, bob), sample images."""
    import nibabel as nib
    import torch

    from medtools.core import ckpt
    from medtools.core.preprocess import DEFAULT_NORM
    from medtools.nets.segmenter import build_segmenter
    from medtools.secure.keystore import KeyStore

    root = tmp_path_factory.mktemp("serve")
    (root / "models").mkdir()
    torch.manual_seed(0)
    net = build_segmenter(**{k: v for k, v in SEG_CONFIG.items() if k not in ("image_size", "label_values", "modalities")})
    rng = np.random.default_rng(0)
    volume = rng.random((40, 36, 6)).astype(np.float32)
    volume[10:20, 10:20, :] += 2.0
    # shift the head's bias so that about half of the case's voxels are labelled 1: tests that
    # compare label maps then compare something (a random net labels almost nothing)
    from medtools.core.predict import Predictor
    from medtools.core.preprocess import volumes_to_slices

    path = ckpt.save(root / "models" / "tiny-seg.safetensors", net.state_dict(), kind="seg", config=SEG_CONFIG, norm=DEFAULT_NORM)
    probs = Predictor(path, kind="seg", device="cpu").predict(volumes_to_slices([volume], DEFAULT_NORM)[0], softmax=True)
    margin = float(np.median(np.log(probs[:, 1] + 1e-12) - np.log(probs[:, 0] + 1e-12)))
    with torch.no_grad():
        net.segmentation_head[0].bias[1] -= margin
    ckpt.save(path, net.state_dict(), kind="seg", config=SEG_CONFIG, norm=DEFAULT_NORM)
    if _has_cls():
        from medtools.core import registry

        kind = registry.get("cls")
        net = registry.resolve(kind.builder)(**registry.check_config(kind, CLS_CONFIG))
        ckpt.save(root / "models" / "tiny-cls.safetensors", net.state_dict(), kind="cls", config=CLS_CONFIG, norm={"method": "unit"})
    store = KeyStore.create(root / "store.json", log_n=10)
    for user in ("alice", "bob"):
        store.add_user(user, PASSWORD.encode(), log_n=10)
    nib.save(nib.Nifti1Image(volume, np.diag([0.9, 0.9, 2.0, 1.0])), str(root / "case.nii.gz"))
    for i in range(4):
        write_image(Image((rng.random((48, 40)) * 255).astype(np.uint8), format="png"), root / f"slice{i}.png")
    (root / "report.txt").write_bytes(b"findings: none\n" * 50)
    return root


@pytest.fixture(scope="module")
def served(world):
    from fastapi.testclient import TestClient

    from medtools.serve.app import build

    app, state = build(world / "models", world / "store.json", audit_log=world / "audit.jsonl", device="cpu")
    with TestClient(app) as client:
        yield client, state
    state.close()


def _login(client, user="alice", password=PASSWORD):
    response = client.post("/v1/login", json={"user": user, "password": password})
    assert response.status_code == 200, response.text
    client.cookies.clear()  # the bearer token only, so "without a token" means without
    return {"Authorization": f"Bearer {response.json()['token']}"}


def test_health_and_version_list_models_with_sha256(served, world):
    client, _ = served
    digest = sha256_file(world / "models" / "tiny-seg.safetensors")
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and {"name": "tiny-seg", "kind": "seg", "sha256": digest} in health["models"]
    version = client.get("/v1/version").json()
    seg = next(m for m in version["models"] if m["name"] == "tiny-seg")
    assert seg["sha256"] == digest and seg["modalities"] == ["flair"]
    assert "segment" in version["endpoints"] and "decrypt" in version["endpoints"]
    assert "/v1/segment" in client.get("/openapi.json").json()["paths"]
    assert "<form" in client.get("/").text and client.get("/static/app.js").status_code == 200
    docs = client.get("/docs").text  # Swagger UI from the package, not a CDN
    assert "cdn." not in docs and "unpkg" not in docs
    script = re.search(r'src="([^"]+swagger-ui-bundle\.js)"', docs).group(1)
    assert client.get(script).status_code == 200


def test_login_wrong_password_401_without_hint_right_password_token(served, world):
    client, _ = served
    audit = world / "audit.jsonl"
    before = len(audit.read_text().splitlines()) if audit.exists() else 0  # other tests of the module log in too, in any order
    wrong = client.post("/v1/login", json={"user": "alice", "password": "nope"})
    unknown = client.post("/v1/login", json={"user": "mallory", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"detail": "login failed"}
    response = client.post("/v1/login", data={"user": "alice", "password": PASSWORD})  # the page's form
    assert response.status_code == 200 and response.json()["token_type"] == "bearer"
    assert "httponly" in response.headers["set-cookie"].lower() and "samesite=strict" in response.headers["set-cookie"].lower()
    assert client.get("/v1/me", headers={"Authorization": "Bearer " + response.json()["token"]}).json()["user"] == "alice"
    lines = [json.loads(line) for line in audit.read_text().splitlines()[before:]]
    assert [line["result"] for line in lines if line["action"] == "login"] == ["denied", "denied", "ok"]
    assert PASSWORD not in (world / "audit.jsonl").read_text()
    client.cookies.clear()


def test_encrypt_then_decrypt_needs_a_token(served, world):
    client, state = served
    headers = _login(client)
    plain = (world / "report.txt").read_bytes()
    assert client.post("/v1/encrypt", files={"file": ("report.txt", plain)}).status_code == 401
    sealed = client.post("/v1/encrypt", files={"file": ("report.txt", plain)}, headers=headers)
    assert sealed.status_code == 200 and sealed.headers["x-medtools-recipients"] == "alice,bob"
    assert client.post("/v1/decrypt", files={"file": ("report.txt.mte", sealed.content)}).status_code == 401
    opened = client.post("/v1/decrypt", files={"file": ("report.txt.mte", sealed.content)}, headers=headers)
    assert opened.status_code == 200 and opened.content == plain
    assert 'filename="report.txt"' in opened.headers["content-disposition"]
    for_bob = client.post("/v1/encrypt", files={"file": ("r.txt", plain)}, data={"user": ["bob"]}, headers=headers)
    assert for_bob.headers["x-medtools-recipients"] == "bob"
    denied = client.post("/v1/decrypt", files={"file": ("r.txt.mte", for_bob.content)}, headers=headers)
    assert denied.status_code == 403 and "not a recipient" in denied.json()["detail"]
    tampered = bytearray(sealed.content)
    tampered[-5] ^= 1
    bad = client.post("/v1/decrypt", files={"file": ("x.mte", bytes(tampered))}, headers=headers)
    assert bad.status_code == 422
    records = [json.loads(line) for line in (world / "audit.jsonl").read_text().splitlines() if '"decrypt"' in line]
    assert [r["result"] for r in records[-3:]] == ["ok", "denied", "integrity-failure"] and all(len(r["sha256"]) == 64 for r in records)
    assert not any(state.tmp_root.iterdir())  # uploads removed after each response


def test_decrypt_fails_for_a_removed_user(served, world):
    from medtools.secure.keystore import KeyStore

    client, _ = served
    KeyStore.load(world / "store.json").add_user("carol", PASSWORD.encode(), log_n=10)  # her own user: other tests keep alice and bob
    headers = _login(client, "carol")
    sealed = client.post("/v1/encrypt", files={"file": ("r.txt", b"for carol")}, data={"user": ["carol"]}, headers=headers).content
    KeyStore.load(world / "store.json").remove_user("carol")
    assert client.post("/v1/decrypt", files={"file": ("r.txt.mte", sealed)}, headers=headers).status_code == 401
    assert client.post("/v1/login", json={"user": "carol", "password": PASSWORD}).status_code == 401


@needs_segment_images
def test_segment_nifti_and_png_keep_format_and_shape(served, world):
    client, _ = served
    headers = _login(client)
    response = client.post("/v1/segment", files={"file": ("case.nii.gz", (world / "case.nii.gz").read_bytes())}, headers=headers)
    assert response.status_code == 200, response.text
    out = world / "out_seg.nii.gz"
    out.write_bytes(response.content)
    label = read_image(out)
    assert label.array.shape == (40, 36, 6) and set(np.unique(label.array)) <= {0, 1}
    assert np.allclose(label.affine, np.diag([0.9, 0.9, 2.0, 1.0]))
    # the same labels as the CLI's `medtools segment` function on the same file and checkpoint
    from medtools.brain.cases import resolve_cases
    from medtools.brain.segment import segment_cases

    [(_, written)] = list(segment_cases(resolve_cases([str(world / "case.nii.gz")]), world / "models" / "tiny-seg.safetensors", world / "cli", device="cpu", workers=0))
    assert np.array_equal(read_image(written[0]).array, label.array)
    assert 0.2 < label.array.mean() < 0.8  # a mixed label map (see the fixture), so equality means something
    stats = json.loads(response.headers["x-medtools-stats"])
    assert stats["shape"] == [40, 36, 6] and sum(stats["labels"].values()) == 40 * 36 * 6
    assert stats["tumour_ml"] == pytest.approx(stats["tumour_voxels"] * 0.9 * 0.9 * 2.0 / 1000, rel=1e-3)
    page = client.post("/v1/segment?response=json", files={"file": ("slice0.png", (world / "slice0.png").read_bytes())}, headers=headers).json()
    assert page["filename"] == "slice0_seg.png" and page["preview"]["shape"] == [1, 48, 40]
    png = world / "out_seg.png"
    import base64

    png.write_bytes(base64.b64decode(page["label_map"]))
    assert read_image(png).array.shape == (48, 40)
    # a single-file DICOM comes back as DICOM with its tags (core.io writes it derived)
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm"))
    response = client.post("/v1/segment", files={"file": ("ct.dcm", ct.read_bytes())}, headers=headers)
    assert response.status_code == 200, response.text
    (world / "ct_seg.dcm").write_bytes(response.content)
    back, source = read_image(world / "ct_seg.dcm"), read_image(ct)
    assert back.format == "dicom" and back.array.shape == source.array.shape == (128, 128)
    assert set(np.unique(back.array)) <= {0, 1} and back.meta["dataset"].PatientID == source.meta["dataset"].PatientID


@needs_segment_images
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: the page's script is not exercised")
def test_page_script_draws_the_overlay(served, world, tmp_path):
    """The page's app.js (in Node, minimal DOM): log-in, segment answer → overlay pixels on the canvas."""
    import base64
    import gzip

    import nibabel as nib

    client, _ = served
    headers = _login(client)
    answer = client.post("/v1/segment?response=json", files={"file": ("case.nii.gz", (world / "case.nii.gz").read_bytes())}, headers=headers).json()
    shape = answer["preview"]["shape"]
    assert shape == [6, 40, 36]
    labels = np.frombuffer(base64.b64decode(answer["preview"]["labels"]), np.uint8).reshape(shape)
    label_map = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(answer["label_map"]))).dataobj)
    assert np.array_equal(labels, np.moveaxis(label_map, 2, 0))  # the preview is the label map
    # ?response=binary (what the page reads): the same answer, its arrays as raw bytes after a JSON head
    import struct

    body = client.post("/v1/segment?response=binary", files={"file": ("case.nii.gz", (world / "case.nii.gz").read_bytes())}, headers=headers).content
    (length,) = struct.unpack("<I", body[:4])
    head = json.loads(body[4 : 4 + length])
    parts = head["preview"].pop("parts")
    assert (4 + length) % 2 == 0 and all(offset % 2 == 0 for offset, _ in parts.values())
    for key, (offset, size) in parts.items():
        assert body[4 + length + offset : 4 + length + offset + size] == base64.b64decode(answer["preview"][key]), key
    assert head["preview"] == {k: v for k, v in answer["preview"].items() if k not in parts} and head["stats"] == answer["stats"] and head["label_map"] == answer["label_map"]
    # a known pattern so the colours can be checked whatever the tiny model predicted
    pattern = np.zeros(shape, np.uint8)
    pattern[4, 5:15, 8:20] = 1
    pattern[2, 0:3, 0:3] = 2
    answer["preview"]["labels"] = base64.b64encode(pattern.tobytes()).decode()
    (tmp_path / "answers.json").write_text(json.dumps({"password": PASSWORD, "version": client.get("/v1/version").json(), "segment": answer}))
    app_js = Path(__file__).resolve().parents[1] / "medtools" / "serve" / "static" / "app.js"
    # the minimal DOM makes any element asked for, so check that the page has them all
    html_ids = set(re.findall(r'id="([^"]+)"', (app_js.parent / "index.html").read_text()))
    used = set(re.findall(r'\$\("([^"]+)"\)', app_js.read_text()))
    assert used and used <= html_ids, sorted(used - html_ids)
    proc = subprocess.run(["node", str(Path(__file__).with_name("serve_page.js")), str(app_js), str(tmp_path / "answers.json")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    page = json.loads(proc.stdout)
    assert page["login_shown_first"] and page["wrong_password_message"] == "Log-in failed." and page["app_shown"]
    assert page["model"] == "tiny-seg" and page["status"] == "Done: case_seg.nii.gz" and "mL" in page["volume"]
    assert page["slice"] == 4 and page["slice_max"] == 5  # starts on the slice with the most tumour
    assert page["wheel"] == [5, 3]  # the mouse wheel scrolls slices (and stops at the last)
    rgba = np.frombuffer(base64.b64decode(page["rgba"]), np.uint8).reshape(40, 36, 4).astype(int)
    gray = np.frombuffer(base64.b64decode(answer["preview"]["image"]), np.uint8).reshape(shape)[4].astype(int)
    inside = pattern[4] == 1
    assert np.all(np.abs(rgba[inside, 0] - (gray[inside] + 255) / 2) <= 1)  # red at opacity 0.5
    assert np.all(np.abs(rgba[inside, 1] - gray[inside] / 2) <= 1)
    assert np.array_equal(rgba[~inside, 0], gray[~inside]) and np.array_equal(rgba[~inside, 2], gray[~inside])
    assert np.all(rgba[..., 3] == 255)


def test_segment_errors_are_the_cli_reasons(served, world):
    client, _ = served
    headers = _login(client)
    corrupt = client.post("/v1/segment", files={"file": ("broken.nii.gz", b"not a nifti at all")}, headers=headers)
    assert corrupt.status_code == 422 and "cannot read broken.nii.gz" in corrupt.json()["detail"]
    assert "medtools-serve-" not in corrupt.json()["detail"]  # no server paths in replies
    unsupported = client.post("/v1/segment", files={"file": ("notes.docx", b"PK\x03\x04")}, headers=headers)
    assert unsupported.status_code == 422 and "unsupported file type" in unsupported.json()["detail"]
    png = (world / "slice0.png").read_bytes()
    two = client.post("/v1/segment", files=[("file", ("a.png", png)), ("file", ("b.png", png))], headers=headers)
    assert two.status_code == 422 and "flair" in two.json()["detail"]  # segment_images' own reason
    assert client.post("/v1/segment", files={"file": ("a.png", b"x")}, headers=headers, params={"model": "nope"}).status_code == 400


@pytest.mark.skipif(not _has_cls(), reason="the cls family is not installed")
def test_classify_returns_the_cli_records(served, world):
    client, _ = served
    headers = _login(client)
    assert "classify" in client.get("/v1/version").json()["endpoints"]
    files = [("file", (f"slice{i}.png", (world / f"slice{i}.png").read_bytes())) for i in range(2)]
    response = client.post("/v1/classify", files=files, headers=headers)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["file"] for r in results] == ["slice0.png", "slice1.png"]
    assert all(r["label"] in ("NoTumor", "Tumor") and sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-4) for r in results)
    assert response.json()["model_sha256"] == sha256_file(world / "models" / "tiny-cls.safetensors")


def test_body_limit_413_and_rate_limit_429(served, world):
    from fastapi.testclient import TestClient

    from medtools.serve.app import BodyLimit, ServeState, create_app
    from medtools.serve.auth import Authenticator, RateLimiter

    _, state = served
    small = TestClient(BodyLimit(create_app(state), 1000))
    big = small.post("/v1/encrypt", files={"file": ("big.bin", b"0" * 5000)})
    assert big.status_code == 413 and "limit" in big.json()["detail"]
    auth = Authenticator(world / "store.json", audit_log=world / "audit2.jsonl", limiter=RateLimiter(max_failures=2))
    limited = TestClient(create_app(ServeState(models=state.models, auth=auth, tmp_root=state.tmp_root)))
    codes = [limited.post("/v1/login", json={"user": "alice", "password": "guess"}).status_code for _ in range(3)]
    assert codes == [401, 401, 429]
    # the right password is not even tried while the limit holds
    last = limited.post("/v1/login", json={"user": "alice", "password": PASSWORD})
    assert last.status_code == 429 and int(last.headers["retry-after"]) > 0


def test_bad_models_folder_exits_3(world, tmp_path):
    from conftest import run_cli

    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    proc = run_cli("serve", "--models", tmp_path, "--store", world / "store.json", "--port", "0")
    assert proc.returncode == 3 and "broken.safetensors" in proc.stderr
    assert run_cli("serve", "--models", tmp_path / "none", "--store", world / "store.json").returncode == 3


@needs_segment_images
def test_real_server_parallel_clients_and_sigterm(world, tmp_path):
    """`medtools serve` on 127.0.0.1 (port 0 → printed address), 4 parallel clients, SIGTERM → exit 0."""
    import httpx

    log = tmp_path / "stderr.txt"
    env = {**os.environ, "MEDTOOLS_DEVICE": "cpu"}
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "medtools", "serve", "--models", str(world / "models"), "--store", str(world / "store.json"), "--port", "0", "--audit-log", str(tmp_path / "audit.jsonl")], stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        deadline = time.time() + 120
        address = None
        while address is None and time.time() < deadline and proc.poll() is None:
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            address = match.group(1) if match else None
            time.sleep(0.1)
        assert address, log.read_text()
        with httpx.Client(base_url=address, timeout=60) as client:
            models = {m["name"]: m["sha256"] for m in client.get("/v1/health").json()["models"]}
            assert models["tiny-seg"] == sha256_file(world / "models" / "tiny-seg.safetensors")
            assert client.get("/v1/health", headers={"Host": "rebound.example"}).status_code == 400  # DNS rebinding
            assert client.post("/v1/login", json={"user": "alice", "password": "wrong"}).status_code == 401
            token = client.post("/v1/login", json={"user": "alice", "password": PASSWORD}).json()["token"]
        slices = [(world / f"slice{i}.png").read_bytes() for i in range(4)]

        def segment(data: bytes) -> bytes:
            with httpx.Client(base_url=address, timeout=60, headers={"Authorization": f"Bearer {token}"}) as c:
                response = c.post("/v1/segment", files={"file": ("s.png", data)})
                assert response.status_code == 200, response.text
                return response.content

        serial = [segment(data) for data in slices]
        with ThreadPoolExecutor(4) as pool:
            parallel = list(pool.map(segment, slices * 2))
        assert parallel == serial * 2  # concurrent requests do not mix outputs
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        port = int(address.rsplit(":", 1)[1])
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_index_score_is_the_server_half_of_index_query(served, world, tmp_path):
    """/v1/index/score on an encrypted query gives the scores `index query` computes locally."""
    pytest.importorskip("tenseal")
    pytest.importorskip("medtools.index.store")
    import base64

    from fastapi.testclient import TestClient

    from medtools.core.inputs import expand_inputs
    from medtools.core.predict import Predictor
    from medtools.index import he
    from medtools.index import features as feats
    from medtools.index.store import build as build_index
    from medtools.index.store import query as local_query
    from medtools.serve.app import ServeState, create_app
    from medtools.serve.backends import IndexService

    _, state = served
    he.keygen(tmp_path / "ctx", preset="n4096")
    model = world / "models" / "tiny-seg.safetensors"
    images = [world / f"slice{i}.png" for i in range(4)]
    build_index(expand_inputs([str(p) for p in images]), model=model, public=tmp_path / "ctx" / "public", output=tmp_path / "idx", device="cpu")
    with pytest.raises(Exception, match="secret key"):
        IndexService.open(tmp_path / "idx", tmp_path / "ctx" / "secret")
    client = TestClient(create_app(ServeState(models=state.models, auth=state.auth, index=IndexService.open(tmp_path / "idx", tmp_path / "ctx" / "public"), tmp_root=state.tmp_root)))
    headers = _login(client)
    assert client.get("/v1/index").status_code == 401
    manifest = client.get("/v1/index", headers=headers).json()
    assert len(manifest["entries"]) == 4
    # the client: its secret context, its features, its encrypted query
    secret = he.load_context(tmp_path / "ctx" / "secret", secret=True)
    predictor = Predictor(model, kind="seg", device="cpu")
    vector = feats.embed_arrays(predictor, feats.load(predictor, images[2])[None])[0]
    reply = client.post("/v1/index/score", files={"query": ("q.bin", he.encrypt_query(secret, vector))}, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["root"] == manifest["root"]
    scores = np.concatenate([he.decrypt_scores(secret, base64.b64decode(b["scores"])) for b in reply.json()["blocks"]])
    local = local_query(images[2], index_folder=tmp_path / "idx", secret=tmp_path / "ctx" / "secret", k=4, plain_query=True, device="cpu")
    by_id = {e["id"]: scores[i] for i, e in enumerate(manifest["entries"])}
    assert [h["id"] for h in local["hits"]] == sorted(by_id, key=lambda i: -by_id[i])
    assert all(abs(by_id[h["id"]] - h["score"]) < 1e-3 for h in local["hits"])


def test_rate_limit_window_and_session_expiry(world):
    from medtools.serve.auth import Authenticator, LoginFailed, RateLimiter, TooManyAttempts

    limiter = RateLimiter(max_failures=2, window=0.3)
    limiter.fail("user:a")
    limiter.fail("user:a")
    with pytest.raises(TooManyAttempts):
        limiter.check("user:a", "client:x")
    limiter.check("user:b", "client:x")  # other keys are not limited
    time.sleep(0.35)
    limiter.check("user:a")  # the window slid past the failures
    assert "user:a" not in limiter._failures and "user:b" not in limiter._failures  # no growth
    auth = Authenticator(world / "store.json", audit_log=None, ttl=0.3)
    with pytest.raises(LoginFailed):
        auth.login("alice", "wrong", "c")
    token, session = auth.login("alice", PASSWORD, "c")
    assert auth.session(token) is session and auth.session("forged") is None
    time.sleep(0.35)
    assert auth.session(token) is None  # expired


def test_private_root_removes_folders_of_dead_servers(tmp_path):
    from medtools.serve.app import private_root

    dead = next(pid for pid in range(4_000_000, 4_100_000) if not Path(f"/proc/{pid}").exists())
    left = tmp_path / f"medtools-serve-{dead}-abcd"
    (left / "req-1").mkdir(parents=True)
    (left / "req-1" / "input0.nii.gz").write_bytes(b"an upload")
    alive = tmp_path / f"medtools-serve-{os.getpid()}-efgh"
    alive.mkdir()
    root = private_root(tmp_path)
    assert not left.exists() and alive.exists() and root.is_dir()
    assert root.name.startswith(f"medtools-serve-{os.getpid()}-") and (root.stat().st_mode & 0o777) == 0o700


def test_protect_endpoint_runs_protect_images_on_loaded_models(world, tmp_path):
    """/v1/protect: the attackers and utility model of --models, protected files in the input's
    format, within the eps budget, the metrics `medtools protect` reports."""
    import shutil

    import nibabel as nib
    from fastapi.testclient import TestClient

    from medtools.serve.app import build

    legacy = Path(__file__).parent / "data" / "legacy"
    models = tmp_path / "models"
    models.mkdir()
    for name in ("seg", "reid"):
        shutil.copy(legacy / f"{name}.safetensors", models / f"legacy-{name}.safetensors")
    rng = np.random.default_rng(0)
    uploads = []
    for modality in ("flair", "t1ce"):
        volume = (rng.random((36, 36, 3)) * 1000).astype(np.int16)
        path = tmp_path / f"case_{modality}.nii.gz"
        nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
        uploads.append(("file", (path.name, path.read_bytes())))
    app, state = build(models, world / "store.json", device="cpu")
    try:
        with TestClient(app) as client:
            assert client.post("/v1/protect", files=uploads).status_code == 401
            reply = client.post("/v1/protect?utility=legacy-seg&steps=2&eps=0.05", files=uploads, headers=_login(client))
            assert reply.status_code == 200, reply.text
            body = reply.json()
    finally:
        state.close()
    assert body["metrics"]["attackers"] == ["legacy-reid"] and body["metrics"]["linf"] <= 0.05 + 1e-6
    assert [f["filename"] for f in body["files"]] == ["case_flair_protected.nii.gz", "case_t1ce_protected.nii.gz"]
    out = tmp_path / "p.nii.gz"
    out.write_bytes(base64.b64decode(body["files"][0]["data"]))
    before = np.asarray(nib.load(tmp_path / "case_flair.nii.gz").dataobj)
    after = np.asarray(nib.load(out).dataobj)
    assert after.dtype == before.dtype and after.shape == before.shape and 0 < np.abs(after.astype(int) - before).max() <= 0.05 * 1000


def _own_store(tmp_path):
    """A key store of its own (alice, bob): other tests remove users from the shared one. alice's
    scrypt is slow enough (~0.1 s) that concurrent log-ins overlap it."""
    from medtools.secure.keystore import KeyStore

    store = KeyStore.create(tmp_path / "store.json", log_n=10)
    store.add_user("alice", PASSWORD.encode(), log_n=15)
    store.add_user("bob", PASSWORD.encode(), log_n=10)
    return tmp_path / "store.json"


class _Server:
    """`medtools serve --port 0` on 127.0.0.1 with extra options: address read from stderr,
    stopped with SIGTERM (exit 0 checked), killed if it outlives the test."""

    def __init__(self, world, tmp_path, *options: str):
        self.log = tmp_path / "serve-stderr.txt"
        self.audit = tmp_path / "serve-audit.jsonl"
        args = [sys.executable, "-m", "medtools", "serve", "--models", str(world / "models"), "--store", str(_own_store(tmp_path)), "--port", "0", "--audit-log", str(self.audit), *options]
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "MEDTOOLS_DEVICE": "cpu", "OMP_WAIT_POLICY": "PASSIVE"})

    def __enter__(self) -> str:
        deadline = time.time() + 120
        while time.time() < deadline and self.proc.poll() is None:
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.log.read_text())
            if match:
                return match.group(1)
            time.sleep(0.1)
        self.__exit__()
        raise AssertionError(self.log.read_text())

    def __exit__(self, *exc) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                assert self.proc.wait(timeout=30) == 0, self.log.read_text()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def logins(self) -> list[dict]:
        return [r for r in map(json.loads, self.audit.read_text().splitlines()) if r["action"] == "login"]


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "medtools-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _chunked(data: bytes, size: int = 1024):
    """The body as a generator: httpx sends it with Transfer-Encoding: chunked, no Content-Length."""
    return (data[i : i + size] for i in range(0, len(data), size))


def test_real_server_login_limit_holds_under_concurrency_and_spoofed_forwarded_for(world, tmp_path):
    """40 concurrent wrong passwords → exactly --max-failures tried (401), the rest 429; the locked
    address stays locked with X-Forwarded-For; a chunked body over --max-upload-mb is 413."""
    import httpx

    server = _Server(world, tmp_path, "--max-failures", "3", "--max-upload-mb", "0.01")
    with server as address, httpx.Client(base_url=address, timeout=60) as client:
        token = client.post("/v1/login", json={"user": "bob", "password": PASSWORD}).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        # body limit (10 KiB): declared and chunked alike, on a form upload and on the JSON log-in
        big, content_type = _multipart("big.bin", b"0" * 40_000)
        declared = client.post("/v1/encrypt", content=big, headers={**auth, "Content-Type": content_type})
        chunked = client.post("/v1/encrypt", content=_chunked(big), headers={**auth, "Content-Type": content_type})
        assert declared.status_code == chunked.status_code == 413, chunked.text
        assert "limit" in chunked.json()["detail"] and chunked.json() == declared.json()
        login_body = json.dumps({"user": "bob", "password": PASSWORD, "pad": "x" * 40_000}).encode()
        assert client.post("/v1/login", content=_chunked(login_body), headers={"Content-Type": "application/json"}).status_code == 413
        small, content_type = _multipart("small.txt", b"findings: none\n" * 100)
        assert client.post("/v1/encrypt", content=_chunked(small), headers={**auth, "Content-Type": content_type}).status_code == 200

        def guess(i: int) -> int:
            with httpx.Client(base_url=address, timeout=60) as c:
                return c.post("/v1/login", json={"user": "alice", "password": f"guess {i}"}).status_code

        with ThreadPoolExecutor(40) as pool:
            codes = list(pool.map(guess, range(40)))
        assert sorted(codes) == [401] * 3 + [429] * 37
        assert sum(r["result"] == "denied" for r in server.logins()) == 3  # only three passwords tried
        # the address is locked: a made-up X-Forwarded-For does not free it, even for bob's right password
        for forwarded in ("203.0.113.7", "127.0.0.2", "unknown"):
            spoofed = client.post("/v1/login", json={"user": "bob", "password": PASSWORD}, headers={"X-Forwarded-For": forwarded})
            assert spoofed.status_code == 429, (forwarded, spoofed.text)
        assert {r["client"] for r in server.logins()} == {"127.0.0.1"}


def test_real_server_trusts_forwarded_for_only_from_forwarded_allow_ips(world, tmp_path):
    import httpx

    from conftest import run_cli

    refused = run_cli("serve", "--models", world / "models", "--store", world / "store.json", "--port", "0", "--forwarded-allow-ips", "localhost")
    assert refused.returncode == 2 and "--forwarded-allow-ips" in refused.stderr and "listening" not in refused.stderr
    server = _Server(world, tmp_path, "--max-failures", "1", "--forwarded-allow-ips", "127.0.0.1")
    with server as address, httpx.Client(base_url=address, timeout=60) as client:
        behind = {"X-Forwarded-For": "198.51.100.1"}
        assert client.post("/v1/login", json={"user": "alice", "password": "wrong"}, headers=behind).status_code == 401
        assert client.post("/v1/login", json={"user": "bob", "password": PASSWORD}, headers=behind).status_code == 429
        # another client behind the same proxy is another address
        assert client.post("/v1/login", json={"user": "bob", "password": PASSWORD}, headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 200
    assert [(r["client"], r["result"]) for r in server.logins()] == [("198.51.100.1", "denied"), ("198.51.100.1", "rate-limited"), ("198.51.100.2", "ok")]


def test_login_attempts_are_counted_before_the_password_is_tried():
    from medtools.serve.auth import RateLimiter, TooManyAttempts

    limiter = RateLimiter(max_failures=2)
    first, second = limiter.begin("user:a", "client:x"), limiter.begin("user:a", "client:y")
    with pytest.raises(TooManyAttempts):  # two attempts still running fill the limit
        limiter.begin("user:a", "client:z")
    limiter.failed(first)
    limiter.succeeded(second, "user:a", "client:y", clear=("user:a",))  # the right password forgets failures
    assert "client:y" not in limiter._failures and len(limiter._failures["client:x"]) == 1
    third = limiter.begin("user:a", "client:x")
    limiter.begin("user:b", "client:z")
    with pytest.raises(TooManyAttempts):  # client:x: one failure and one running attempt
        limiter.begin("user:c", "client:x")
    limiter.succeeded(third, "user:a", "client:x")
    limiter.begin("user:c", "client:x")


# ---------------------------------------------------------------- serve as a thin adapter over medtools.api


def test_version_endpoints_are_read_from_the_routes(served):
    """/v1/version lists exactly the /v1 paths the app routes (protect included), no hand-kept list."""
    client, _ = served
    endpoints = client.get("/v1/version").json()["endpoints"]
    paths = {p[len("/v1/"):] for p in client.get("/openapi.json").json()["paths"] if p.startswith("/v1/")}
    assert set(endpoints) == paths and len(endpoints) == len(paths)
    assert {"health", "version", "login", "logout", "me", "segment", "protect", "encrypt", "decrypt"} <= paths
    assert "index" not in paths  # no --index: its router is left out, and so is its name


@needs_segment_images
def test_segment_jpeg_gives_a_lossless_png_label_map_as_the_cli(served, world, tmp_path):
    """A JPEG upload's label map is a PNG (never a JPEG: label values stay exact), the same labels
    the CLI's `medtools segment` writes for that file."""
    client, _ = served
    headers = _login(client)
    rng = np.random.default_rng(1)
    picture = (rng.random((48, 40)) * 120).astype(np.uint8)
    picture[10:30, 8:24] += 120
    jpeg = write_image(Image(picture, format="jpeg"), tmp_path / "scan.jpg")
    response = client.post("/v1/segment", files={"file": ("scan.jpg", jpeg.read_bytes())}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png" and 'filename="scan_seg.png"' in response.headers["content-disposition"]
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "served_seg.png").write_bytes(response.content)
    label = read_image(tmp_path / "served_seg.png")
    assert label.array.shape == (48, 40) and label.array.dtype == np.uint8 and set(np.unique(label.array)) <= {0, 1}
    from medtools.brain.cases import resolve_cases
    from medtools.brain.segment import segment_cases

    [(_, written)] = list(segment_cases(resolve_cases([str(jpeg)]), world / "models" / "tiny-seg.safetensors", tmp_path / "cli", device="cpu", workers=0))
    assert written[0].suffix == ".png" and np.array_equal(read_image(written[0]).array, label.array)
    page = client.post("/v1/segment?response=json", files={"file": ("scan.jpeg", jpeg.read_bytes())}, headers=headers).json()
    assert page["filename"] == "scan_seg.png" and page["format"] == "png"
    assert base64.b64decode(page["label_map"]) == response.content


@needs_segment_images
def test_each_request_runs_in_its_own_context_from_the_service_settings(served, world):
    """Two services in one process, one with nan_policy=zero: concurrent requests each follow
    their service's settings (the ctx built per request), and nothing leaks into the caller."""
    import io as _io

    from fastapi.testclient import TestClient

    from medtools.core import context
    from medtools.core.context import RunContext
    from medtools.serve.app import ServeState, create_app

    _, state = served
    strict = TestClient(create_app(ServeState(models=state.models, auth=state.auth, tmp_root=state.tmp_root, settings=RunContext(device="cpu"))))
    lenient = TestClient(create_app(ServeState(models=state.models, auth=state.auth, tmp_root=state.tmp_root, settings=RunContext(device="cpu", nan_policy="zero"))))
    headers = _login(strict)
    volume = np.random.default_rng(2).random((48, 40)).astype(np.float32)
    volume[3, 4] = np.nan
    buffer = _io.BytesIO()
    np.save(buffer, volume)
    upload = buffer.getvalue()

    def ask(client) -> tuple[int, str]:
        reply = client.post("/v1/segment", files={"file": ("scan.npy", upload)}, headers=headers)
        return reply.status_code, reply.text if reply.status_code != 200 else reply.headers["content-disposition"]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, [strict, lenient] * 3))
    for code, text in answers[0::2]:
        assert code == 422 and "scan.npy: 1 non-finite voxels" in text
    for code, text in answers[1::2]:
        assert code == 200 and 'filename="scan_seg.npy"' in text
    assert context.current() == RunContext()  # the test's own context is untouched
    assert not any(state.tmp_root.iterdir())


def test_uploads_are_decoded_in_memory_where_the_reader_can(tmp_path, world):
    """PNG/JPEG/NPY/NPZ uploads never touch the disk; NIfTI (a path-only reader) goes through a
    private per-request folder that is removed afterwards; errors name the upload."""
    import io as _io

    from medtools.core.errors import InputError
    from medtools.serve.uploads import RequestFiles

    missing = tmp_path / "no-such-root"  # any temporary folder would fail to be made here
    files = RequestFiles(missing)
    png = files.decode("a.png", (world / "slice0.png").read_bytes())
    assert png.format == "png" and png.array.shape == (48, 40) and png.meta["path"] == "a.png"
    buffer = _io.BytesIO()
    np.save(buffer, np.arange(12, dtype=np.int16).reshape(3, 4))
    assert files.decode("x.npy", buffer.getvalue()).array.tolist() == np.arange(12).reshape(3, 4).tolist()
    buffer = _io.BytesIO()
    np.savez(buffer, array=np.ones((2, 2)), affine=np.eye(4))
    assert files.decode("x.npz", buffer.getvalue()).affine.tolist() == np.eye(4).tolist()
    with pytest.raises(InputError, match=r"^cannot read b\.png: .*b\.png"):
        files.decode("b.png", b"not a png")
    assert files.encode(Image(np.eye(4, dtype=np.uint8), format="png"), "png", "l.png").startswith(b"\x89PNG")
    assert not missing.exists()
    root = tmp_path / "root"
    root.mkdir()
    files = RequestFiles(root)
    volume = files.decode("case.nii.gz", (world / "case.nii.gz").read_bytes())
    assert volume.array.shape == (40, 36, 6) and volume.meta["source"] == "case.nii.gz"
    [folder] = list(root.iterdir())
    assert (folder.stat().st_mode & 0o777) == 0o700
    with pytest.raises(InputError) as caught:
        files.decode("broken.nii.gz", b"not a nifti")
    assert "broken.nii.gz" in str(caught.value) and str(root) not in str(caught.value)
    files.close()
    assert not any(root.iterdir())


def test_encrypt_and_decrypt_are_the_cli_container(served, world):
    """What /v1/encrypt writes, the API (and so `medtools decrypt --store`) opens, and the other way round."""
    from medtools import api

    client, _ = served
    headers = _login(client)
    plain = b"findings: none\n" * 300
    sealed = client.post("/v1/encrypt", files={"file": ("note.txt", plain)}, data={"user": ["alice"]}, headers=headers)
    assert sealed.status_code == 200 and sealed.headers["x-medtools-recipients"] == "alice"
    assert api.decrypt_bytes(sealed.content, store=world / "store.json", user="alice", password=PASSWORD) == plain
    from_cli = api.encrypt_bytes(plain, store=world / "store.json", users=["alice"], name="cli.txt")
    opened = client.post("/v1/decrypt", files={"file": ("cli.txt.mte", from_cli)}, headers=headers)
    assert opened.status_code == 200 and opened.content == plain and 'filename="cli.txt"' in opened.headers["content-disposition"]


def test_routers_are_adapters_over_medtools_api():
    """Every router reaches the families only through medtools.api (core and serve aside)."""
    import ast

    routers = Path(__file__).resolve().parents[1] / "medtools" / "serve" / "routers"
    families = {"brain", "synth", "secure", "cls", "collab", "index", "phantom", "utility", "nets", "explain"}
    found = sorted(p.name for p in routers.glob("*.py"))
    assert {"service.py", "auth.py", "brain.py", "secure.py", "cls.py", "index.py", "explain.py"} <= set(found)
    bad = []
    for path in routers.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "medtools" and len(n.split(".")) > 1 and n.split(".")[1] in families]
    assert not bad, bad


def test_index_score_reply_is_the_cli_wire_format(served, world, tmp_path):
    """/v1/index/score?response=file answers the bytes `medtools index score` writes: the CLI's
    `index rank` turns them into the hits of a local `index query`; the JSON form is the same reply."""
    pytest.importorskip("tenseal")
    pytest.importorskip("medtools.index.store")
    from fastapi.testclient import TestClient

    from medtools.core.inputs import expand_inputs
    from medtools.index import he
    from medtools.index.store import build as build_index
    from medtools.index.store import encrypt_query_file, rank_file, score_file
    from medtools.serve.app import ServeState, create_app
    from medtools.serve.backends import IndexService

    _, state = served
    he.keygen(tmp_path / "ctx", preset="n4096")
    model = world / "models" / "tiny-seg.safetensors"
    images = [world / f"slice{i}.png" for i in range(4)]
    build_index(expand_inputs([str(p) for p in images]), model=model, public=tmp_path / "ctx" / "public", output=tmp_path / "idx", device="cpu")
    client = TestClient(create_app(ServeState(models=state.models, auth=state.auth, index=IndexService.open(tmp_path / "idx", tmp_path / "ctx" / "public"), tmp_root=state.tmp_root)))
    headers = _login(client)
    assert {"index", "index/score"} <= set(client.get("/v1/version").json()["endpoints"])
    encrypt_query_file(images[1], index_folder=tmp_path / "idx", secret=tmp_path / "ctx" / "secret", output=tmp_path / "q.bin", device="cpu")
    query = (tmp_path / "q.bin").read_bytes()
    reply = client.post("/v1/index/score?response=file", files={"query": ("q.bin", query)}, headers=headers)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/octet-stream"
    (tmp_path / "s.bin").write_bytes(reply.content)
    served_hits = rank_file(tmp_path / "s.bin", index_folder=tmp_path / "idx", secret=tmp_path / "ctx" / "secret", k=4)["hits"]
    score_file(tmp_path / "q.bin", index_folder=tmp_path / "idx", public=tmp_path / "ctx" / "public", output=tmp_path / "cli.bin")
    cli_hits = rank_file(tmp_path / "cli.bin", index_folder=tmp_path / "idx", secret=tmp_path / "ctx" / "secret", k=4)["hits"]
    assert [h["id"] for h in served_hits] == [h["id"] for h in cli_hits]
    assert all(abs(a["score"] - b["score"]) < 1e-3 for a, b in zip(served_hits, cli_hits))
    as_json = client.post("/v1/index/score", files={"query": ("q.bin", query)}, headers=headers).json()
    from_file = IndexService.reply_json(reply.content)
    assert {k: as_json[k] for k in ("root", "key_id", "entries")} == {k: from_file[k] for k in ("root", "key_id", "entries")}
    assert [(b["block"], b["count"]) for b in as_json["blocks"]] == [(b["block"], b["count"]) for b in from_file["blocks"]]
    assert as_json["entries"] == 4 and sum(b["count"] for b in as_json["blocks"]) == 4
    wrong = client.post("/v1/index/score", files={"query": ("q.bin", b"not a query")}, headers=headers)
    assert wrong.status_code == 422


def test_explain_is_the_cli_map(served, world, tmp_path):
    """/v1/explain on a NIfTI: the float map `medtools explain` writes for the same file and
    checkpoint, its numbers, and an 8-bit preview on the segment preview's grid."""
    import gzip

    import nibabel as nib

    from medtools.explain.explain import explain_files

    client, _ = served
    headers = _login(client)
    upload = {"file": ("case.nii.gz", (world / "case.nii.gz").read_bytes())}
    assert client.post("/v1/explain", files=upload).status_code == 401
    answer = client.post("/v1/explain?model=tiny-seg&method=occlusion", files=upload, headers=headers)  # the tiny net's Grad-CAM is all zero
    assert answer.status_code == 200, answer.text
    answer = answer.json()
    assert answer["model"] == "tiny-seg" and answer["method"] == "occlusion" and answer["filename"] == "case_occlusion.nii.gz"
    served_map = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(answer["map"]))).dataobj, np.float32)
    assert explain_files([world / "case.nii.gz"], world / "models" / "tiny-seg.safetensors", tmp_path / "cli", method="occlusion", device="cpu") == 0
    cli = nib.load(str(tmp_path / "cli" / "case_occlusion.nii.gz"))
    assert served_map.shape == cli.shape and np.allclose(served_map, np.asarray(cli.dataobj, np.float32), atol=1e-5)
    assert served_map.max() > 0
    assert [t["target"] for t in answer["targets"]]  # the CLI's per-target numbers
    preview = answer["preview"]
    assert preview["shape"] == [6, 40, 36]
    saliency = np.frombuffer(base64.b64decode(preview["saliency"]), np.uint8).reshape(preview["shape"])
    top = served_map.max(axis=-1) if served_map.ndim == 4 else served_map
    assert np.abs(saliency.astype(float) - np.moveaxis(np.clip(top / top.max(), 0, 1) * 255, 2, 0)).max() <= 1
    as_file = client.post("/v1/explain?response=file", files=upload, headers=headers)
    assert as_file.status_code == 200 and json.loads(as_file.headers["x-medtools-explain"])["model"] == "tiny-seg"
    assert client.post("/v1/explain?method=nope", files=upload, headers=headers).status_code == 422


def test_cookie_authenticated_posts_need_the_page_header(served, world):
    """CSRF: a POST authenticated by the session cookie alone is 403 without X-Medtools-Request;
    with it, or with a bearer token, it works; GETs on the cookie need nothing."""
    client, _ = served
    client.cookies.clear()
    token = client.post("/v1/login", json={"user": "alice", "password": PASSWORD}).json()["token"]
    upload = {"file": ("report.txt", (world / "report.txt").read_bytes())}
    try:
        assert client.get("/v1/me").status_code == 200  # the cookie
        refused = client.post("/v1/encrypt", files=upload)
        assert refused.status_code == 403 and "X-Medtools-Request" in refused.json()["detail"]
        assert client.post("/v1/encrypt", files=upload, headers={"X-Medtools-Request": "page"}).status_code == 200
        client.cookies.clear()
        assert client.post("/v1/encrypt", files=upload, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        client.cookies.clear()


def test_segment_a_zip_of_a_dicom_series(served, tmp_path):
    """A zip of one DICOM series (files in any order, in a sub-folder) is read as the series and
    segmented: a NIfTI label map of the series' shape; a zip of nothing usable is 422."""
    import io
    import zipfile

    from test_core_io import write_dicom_series

    client, _ = served
    headers = _login(client)
    folder = write_dicom_series(tmp_path / "series")
    expected = read_image(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"study/series/{path.name}")
    answer = client.post("/v1/segment?response=json", files={"file": ("series.zip", buffer.getvalue())}, headers=headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["format"] == "nifti" and body["stats"]["shape"] == list(expected.array.shape)
    assert body["preview"]["shape"] == [expected.array.shape[2], *expected.array.shape[:2]]
    bad = io.BytesIO()
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("../../evil.txt", b"not dicom")
    refused = client.post("/v1/segment", files={"file": ("bad.zip", bad.getvalue())}, headers=headers)
    assert refused.status_code == 422 and "bad.zip" in refused.json()["detail"]
