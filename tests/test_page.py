"""The doctor's page in a real browser: headless Chromium, driven over the DevTools protocol,
against a real `medtools serve` on 127.0.0.1.

The client is a few lines over `websocket-client` (the dev extra): Debian's `chromium` is the
browser (Playwright's and Selenium's own browser downloads are not reachable offline, and the
protocol is all the test needs). Set MEDTOOLS_PAGE_SCREENSHOTS=1 to refresh docs/img/page.png.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
websocket = pytest.importorskip("websocket", reason="websocket-client (the dev extra) drives Chromium")

from test_serve import CLS_CONFIG, PASSWORD, _has_cls, _Server, world  # noqa: E402,F401  (world: the tiny seg model, key store, case.nii.gz)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions", "--window-size=1100,1300", "--remote-debugging-port=0"]


class Browser:
    """Headless Chromium on one page: `call` sends a DevTools command and waits for its answer,
    `js` evaluates an expression (awaiting promises) and returns its value."""

    def __init__(self, url: str, tmp: Path):
        self.profile = tempfile.mkdtemp(dir=tmp, prefix="chromium-")
        self.log = tmp / "chromium-stderr.txt"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", url], stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 60
        port = None
        while port is None and time.time() < deadline and self.proc.poll() is None:
            match = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", self.log.read_text(errors="replace"))
            port = match.group(1) if match else time.sleep(0.1)
        if port is None:
            self.close()
            raise AssertionError("chromium did not start: " + self.log.read_text(errors="replace")[-2000:])
        import httpx

        pages = []
        while not pages and time.time() < deadline:
            pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json() if t["type"] == "page"]
            time.sleep(0.1)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                if self.js(expression):
                    return
            except AssertionError:  # the page is navigating: its context is gone for a moment
                pass
            if time.time() > deadline:
                shown = self.js("[...document.querySelectorAll('[role=status],[role=alert]')].map((e) => e.id + ': ' + e.textContent).join('; ')")
                raise AssertionError(f"timed out waiting for {expression} ({shown})")
            time.sleep(0.05)

    def upload(self, selector: str, *paths: Path) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])

    def pixels(self, canvas: str) -> np.ndarray:
        """The canvas's RGBA pixels as (rows, cols, 4) uint8."""
        width, height, data = self.js(
            f"(() => {{ const c = document.getElementById('{canvas}'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let s = ''; for (let i = 0; i < d.length; i++) s += String.fromCharCode(d[i]); return [c.width, c.height, btoa(s)]; })()")
        return np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width, 4)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]))

    def close(self) -> None:
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)


KEY = bytes(range(7, 39))  # the keyed cls model's 256-bit key (hex in page_world/cls.key)


@pytest.fixture(scope="module")
def page_world(world, tmp_path_factory):
    """world's models plus, with the cls family, one built behind the block cipher (16×16 blocks,
    the fingerprint of KEY in its config, as `cls-train --encryption block --key` records it); the
    key file the page reads, a wrong one, and a 32×32 grey picture (the model's size)."""
    from medtools.core.io import Image, write_image
    from medtools.core.secrets import key_id

    root = tmp_path_factory.mktemp("page")
    shutil.copytree(world / "models", root / "models")
    for name, key in (("cls.key", KEY), ("wrong.key", bytes(32))):
        (root / name).write_text(key.hex() + "\n")
        (root / name).chmod(0o600)
    if _has_cls():
        import torch

        from medtools.core import ckpt, registry

        torch.manual_seed(1)
        kind = registry.get("cls")
        net = registry.resolve(kind.builder)(**registry.check_config(kind, CLS_CONFIG))
        config = {**CLS_CONFIG, "encryption": "block", "block_size": 16, "key_id": key_id(KEY)}
        ckpt.save(root / "models" / "tiny-keyed-cls.safetensors", net.state_dict(), kind="cls", config=config, norm={"method": "unit"})
    rng = np.random.default_rng(3)
    write_image(Image((rng.random((32, 32)) * 255).astype(np.uint8), format="png"), root / "small.png")
    return root


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """One private Orthanc (tests/test_pacs.py's) holding one 6-slice MR series of patient P001, and
    the service's password file for it; None where Orthanc is not installed."""
    from test_pacs import ORTHANC, PLUGIN, Orthanc, write_series

    if ORTHANC is None or PLUGIN is None:
        yield None
        return
    import pydicom

    from medtools import api

    root = tmp_path_factory.mktemp("orthanc")
    server = Orthanc(root / "pacs", "pacs", "alice", "alice-secret")
    try:
        secret = root / "pacs.pw"
        secret.write_text("alice-secret\n")
        secret.chmod(0o600)
        paths = write_series(root / "series", slices=6, size=32)
        stored = api.pacs_push(server.url, [pydicom.dcmread(p) for p in paths], user="alice", password="alice-secret")
        assert {r["status"] for r in stored} == {"stored"}, stored
        yield {"url": server.url, "options": ["--pacs", server.url, "--pacs-user", "alice", "--pacs-password-file", str(secret)], "paths": paths}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def search_index(page_world, tmp_path_factory):
    """With TenSEAL: default (N = 8192) keys and an encrypted index of 6 phantom chest X-rays built
    with page_world's tiny seg model (`medtools index keygen` and `index build`); else None."""
    try:
        import tenseal  # noqa: F401
    except ModuleNotFoundError:
        return None
    from conftest import run_cli

    from medtools.phantom.generate import write_cxr_phantoms

    root = tmp_path_factory.mktemp("index")
    write_cxr_phantoms(root / "img", n=6, patients=3, size=32, seed=0)
    run_cli("index", "keygen", "-o", root / "ctx", check=True)
    built = run_cli("index", "build", root / "img", "-m", page_world / "models" / "tiny-seg.safetensors", "--public", root / "ctx" / "public", "-o", root / "idx", "--json", check=True)
    return {"root": root, "built": json.loads(built.stdout), "options": ["--index", str(root / "idx"), "--public", str(root / "ctx" / "public"), "--index-secret", str(root / "ctx" / "secret")]}


@pytest.fixture(scope="module")
def service(page_world, orthanc, search_index, tmp_path_factory):
    """One `medtools serve` (page_world's models; the Orthanc as its PACS and the encrypted index with
    its secret context when there are) and one headless Chromium on its page, for the module's
    tests; both stopped at its end."""
    tmp = tmp_path_factory.mktemp("service")
    options = (orthanc["options"] if orthanc else []) + (search_index["options"] if search_index else [])
    with _Server(page_world, tmp, *options) as address:
        browser = Browser(address + "/", tmp)
        try:
            yield address, browser
        finally:
            browser.close()


def fresh(browser: Browser, address: str) -> None:
    """The page as a new visitor sees it: any session ended, the page loaded again, the log-in form up."""
    browser.wait(f"location.origin === {json.dumps(address)} && document.readyState === 'complete'")
    browser.js("fetch('/v1/logout', {method: 'POST', headers: {'X-Medtools-Request': 'page'}}).then((r) => r.status)")
    browser.js("window.leaving = 1")
    browser.call("Page.navigate", url=address + "/")
    browser.wait("window.leaving === undefined && document.readyState === 'complete' && !document.getElementById('login-section').hidden")


def log_in(browser: Browser) -> None:
    _set(browser, "user", "alice")
    _set(browser, "password", PASSWORD)
    browser.js("document.getElementById('login-button').click()")
    browser.wait("!document.getElementById('app').hidden && document.getElementById('model').value !== ''")


def press(browser: Browser, key: str, code: int, text: str = "") -> None:
    """A key pressed and released on the focused element, as Chromium's own keyboard events."""
    browser.call("Input.dispatchKeyEvent", type="keyDown", key=key, code=key, windowsVirtualKeyCode=code, **({"text": text} if text else {}))
    browser.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=key, windowsVirtualKeyCode=code)


def answer_models(address: str) -> list[dict]:
    import httpx

    return httpx.get(address + "/v1/version", timeout=30).json()["models"]


def grey_of(rgba: np.ndarray) -> np.ndarray:
    return (rgba[..., 0] == rgba[..., 1]) & (rgba[..., 1] == rgba[..., 2])


def shoot(browser: Browser, tmp: Path, name: str) -> None:
    """A screenshot of the page; copied to docs/img/ with MEDTOOLS_PAGE_SCREENSHOTS=1."""
    shot = tmp / name
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MEDTOOLS_PAGE_SCREENSHOTS"):
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMG / name)


def _set(browser: Browser, element: str, value) -> None:
    """Sets an input's value and fires `input` as a user's change does."""
    browser.js(f"(() => {{ const e = document.getElementById('{element}'); e.value = {json.dumps(str(value))}; e.dispatchEvent(new Event('input', {{bubbles: true}})); }})()")


def test_page_in_chromium_logs_in_segments_and_draws_the_overlay(world, page_world, service, tmp_path):  # noqa: F811
    import httpx

    started = time.time()
    address, browser = service
    fresh(browser, address)
    # the page's Content-Security-Policy forbids inline scripts: one injected now does not run
    policy = httpx.get(address + "/", timeout=30).headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    browser.wait("document.readyState === 'complete' && !!document.getElementById('login-form')")
    assert browser.js("(() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1'; document.body.appendChild(s); return window.injected === undefined; })()") is True
    print(f"page loaded after {time.time() - started:.1f} s")
    # a wrong password: the message shows, the page stays on the form, nothing in localStorage
    _set(browser, "user", "alice")
    _set(browser, "password", "wrong")
    browser.js("document.getElementById('login-button').click()")
    browser.wait("document.getElementById('login-error').textContent !== ''")
    assert browser.js("document.getElementById('app').hidden") is True
    _set(browser, "password", PASSWORD)
    browser.js("document.getElementById('login-button').click()")
    browser.wait("!document.getElementById('app').hidden")
    assert browser.js("document.getElementById('model').value") == "tiny-seg"  # the models are listed before the app shows
    assert "alice" in browser.js("document.getElementById('who').textContent")
    assert browser.js("localStorage.length") == 0  # the session is an HttpOnly cookie, not a script-readable token
    assert browser.js("document.cookie") == ""
    # a POST riding on the cookie alone (what a forged cross-site request would be) is refused
    forged = "fetch('/v1/encrypt', {method: 'POST', body: (() => { const f = new FormData(); f.append('file', new Blob(['x']), 'x.txt'); return f; })()})"
    assert browser.js(forged + ".then((r) => r.status)") == 403
    assert browser.js(forged.replace("method: 'POST'", "method: 'POST', headers: {'X-Medtools-Request': 'page'}") + ".then((r) => r.status)") == 200

    browser.upload("#segment-files", world / "case.nii.gz")
    browser.js("document.getElementById('segment-button').click()")
    browser.wait("!document.getElementById('viewer-box').hidden", timeout=90)
    print(f"overlay shown after {time.time() - started:.1f} s")
    status = browser.js("document.getElementById('segment-status').textContent")
    assert status.startswith("Done"), status
    assert "mL" in browser.js("document.getElementById('volume').textContent")

    # the label map the service gives for the same file, to know where tumour is
    with httpx.Client(base_url=address, timeout=60) as client:
        token = client.post("/v1/login", json={"user": "alice", "password": PASSWORD}).json()["token"]
        answer = client.post("/v1/segment?response=json", headers={"Authorization": f"Bearer {token}"},
                             files={"file": ("case.nii.gz", (world / "case.nii.gz").read_bytes())}).json()
    depth, rows, cols = answer["preview"]["shape"]
    labels = np.frombuffer(base64.b64decode(answer["preview"]["labels"]), np.uint8).reshape(depth, rows, cols)
    z = int(browser.js("+document.getElementById('slice').value"))
    assert z == int(np.argmax((labels != 0).sum(axis=(1, 2))))  # it starts on the slice with the most tumour
    tumour = labels[z] != 0
    assert 0 < tumour.sum() < tumour.size  # the fixture's model labels part of the slice

    half = browser.pixels("viewer").astype(int)
    assert half.shape[:2] == (rows, cols)
    grey = grey_of(half)
    assert not grey[tumour].any()  # every tumour pixel is coloured ...
    assert grey[~tumour].all()  # ... and no background pixel is
    assert (half[..., 0][tumour] > half[..., 1][tumour]).all()  # label 1 is red

    # the legend: one row per label with its colour, voxels and mL
    legend = browser.js("[...document.querySelectorAll('#legend tr')].map((tr) => [tr.querySelector('.swatch').style.background, ...[...tr.children].slice(1).map((td) => td.textContent)])")
    counts, voxel_ml = answer["stats"]["labels"], answer["stats"]["voxel_ml"]
    assert legend == [["rgb(255, 0, 0)", f"label {v}", str(n), f"{n * voxel_ml:.2f} mL"] for v, n in counts.items() if v != "0"]
    # keyboard slice scrolling on the focused view
    browser.js("document.getElementById('viewer').focus()")
    for key, code in (("ArrowDown", 40), ("ArrowDown", 40), ("ArrowUp", 38)):
        browser.call("Input.dispatchKeyEvent", type="keyDown", key=key, code=key, windowsVirtualKeyCode=code)
        browser.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=key, windowsVirtualKeyCode=code)
    moved = max(min(min(z + 1, depth - 1) + 1, depth - 1) - 1, 0)
    assert int(browser.js("+document.getElementById('slice').value")) == moved != z
    _set(browser, "slice", z)

    # the coronal and sagittal views through the cursor, and a click moving it
    row, col = browser.js("[cursor.row, cursor.col]")
    rs, cs = np.nonzero(tumour)
    assert [row, col] == [(rs.min() + rs.max()) // 2, (cs.min() + cs.max()) // 2]  # the middle of the slice's tumour

    def planes_match(row: int, col: int) -> None:
        for canvas, mask in (("viewer-coronal", labels[:, row, :] != 0), ("viewer-sagittal", labels[:, :, col] != 0)):
            rgba = browser.pixels(canvas).astype(int)
            assert rgba.shape[:2] == mask.shape, canvas
            assert not grey_of(rgba)[mask].any() and grey_of(rgba)[~mask].all(), canvas

    planes_match(row, col)

    def click(canvas: str, y: int, x: int) -> None:
        left, top, width, height, w, h = browser.js(f"(() => {{ const c = document.getElementById('{canvas}'); const r = c.getBoundingClientRect(); return [r.x, r.y, r.width, r.height, c.width, c.height]; }})()")
        at = {"x": left + (x + 0.5) * width / w, "y": top + (y + 0.5) * height / h}
        browser.call("Input.dispatchMouseEvent", type="mousePressed", button="left", buttons=1, clickCount=1, **at)
        browser.call("Input.dispatchMouseEvent", type="mouseReleased", button="left", buttons=0, clickCount=1, **at)

    far = np.argwhere(labels[z] == 0)[0] if (labels[z] == 0).any() else (0, 0)
    click("viewer", int(far[0]), int(far[1]))
    assert browser.js("[cursor.row, cursor.col]") == [int(far[0]), int(far[1])]
    planes_match(int(far[0]), int(far[1]))

    # each plane is as high as its millimetres say (0.9 × 0.9 mm pixels, 2 mm slices), not its voxel count,
    # and its crosshairs cross on the cursor's voxel
    assert answer["preview"]["spacing"] == pytest.approx([2.0, 0.9, 0.9], rel=1e-6)

    def rect(element: str) -> list[float]:
        return browser.js(f"(() => {{ const r = document.getElementById('{element}').getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }})()")

    def crosshairs_at(canvas: str, y: int, x: int) -> None:
        left, top, width, height = rect(canvas)
        h, w = browser.js(f"[document.getElementById('{canvas}').height, document.getElementById('{canvas}').width]")
        line_h, line_v = rect(canvas + "-h"), rect(canvas + "-v")
        assert abs(line_h[1] + line_h[3] / 2 - (top + (y + 0.5) * height / h)) <= 1, (canvas, line_h, y)
        assert abs(line_v[0] + line_v[2] / 2 - (left + (x + 0.5) * width / w)) <= 1, (canvas, line_v, x)
        assert line_h[2] == pytest.approx(width, abs=1) and line_v[3] == pytest.approx(height, abs=1)  # across the whole view

    for canvas, aspect in (("viewer", rows / cols), ("viewer-coronal", depth * 2.0 / (cols * 0.9)), ("viewer-sagittal", depth * 2.0 / (rows * 0.9))):
        _, _, width, height = rect(canvas)
        assert abs(height / width - aspect) <= 1.5 / width, (canvas, width, height, aspect)
    crosshairs_at("viewer", int(far[0]), int(far[1]))
    crosshairs_at("viewer-coronal", z, int(far[1]))
    crosshairs_at("viewer-sagittal", z, int(far[0]))
    # the keyboard on the coronal view moves its row: the axial and sagittal crosshairs follow
    browser.js("document.getElementById('viewer-coronal').focus()")
    next_row = min(int(far[0]) + 1, rows - 1)
    browser.call("Input.dispatchKeyEvent", type="keyDown", key="ArrowDown", code="ArrowDown", windowsVirtualKeyCode=40)
    browser.call("Input.dispatchKeyEvent", type="keyUp", key="ArrowDown", code="ArrowDown", windowsVirtualKeyCode=40)
    assert browser.js("[cursor.row, cursor.col]") == [next_row, int(far[1])]
    crosshairs_at("viewer", next_row, int(far[1]))
    crosshairs_at("viewer-sagittal", z, next_row)
    planes_match(next_row, int(far[1]))
    browser.js("document.getElementById('viewer-sagittal').focus()")
    browser.call("Input.dispatchKeyEvent", type="keyDown", key="ArrowLeft", code="ArrowLeft", windowsVirtualKeyCode=37)
    browser.call("Input.dispatchKeyEvent", type="keyUp", key="ArrowLeft", code="ArrowLeft", windowsVirtualKeyCode=37)
    assert browser.js("cursor.col") == max(int(far[1]) - 1, 0)
    browser.js("(() => { const c = document.getElementById('crosshairs'); c.checked = false; c.dispatchEvent(new Event('change')); })()")
    assert browser.js("document.getElementById('viewer-h').hidden && document.getElementById('viewer-coronal-v').hidden") is True
    browser.js("(() => { const c = document.getElementById('crosshairs'); c.checked = true; c.dispatchEvent(new Event('change')); })()")
    click("viewer-sagittal", depth - 1, 3)  # a click on the sagittal view: its slice and row
    assert browser.js("[+document.getElementById('slice').value, cursor.row]") == [depth - 1, 3]
    assert (browser.pixels("viewer").astype(int)[..., 0] != half[..., 0]).any()  # the axial view moved
    _set(browser, "slice", z)
    click("viewer", row, col)
    assert (browser.pixels("viewer") == half).all()

    _set(browser, "opacity", 100)
    full = browser.pixels("viewer").astype(int)
    assert (full[tumour][:, :3] == [255, 0, 0]).all()  # fully opaque overlay: the label colour itself
    assert (full[~tumour] == half[~tumour]).all()  # the background does not change with opacity
    _set(browser, "opacity", 50)

    # window/level: the automatic window is the service's 8-bit rendering ...
    image = np.frombuffer(base64.b64decode(answer["preview"]["image"]), np.uint8).reshape(depth, rows, cols)[z]
    assert (half[..., 2][~tumour] == image[~tumour]).all()
    assert browser.js("document.getElementById('wl-preset').value") == "auto"
    steps = np.frombuffer(base64.b64decode(answer["preview"]["values"]), "<u2").reshape(depth, rows, cols)[z]
    lo, hi = answer["preview"]["value_range"]
    raw = lo + steps * ((hi - lo) / 65535)

    def expected(window: float, level: float) -> np.ndarray:
        return np.clip(np.round((raw - (level - window / 2)) / window * 255), 0, 255)

    # ... the full range and the CT presets are computed from the raw intensities
    browser.js("(() => { const s = document.getElementById('wl-preset'); s.value = 'full'; s.dispatchEvent(new Event('change')); })()")
    full_range = browser.pixels("viewer").astype(int)
    assert np.abs(full_range[..., 2][~tumour] - expected(hi - lo, (hi + lo) / 2)[~tumour]).max() <= 1
    assert (full_range[..., 2][~tumour] != half[..., 2][~tumour]).any()  # a different window shows different greys
    browser.js("(() => { const s = document.getElementById('wl-preset'); s.value = 'ct-bone'; s.dispatchEvent(new Event('change')); })()")
    assert browser.js("[+document.getElementById('window').value, +document.getElementById('level').value]") == [2000, 500]
    browser.js("(() => { const s = document.getElementById('wl-preset'); s.value = 'full'; s.dispatchEvent(new Event('change')); })()")
    # dragging on the image: to the right widens the window, up raises the level
    box = browser.js("(() => { const r = document.getElementById('viewer').getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    before = browser.js("[+document.getElementById('window').value, +document.getElementById('level').value]")
    browser.call("Input.dispatchMouseEvent", type="mousePressed", x=box[0], y=box[1], button="left", buttons=1, clickCount=1)
    browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=box[0] + 60, y=box[1] - 40, button="left", buttons=1)
    browser.call("Input.dispatchMouseEvent", type="mouseReleased", x=box[0] + 60, y=box[1] - 40, button="left", buttons=0, clickCount=1)
    after = browser.js("[+document.getElementById('window').value, +document.getElementById('level').value]")
    assert browser.js("document.getElementById('wl-preset').value") == "custom"
    assert after[0] > before[0] and after[1] > before[1], (before, after)
    dragged = browser.pixels("viewer").astype(int)
    assert np.abs(dragged[..., 2][~tumour] - expected(*after)[~tumour]).max() <= 1
    assert (dragged[..., 2][~tumour] != full_range[..., 2][~tumour]).any()
    browser.js("(() => { const s = document.getElementById('wl-preset'); s.value = 'auto'; s.dispatchEvent(new Event('change')); })()")

    shoot(browser, tmp_path, "page.png")

    # the saliency overlay: /v1/explain of the same upload (occlusion: the tiny net's Grad-CAM is zero)
    browser.js("document.getElementById('explain-method').value = 'occlusion'")
    browser.js("(() => { const s = document.getElementById('overlay-kind'); s.value = 'saliency'; s.dispatchEvent(new Event('change')); })()")
    browser.wait("document.getElementById('explain-status').textContent.startsWith('Saliency')", timeout=180)
    volume = np.array(browser.js("Array.from(view.saliency)"), float).reshape(depth, rows, cols)
    assert volume.max() == 255  # scaled to its maximum
    zs = int(np.argmax(volume.sum(axis=(1, 2))))  # the slice with the most saliency
    _set(browser, "slice", zs)
    saliency = volume[zs]
    image = np.frombuffer(base64.b64decode(answer["preview"]["image"]), np.uint8).reshape(depth, rows, cols)[zs]
    heat = browser.pixels("viewer").astype(int)
    a = 0.5 * saliency / 255
    for channel, colour in enumerate((255, 140, 0)):
        assert np.abs(heat[..., channel] - ((1 - a) * image + a * colour)).max() <= 1
    assert (heat[..., 0] > heat[..., 2])[saliency >= 8].all() and grey_of(heat)[saliency == 0].all()
    shoot(browser, tmp_path, "page-saliency.png")
    browser.js("(() => { const s = document.getElementById('overlay-kind'); s.value = 'labels'; s.dispatchEvent(new Event('change')); })()")
    _set(browser, "slice", z)
    assert (browser.pixels("viewer") == half).all()  # back to the segmentation

    # classify with the cls model the service loaded: the rows are /v1/classify's answer
    if (world / "models" / "tiny-cls.safetensors").exists():
        assert browser.js("document.getElementById('classify-section').hidden") is False
        assert browser.js("document.getElementById('cls-model').value") == "tiny-cls"
        browser.upload("#classify-files", world / "slice0.png", world / "slice1.png")
        browser.js("document.getElementById('classify-button').click()")
        browser.wait("!document.getElementById('classify-results').hidden", timeout=60)
        rows = browser.js("[...document.querySelectorAll('#classify-rows tr')].map((tr) => [...tr.children].map((td) => td.textContent))")
        with httpx.Client(base_url=address, timeout=60) as client:
            files = [("file", (f"slice{i}.png", (world / f"slice{i}.png").read_bytes())) for i in (0, 1)]
            expected_rows = client.post("/v1/classify?model=tiny-cls", headers={"Authorization": f"Bearer {token}"}, files=files).json()["results"]
        assert rows == [[r["file"], r["label"], f"{r['probability']:.3f}"] for r in expected_rows]
        assert browser.js("document.getElementById('cls-privacy').textContent") == "The image is sent to the server as it is: the server sees it."
        assert browser.js("document.getElementById('cls-key-label').hidden") is True
        shoot(browser, tmp_path, "page-classify.png")

    # a model trained behind the block cipher: the page encrypts with the doctor's key, which is never sent
    if (page_world / "models" / "tiny-keyed-cls.safetensors").exists():
        from medtools.imagecipher import block

        browser.js("(() => { const s = document.getElementById('cls-model'); s.value = 'tiny-keyed-cls'; s.dispatchEvent(new Event('change')); })()")
        assert browser.js("document.getElementById('cls-key-label').hidden") is False
        assert "never sent" in browser.js("document.getElementById('cls-privacy').textContent")
        sent = "performance.getEntriesByType('resource').filter((e) => e.name.includes('/v1/classify')).length"
        before = browser.js(sent)
        browser.upload("#cls-key", page_world / "wrong.key")
        browser.upload("#classify-files", page_world / "small.png", world / "slice0.png")
        browser.js("document.getElementById('classify-button').click()")
        browser.wait("document.getElementById('classify-status').textContent.startsWith('Failed')")
        assert "wrong key; nothing was sent" in browser.js("document.getElementById('classify-status').textContent")
        assert browser.js(sent) == before  # refused in the page: no request
        browser.upload("#cls-key", page_world / "cls.key")
        browser.js("document.getElementById('classify-button').click()")
        browser.wait("!document.getElementById('classify-results').hidden", timeout=60)
        assert browser.js(sent) == before + 1
        browser.wait("[...document.querySelectorAll('#cls-ciphers img')].every((i) => i.complete && i.naturalWidth > 0)")
        made = browser.js(
            "[...document.querySelectorAll('#cls-ciphers img')].map((img) => { const c = document.createElement('canvas');"
            " c.width = img.naturalWidth; c.height = img.naturalHeight; const x = c.getContext('2d'); x.drawImage(img, 0, 0);"
            " return Array.from(x.getImageData(0, 0, c.width, c.height).data); })")
        assert [len(m) for m in made] == [32 * 32 * 4] * 2  # both at the model's size (slice0.png resized in the page)
        from medtools.core.io import read_image

        plain = np.asarray(read_image(page_world / "small.png").array)
        cipher = block.encrypt(plain, KEY, 8, 16)
        made = np.array(made[0], np.uint8).reshape(32, 32, 4)
        assert (made[..., 0] == cipher).all() and (made[..., 1] == cipher).all() and (made[..., 3] == 255).all()  # what `medtools encrypt --method block` makes
        assert (cipher != plain).any()
        rows = browser.js("[...document.querySelectorAll('#classify-rows tr')].map((tr) => [...tr.children].map((td) => td.textContent))")
        from medtools.core.io import Image, write_image

        write_image(Image(cipher, format="png"), tmp_path / "small_cipher.png")
        with httpx.Client(base_url=address, timeout=60) as client:
            expected_rows = client.post("/v1/classify?model=tiny-keyed-cls", headers={"Authorization": f"Bearer {token}"},
                                        files=[("file", ("small_cipher.png", (tmp_path / "small_cipher.png").read_bytes()))]).json()["results"]
        assert rows[0] == [expected_rows[0]["file"], expected_rows[0]["label"], f"{expected_rows[0]['probability']:.3f}"]
        assert rows[1][0] == "slice0_cipher.png" and rows[1][1] in CLS_CONFIG["class_names"]
        shoot(browser, tmp_path, "page-classify-encrypted.png")

    # protect a picture against the loaded attacker: its metrics, the caveat, raw and protected side by side
    assert browser.js("document.getElementById('protect-section').hidden") is False
    attacker = browser.js("document.getElementById('protect-attacker').value")
    assert attacker in {m["name"] for m in answer_models(address) if m["kind"] in ("reid", "cls")}
    browser.upload("#protect-files", world / "slice0.png")
    _set(browser, "protect-steps", 2)
    browser.js("document.getElementById('protect-button').click()")
    browser.wait("!document.getElementById('protect-result').hidden", timeout=120)
    metrics = dict(browser.js("[...document.querySelectorAll('#protect-metrics tr')].map((tr) => [tr.children[0].textContent, tr.children[1].textContent])"))
    assert 0 < float(metrics["linf"]) <= 0.05 + 1e-6 and float(metrics["psnr"]) > 20 and 0 < float(metrics["ssim"]) <= 1
    assert json.loads(metrics["attackers"]) == [attacker]
    assert "not a privacy claim" in browser.js("document.getElementById('protect-caveat').textContent")
    browser.wait("[...document.querySelectorAll('#protect-pictures img')].every((i) => i.complete && i.naturalWidth > 0)")
    raw, protected = browser.js(
        "[...document.querySelectorAll('#protect-pictures img')].map((img) => { const c = document.createElement('canvas');"
        " c.width = img.naturalWidth; c.height = img.naturalHeight; const x = c.getContext('2d'); x.drawImage(img, 0, 0);"
        " return Array.from(x.getImageData(0, 0, c.width, c.height).data); })")
    raw, protected = np.array(raw, int), np.array(protected, int)
    assert raw.shape == protected.shape == (48 * 40 * 4,)  # the two pictures, side by side
    assert 0 < np.abs(raw - protected).max() <= round(0.05 * 255) + 1  # within the noise budget
    assert browser.js("document.querySelector('#protect-downloads a').download") == "slice0_protected.png"
    assert browser.js("document.getElementById('protect-volume').hidden") is True
    said = browser.js("[...document.querySelectorAll('#protect-said tr')].map((tr) => [...tr.children].map((td) => td.textContent))")
    names = next(m for m in answer_models(address) if m["name"] == attacker)["class_names"]
    assert len(said) == 1 and said[0][0] == attacker
    assert all(re.fullmatch(r"(.+) \((0\.\d{3}|1\.000)\)", c) and c.rsplit(" (", 1)[0] in names for c in said[0][1:]), said
    shoot(browser, tmp_path, "page-protect.png")

    # a volume: the same slice before and after in the raw image's window, the difference, the attackers' answers
    browser.upload("#protect-files", world / "case.nii.gz")
    browser.js("document.getElementById('protect-button').click()")
    browser.wait("document.getElementById('protect-status').textContent.startsWith('Done') && !document.getElementById('protect-volume').hidden", timeout=120)
    assert browser.js("document.getElementById('protect-pictures').children.length") == 0
    depth, rows, cols = answer["preview"]["shape"]
    zp = int(browser.js("+document.getElementById('protect-slice').value"))
    assert zp == depth // 2 and browser.js("document.getElementById('protect-slice-label').textContent") == f"{zp + 1} / {depth}"
    before = browser.pixels("protect-raw").astype(int)
    assert before.shape[:2] == (rows, cols)
    preview8 = np.frombuffer(base64.b64decode(answer["preview"]["image"]), np.uint8).reshape(depth, rows, cols)
    assert (before[..., 0] == preview8[zp]).all()  # the raw slice in the same window as the viewer's
    import gzip

    import nibabel as nib

    assert browser.js("document.querySelector('#protect-downloads a').download") == "case_protected.nii.gz"
    saved = base64.b64decode(browser.js("protectView.file.data"))  # what the download link holds
    protected_volume = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(saved)).dataobj, np.float32)  # the file the doctor downloads
    low, high = browser.js("protectView.window")
    expected_after = np.round(np.clip((protected_volume[:, :, zp] - low) / (high - low), 0, 1) * 255)
    after = browser.pixels("protect-protected").astype(int)
    assert np.abs(after[..., 0] - expected_after).max() <= 1
    assert (after[..., 0] != before[..., 0]).any()  # the noise shows
    diff = browser.pixels("protect-diff").astype(int)[..., 0]
    assert (diff == np.minimum(255, 10 * np.abs(after[..., 0] - before[..., 0]))).all()
    metrics = dict(browser.js("[...document.querySelectorAll('#protect-metrics tr')].map((tr) => [tr.children[0].textContent, tr.children[1].textContent])"))
    assert float(metrics["psnr"]) > 20 and 0 < float(metrics["ssim"]) <= 1
    assert len(browser.js("[...document.querySelectorAll('#protect-said tr')]")) == 1
    shoot(browser, tmp_path, "page-protect-volume.png")

    # a zip of a DICOM series through the same form: the series' slices in the viewer
    import zipfile

    from test_core_io import write_dicom_series

    series = write_dicom_series(tmp_path / "series")
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as archive:
        for member in sorted(series.iterdir()):
            archive.write(member, f"series/{member.name}")
    browser.upload("#segment-files", tmp_path / "series.zip")
    browser.js("document.getElementById('segment-button').click()")
    browser.wait("document.getElementById('segment-status').textContent === 'Done: series_seg.nii.gz'", timeout=90)
    assert browser.js("document.getElementById('slice-label').textContent").endswith("/ 5")

    browser.js("document.getElementById('logout').click()")
    browser.wait("document.readyState === 'complete' && !document.getElementById('login-section').hidden")


def test_page_in_chromium_shows_the_session_ending(world, tmp_path):  # noqa: F811
    """With --token-ttl 4 the header counts the session down, and at its end the page is back on
    the log-in form with the reason; the app's data is gone from the page."""
    with _Server(world, tmp_path, "--token-ttl", "4") as address:
        browser = Browser(address + "/", tmp_path)
        try:
            browser.wait("document.readyState === 'complete' && !!document.getElementById('login-form')")
            _set(browser, "user", "alice")
            _set(browser, "password", PASSWORD)
            browser.js("document.getElementById('login-button').click()")
            browser.wait("!document.getElementById('app').hidden")
            assert re.fullmatch(r"session ends in 0:0[1-4]", browser.js("document.getElementById('session').textContent"))
            browser.wait("!document.getElementById('login-section').hidden", timeout=15)
            assert browser.js("document.getElementById('login-error').textContent") == "Your session has ended; log in again."
            assert browser.js("document.getElementById('app').hidden") is True
            # the page ends the session up to a second early (whole seconds), never late: the server agrees soon after
            browser.wait("fetch('/v1/me').then((r) => r.status === 401)", timeout=3)
        finally:
            browser.close()


def test_page_in_chromium_is_fast_on_a_brats_sized_volume(service, tmp_path):
    """A 240×240×155 volume: the time from the answer's headers to the first view (axial, coronal,
    sagittal) drawn (the page's performance.now(); goal ≤ 1 s), and the frames per second of
    scrolling with one slice change per animation frame (goal ≥ 30): printed and written to
    page-performance.json, not asserted."""
    import nibabel as nib

    rng = np.random.default_rng(1)
    volume = np.zeros((240, 240, 155), np.int16)
    volume[40:200, 30:210, 10:145] = 600
    volume[90:140, 100:150, 60:100] = 1400
    volume += rng.integers(0, 50, volume.shape, dtype=np.int16)
    path = tmp_path / "brats_sized.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    address, browser = service
    fresh(browser, address)
    log_in(browser)
    browser.upload("#segment-files", path)
    first = []
    for _ in range(2):  # the better of two uploads: a busy shared CPU must not decide it
        browser.js("timings.firstView = undefined; document.getElementById('segment-button').click()")
        browser.wait("timings.firstView !== undefined", timeout=240)
        assert browser.js("view.shape") == [155, 240, 240]
        first.append(browser.js("timings.firstView"))
        if first[-1] <= 1000:
            break
    # one slice change per animation frame for 60 frames: the frames the browser shows per second
    fps = browser.js(
        "new Promise((done) => { const s = document.getElementById('slice'); let n = 0, t0 = null;"
        " const step = (t) => { if (t0 === null) t0 = t; if (n === 60) return done(60 / ((t - t0) / 1000));"
        " s.value = n % 155; s.dispatchEvent(new Event('input')); n++; requestAnimationFrame(step); };"
        " requestAnimationFrame(step); })")
    redraw = browser.js(
        "(() => { const s = document.getElementById('slice'); const t0 = performance.now();"
        " for (let i = 0; i < 60; i++) { s.value = i % 155; s.dispatchEvent(new Event('input')); }"
        " return (performance.now() - t0) / 60; })()")
    # reported, not asserted (a loaded shared CPU decides wall times): the goals are first view <= 1000 ms, >= 30 frames/s
    numbers = {"volume": [240, 240, 155], "first_view_ms": [round(t, 1) for t in first], "scroll_frames_per_s": round(fps, 1), "redraw_ms": round(redraw, 2),
               "goals": {"first_view_ms": 1000, "scroll_frames_per_s": 30}, "met": {"first_view": min(first) <= 1000, "scrolling": fps >= 30}}
    (tmp_path / "page-performance.json").write_text(json.dumps(numbers))
    print("page performance " + json.dumps(numbers))
    assert first and fps > 0 and redraw > 0


def test_page_in_chromium_opens_a_series_from_the_pacs(service, orthanc, tmp_path):
    """With --pacs, the page lists the PACS's series and opens one with the keyboard: pulled,
    segmented, shown as the same series uploaded as a zip would be."""
    if orthanc is None:
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    import zipfile

    import httpx

    address, browser = service
    fresh(browser, address)
    log_in(browser)
    assert browser.js("document.getElementById('pacs-section').hidden") is False
    _set(browser, "pacs-patient", "P001")
    browser.js("document.getElementById('pacs-button').click()")
    browser.wait("!document.getElementById('pacs-results').hidden", timeout=60)
    rows = browser.js("[...document.querySelectorAll('#pacs-rows tr')].map((tr) => [...tr.children].map((td) => td.textContent))")
    assert rows == [["P001", "20240131", "MR", "t1 synthetic", "6", "Open"]], rows
    assert "P001" in browser.js("document.querySelector('#pacs-rows button').getAttribute('aria-label')")
    browser.js("document.querySelector('#pacs-rows button').focus()")
    press(browser, "Enter", 13, "\r")  # the keyboard opens it
    browser.wait("document.getElementById('segment-status').textContent.startsWith('Done: series-')", timeout=120)
    assert browser.js("document.getElementById('slice-label').textContent").endswith("/ 6")
    shown = np.array(browser.js("Array.from(view.labels)"), np.uint8)
    # the same series uploaded as a zip: the same label map and the same volume in mL
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as archive:
        for path in orthanc["paths"]:
            archive.write(path, path.name)
    with httpx.Client(base_url=address, timeout=120) as client:
        token = client.post("/v1/login", json={"user": "alice", "password": PASSWORD}).json()["token"]
        answer = client.post("/v1/segment?response=json", headers={"Authorization": f"Bearer {token}"}, files={"file": ("series.zip", (tmp_path / "series.zip").read_bytes())}).json()
    assert httpx.get(address + "/v1/pacs/series", params={"patient": "P001"}, timeout=60).status_code == 401  # not without a log-in
    assert answer["preview"]["shape"] == [6, 32, 32]
    assert (shown == np.frombuffer(base64.b64decode(answer["preview"]["labels"]), np.uint8)).all()
    assert browser.js("document.getElementById('volume').textContent") == f"Tumour volume: {answer['stats']['tumour_ml']:.2f} mL ({answer['stats']['tumour_voxels']} voxels)"
    shoot(browser, tmp_path, "page-pacs.png")


def test_page_in_chromium_searches_similar_cases_in_the_encrypted_index(service, search_index, tmp_path):
    """With --index-secret, a query image through the page gives `medtools index query`'s hits, each
    marked verified; a tampered block makes the search refuse, and says so."""
    if search_index is None:
        pytest.skip("TenSEAL (the he extra) is not installed: no encrypted index")
    from conftest import run_cli

    address, browser = service
    fresh(browser, address)
    log_in(browser)
    assert browser.js("document.getElementById('search-section').hidden") is False
    assert "sees the image" in browser.js("document.getElementById('search-privacy').textContent")
    root = search_index["root"]
    images = sorted((root / "img").rglob("*.png"))
    query = images[2]
    browser.upload("#search-file", query)
    _set(browser, "search-k", 3)
    browser.js("document.getElementById('search-button').click()")
    browser.wait("!document.getElementById('search-results').hidden", timeout=120)
    rows = browser.js("[...document.querySelectorAll('#search-rows tr')].map((tr) => [...tr.children].map((td) => td.textContent))")
    cli = json.loads(run_cli("index", "query", query, "-i", root / "idx", "--secret", root / "ctx" / "secret", "-k", "3", "--json", check=True).stdout)
    assert [r[1] for r in rows] == [h["id"] for h in cli["hits"]] and rows[0][1] == query.relative_to(root / "img").as_posix()
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert all(abs(float(r[2]) - h["score"]) <= 2e-4 for r, h in zip(rows, cli["hits"]))
    built_root = search_index["built"]["root"]
    assert all(r[3].startswith("verified: inclusion proof (") and r[3].endswith(f"leads to root {built_root[:12]}…") for r in rows), rows
    assert built_root[:12] in browser.js("document.getElementById('search-caption').textContent")
    shoot(browser, tmp_path, "page-search.png")
    # one changed bit in a block of the index: the search refuses before ranking, and the page says why
    block = root / "idx" / "blocks" / "000000.ckks"
    original = block.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 1
    try:
        block.write_bytes(bytes(tampered))
        browser.js("document.getElementById('search-button').click()")
        browser.wait("document.getElementById('search-status').textContent.startsWith('Failed')", timeout=120)
        status = browser.js("document.getElementById('search-status').textContent")
        assert "does not verify" in status and "refusing" in status, status
        assert browser.js("document.getElementById('search-results').hidden") is True
    finally:
        block.write_bytes(original)


UNNAMED = """[...document.querySelectorAll('input, select, textarea, button, canvas, img')].filter((e) => {
  const named = (e.getAttribute('aria-label') || '').trim() || [...(e.labels || [])].map((l) => l.textContent).join(' ').trim()
    || (e.tagName === 'BUTTON' ? e.textContent.trim() : '') || (e.tagName === 'IMG' ? (e.getAttribute('alt') || '').trim() : '');
  return !named; }).map((e) => e.id || e.outerHTML.slice(0, 80))"""


def test_page_in_chromium_names_every_control_and_works_by_keyboard(service, world):  # noqa: F811
    """Every control (input, select, button, the views, pictures; hidden ones too) has a name, from
    its label, aria-label, text or alt; the log-in works with the keyboard alone, Tab reaches every
    visible control, and Enter on the Segment button segments."""
    address, browser = service
    fresh(browser, address)
    assert browser.js(UNNAMED) == []
    browser.js("document.getElementById('user').focus()")
    browser.call("Input.insertText", text="alice")
    press(browser, "Tab", 9)
    assert browser.js("document.activeElement.id") == "password"
    browser.call("Input.insertText", text=PASSWORD)
    press(browser, "Enter", 13, "\r")
    browser.wait("!document.getElementById('app').hidden && document.getElementById('model').value !== ''")
    assert browser.js(UNNAMED) == []
    visible = browser.js("[...document.querySelectorAll('input, select, textarea, button, [tabindex]')].filter((e) => e.offsetParent !== null && !e.disabled && e.tabIndex >= 0)"
                         ".map((e, i) => { e.dataset.tabcheck = i; return e.id || e.textContent; })")
    assert {"segment-files", "segment-button", "encrypt-file", "decrypt-file", "logout", "Encrypt", "Decrypt"} <= set(visible), visible
    browser.js("document.activeElement.blur()")
    seen = set()
    for _ in range(len(visible) + 3):
        press(browser, "Tab", 9)
        seen.add(browser.js("document.activeElement.dataset.tabcheck"))
    assert {str(i) for i in range(len(visible))} <= seen, [visible[i] for i in range(len(visible)) if str(i) not in seen]
    browser.upload("#segment-files", world / "case.nii.gz")
    browser.js("document.getElementById('segment-button').focus()")
    press(browser, "Enter", 13, "\r")
    browser.wait("!document.getElementById('viewer-box').hidden", timeout=90)
    assert browser.js(UNNAMED) == []
    browser.js("document.getElementById('viewer').focus()")
    before = int(browser.js("+document.getElementById('slice').value"))
    press(browser, "Home", 36)  # not a slice key: nothing moves
    assert int(browser.js("+document.getElementById('slice').value")) == before
    press(browser, "PageUp", 33)
    assert int(browser.js("+document.getElementById('slice').value")) == max(before - 10, 0)
