"""Requests/s and p50/p95 latency of `medtools serve`'s /v1/segment on 128² PNGs; prints one JSON document.

    python benchmarks/serve.py [--model seg.safetensors] [--requests 64] [--clients 1,4,16] [--device cpu]

Starts a real `medtools serve` on a free loopback port (a random-weight U-Net/ResNet34 with
one channel at 128² unless --model is given), logs in, and sends a bounded number of
PNG uploads with 1, 4 and 16 concurrent clients (httpx, one connection each). Next to it:
the same model's slices/s through the same function in-process (``segment_images``, one
slice per call as the API does) and in batches (``Predictor.predict`` with the CLI's batch
size), so the API's overhead is a ratio. Wall-clock numbers go to docs/results.md, never
into tests.

Both sides run with ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it: on a shared,
oversubscribed CPU, OpenMP's default spin-waiting made in-process inference on the main
thread 10-40× slower than the same call in the server's worker thread (measured: 2.4-4.4 s
vs 0.1 s per 128² slice at load 13 on 2 cores), which would measure the machine, not the API.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def make_model(folder: Path, encoder: str, size: int) -> Path:
    import torch

    from medtools.core import ckpt
    from medtools.core.preprocess import DEFAULT_NORM
    from medtools.nets.segmenter import build_segmenter

    torch.manual_seed(0)
    config = {"arch": "unet", "encoder": encoder, "in_channels": 1, "classes": 2, "image_size": size, "label_values": [0, 1], "modalities": ["flair"]}
    net = build_segmenter(**{k: v for k, v in config.items() if k not in ("image_size", "label_values", "modalities")})
    return ckpt.save(folder / "bench-seg.safetensors", net.state_dict(), kind="seg", config=config, norm=DEFAULT_NORM)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="seg checkpoint (default: random ResNet34 U-Net, 1 channel)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the in-process batched baseline")
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.clients, args.encoder = 8, "1,4", "resnet18"
    levels = [int(c) for c in args.clients.split(",")]
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see above)

    import httpx

    from medtools.core.io import Image, read_image, write_image
    from medtools.secure.keystore import KeyStore

    work = Path(tempfile.mkdtemp(prefix="medtools-bench-serve-"))
    models = work / "models"
    models.mkdir()
    if args.model is not None:
        os.symlink(args.model.resolve(), models / args.model.name)
        model_path = args.model
    else:
        model_path = make_model(models, args.encoder, args.size)
    store = KeyStore.create(work / "store.json", log_n=10)
    store.add_user("bench", b"bench-password", log_n=10)
    rng = np.random.default_rng(0)
    pngs = []
    for i in range(16):
        path = work / f"slice{i}.png"
        write_image(Image((rng.random((args.size, args.size)) * 255).astype(np.uint8), format="png"), path)
        pngs.append(path.read_bytes())

    # -- in-process baselines: the function the API calls, and the CLI's batched predict
    from medtools.brain.segment import segment_images
    from medtools.core.predict import Predictor
    from medtools.core.preprocess import volumes_to_slices
    from medtools.core.io import as_volume

    predictor = Predictor(model_path, kind="seg", device=args.device, batch_size=args.batch)
    images = [read_image(work / f"slice{i}.png") for i in range(16)]
    segment_images([images[0]], predictor)
    start = time.perf_counter()
    n_single = max(16, args.requests // 2)
    for i in range(n_single):
        segment_images([images[i % 16]], predictor)
    single_rate = n_single / (time.perf_counter() - start)
    slices, _ = volumes_to_slices([np.concatenate([as_volume(im) for im in images] * 4, axis=2)], predictor.norm)
    predictor.predict(slices[: args.batch], softmax=True)
    start = time.perf_counter()
    predictor.predict(slices, softmax=True)
    batched_rate = len(slices) / (time.perf_counter() - start)

    # -- the server
    log = work / "stderr.txt"
    env = {**os.environ, "MEDTOOLS_DEVICE": args.device}
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "medtools", "serve", "--models", str(models), "--store", str(work / "store.json"), "--port", "0", "-q", "--max-failures", "100"], stdout=subprocess.DEVNULL, stderr=err, env=env)
    results = []
    try:
        address = None
        deadline = time.time() + 300
        while address is None and time.time() < deadline and proc.poll() is None:
            match = re.search(r"listening on (http://[^ ]+)", log.read_text())
            address = match.group(1) if match else None
            time.sleep(0.1)
        if address is None:
            raise SystemExit(f"the server did not start:\n{log.read_text()}")
        with httpx.Client(base_url=address) as client:
            token = client.post("/v1/login", json={"user": "bench", "password": "bench-password"}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        for clients in levels:
            pool_clients = [httpx.Client(base_url=address, headers=headers, timeout=300) for _ in range(clients)]
            pool_clients[0].post("/v1/segment", files={"file": ("s.png", pngs[0])})  # warm-up

            def one(i: int) -> float:
                t = time.perf_counter()
                response = pool_clients[i % clients].post("/v1/segment", files={"file": ("s.png", pngs[i % 16])})
                response.raise_for_status()
                return time.perf_counter() - t

            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                latencies = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - start
            for c in pool_clients:
                c.close()
            results.append({"clients": clients, "requests": args.requests, "requests_per_s": round(args.requests / wall, 2), "p50_ms": round(1000 * percentile(latencies, 50), 1), "p95_ms": round(1000 * percentile(latencies, 95), 1), "over_in_process_single": round(args.requests / wall / single_rate, 3)})
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    import torch

    print(json.dumps({
        "device": args.device,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "model": str(args.model or f"random unet/{args.encoder}, 1 channel"),
        "size": args.size,
        "api": results,
        "in_process_segment_images_slices_per_s": round(single_rate, 2),
        "in_process_batched_slices_per_s": round(batched_rate, 2),
        "server_exit": code,
        "torch": torch.__version__,
    }, indent=2))


if __name__ == "__main__":
    main()
