"""fl-train / fl-job on NVIDIA FLARE: three phantom sites, two rounds, a tiny segmenter.

The simulator runs real FLARE server and client processes; every test that starts one checks
that no process of the run outlives the command.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from conftest import run_cli

pytest.importorskip("nvflare")
pytestmark = pytest.mark.slow

TINY = ["--encoder", "tu-test_resnet", "--size", "32", "--binary", "-b", "8", "--local-epochs", "2", "--lr", "3e-3", "--seed", "0"]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline[:160]}")
    return found


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fl-sites")
    run_cli("phantom", "brain", "-o", root / "phantoms", "-n", "6", "--visits", "1", "--size", "32", "--slices", "8", "-q", check=True)
    run_cli("manifest", root / "phantoms", "-o", root / "all.csv", "-q", check=True)
    with open(root / "all.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    patients = sorted({r["patient"] for r in rows})
    paths = {"all": root / "all.csv"}
    for index in range(3):
        path = root / f"site{index + 1}.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(r for r in rows if r["patient"] in patients[2 * index : 2 * index + 2])
        paths[f"site-{index + 1}"] = path
    return paths


def _fl_train(sites: dict[str, Path], output: Path, *extra: str) -> dict:
    proc = run_cli("fl-train", "seg", sites["site-1"], sites["site-2"], sites["site-3"], "-o", output, "--rounds", "2", *TINY, "--timeout", "600", "--json", *extra, check=True)
    assert _processes_mentioning(str(output.parent)) == [], "a FLARE process outlived fl-train"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def federated(sites, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("fl-run") / "global.safetensors"
    return output, _fl_train(sites, output)


def _dice(model: Path, sites: dict[str, Path], work: Path) -> float:
    pred = work / f"pred-{model.stem}"
    run_cli("segment", sites["all"], "-m", model, "-o", pred, "-q", check=True)
    scores = json.loads(run_cli("seg-eval", pred, sites["all"], "--json", "--no-hd95", "-q", check=True).stdout)
    return scores["mean"]["foreground"]["dice"]


def test_three_site_run_gives_a_checkpoint_segment_loads_that_beats_the_untrained_model(federated, sites, tmp_path) -> None:
    from medtools.core import ckpt
    from medtools.core.train import initial_weights

    output, result = federated
    assert result["rounds"] == 2 and result["sites"] == ["site-1", "site-2", "site-3"]
    loaded = ckpt.load(output, kind="seg")
    with initial_weights(0):  # the model every site starts from (the same seed)
        untrained = ckpt.new_model("seg", loaded.config)
    ckpt.save(tmp_path / "untrained.safetensors", untrained.state_dict(), kind="seg", config=loaded.config, norm=loaded.norm)
    trained, baseline = _dice(output, sites, tmp_path), _dice(tmp_path / "untrained.safetensors", sites, tmp_path)
    assert trained > baseline + 0.05, (trained, baseline)


def test_metadata_has_rounds_site_ids_and_per_round_metrics_but_no_paths(federated, sites) -> None:
    from medtools.core import ckpt

    output, _ = federated
    meta = ckpt.load(output, tensors=False).provenance
    fed = meta["federated"]
    assert fed["engine"] == "nvflare" and fed["algorithm"] == "fedavg" and fed["rounds"] == 2
    assert fed["sites"] == ["site-1", "site-2", "site-3"]
    assert [r["round"] for r in fed["history"]] == [1, 2]
    for record in fed["history"]:
        assert set(record["sites"]) == {"site-1", "site-2", "site-3"}
        assert all("global_val_dice_mean" in m and "local_loss" in m for m in record["sites"].values())
    assert set(fed["final"]) == {"site-1", "site-2", "site-3"}
    raw = json.dumps(ckpt.read_metadata(output))
    assert str(sites["all"].parent) not in raw and "phantom-p0" not in raw


def test_same_seed_gives_identical_weights_on_cpu(federated, sites, tmp_path) -> None:
    from safetensors.numpy import load_file

    output, _ = federated
    again = tmp_path / "again.safetensors"
    _fl_train(sites, again)
    first, second = load_file(str(output)), load_file(str(again))
    assert first.keys() == second.keys()
    assert all((first[k] == second[k]).all() for k in first)


@pytest.mark.parametrize("problem", ["missing", "corrupt", "missing-image"])
def test_a_bad_site_manifest_stops_the_run_with_exit_5_and_no_model(problem, sites, tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    if problem == "corrupt":
        bad.write_bytes(b"\x00\xff\xfe garbage, not,a manifest\n\x89PNG\r\n")
    elif problem == "missing-image":
        text = sites["site-2"].read_text().replace("_flair.nii.gz", "_gone.nii.gz")
        bad.write_text(text)
    output = tmp_path / "out" / "global.safetensors"
    proc = run_cli("fl-train", "seg", sites["site-1"], bad, sites["site-3"], "-o", output, "--rounds", "2", *TINY)
    assert proc.returncode == 5, proc.stderr
    assert "site-2" in proc.stderr
    assert not output.exists() and not any(output.parent.glob("*")) if output.parent.exists() else True


@pytest.mark.parametrize("algorithm", ["fedprox"])
def test_fedprox_runs_and_is_recorded(algorithm, sites, tmp_path) -> None:
    from medtools.core import ckpt

    output = tmp_path / "prox.safetensors"
    _fl_train(sites, output, "--algorithm", algorithm, "--mu", "0.1")
    fed = ckpt.load(output, tensors=False).provenance["federated"]
    assert fed["algorithm"] == "fedprox" and fed["fedprox_mu"] == 0.1


def test_dp_epsilon_is_recorded_and_grows_with_the_rounds(sites, tmp_path) -> None:
    from medtools.core import ckpt

    output = tmp_path / "dp.safetensors"
    result = _fl_train(sites, output, "--dp-epsilon", "8", "--dp-delta", "1e-5")
    meta = ckpt.load(output, tensors=False)
    assert meta.config.get("normalization") == "group"
    dp = meta.provenance["dp"]
    assert set(dp["per_site"]) == {"site-1", "site-2", "site-3"}
    for site in dp["per_site"].values():
        per_round = site["epsilon_per_round"]
        assert len(per_round) == 2 and 0 < per_round[0] < per_round[1] <= 8.0 + 1e-6
        assert per_round[1] > 7.5  # the noise is calibrated to spend the target over all rounds
    assert [sorted(r["epsilon"]) for r in meta.provenance["federated"]["history"]] == [["site-1", "site-2", "site-3"]] * 2
    assert result["dp"]["epsilon"] == dp["epsilon"]


def test_fl_job_exports_a_flare_job_folder_without_copies_of_medtools(sites, tmp_path) -> None:
    job = tmp_path / "job"
    proc = run_cli("fl-job", "seg", "/data/a.csv", "/data/b.csv", "/data/c.csv", "-o", job, "--rounds", "3", *TINY, check=True)
    assert proc.stdout.strip() == str(job)
    server = json.loads((job / "app_server" / "config" / "config_fed_server.json").read_text())
    assert server["workflows"][0]["path"] == "medtools.fl.server.GlobalModel"
    assert server["workflows"][0]["args"]["num_rounds"] == 3
    for index, path in enumerate(["/data/a.csv", "/data/b.csv", "/data/c.csv"], start=1):
        app = job / f"app_site-{index}"
        client = json.loads((app / "config" / "config_fed_client.json").read_text())
        args = client["executors"][0]["executor"]["args"]
        assert args["task_script_path"] == "medtools_site.py" and f"--manifest {path}" in args["task_script_args"]
        assert sorted(p.name for p in (app / "custom").rglob("*") if p.is_file()) == ["medtools_site.py"]
    assert run_cli("fl-job", "seg", "/data/a.csv", "-o", job, "-q").returncode == 2  # never into an existing folder


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_poc_mode_one_server_and_three_client_processes_on_loopback(sites, tmp_path) -> None:
    """docs/federated.md's walk-through: nvflare poc prepare/start, job submit/wait/download, poc stop."""
    import subprocess
    import sys

    import yaml

    workspace = tmp_path / "poc"
    env = {**os.environ, "HOME": str(tmp_path / "home"), "NVFLARE_POC_WORKSPACE": str(workspace), "MEDTOOLS_DEVICE": "cpu", "OMP_WAIT_POLICY": "PASSIVE"}
    (tmp_path / "home").mkdir()
    nvflare = str(Path(sys.executable).with_name("nvflare"))

    def flare(*args: str, timeout: float = 180) -> str:
        proc = subprocess.run([nvflare, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"nvflare {' '.join(args)}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
        return proc.stdout + proc.stderr

    flare("poc", "prepare", "-n", "3", "--force")
    project = yaml.safe_load((workspace / "project.yml").read_text())
    for participant in project["participants"]:
        if participant["type"] == "server":
            participant.update(fed_learn_port=_free_port(), admin_port=_free_port(), default_host="localhost")
    (tmp_path / "project.yml").write_text(yaml.safe_dump(project))
    flare("poc", "prepare", "-i", str(tmp_path / "project.yml"), "--force")
    kit = workspace / "example_project" / "prod_00"
    resources = kit / "server" / "local" / "resources.json"
    policy = json.loads(resources.read_text())
    policy["class_allow_list"].append("medtools.fl.server.GlobalModel")  # the server admin allows medtools' controller
    resources.write_text(json.dumps(policy, indent=2))
    job = tmp_path / "job"
    run_cli("fl-job", "seg", sites["site-1"], sites["site-2"], sites["site-3"], "-o", job, "--rounds", "2", *TINY, check=True)
    try:
        flare("poc", "start", "--timeout", "120")
        running = _processes_mentioning(str(kit))
        assert sum("server_train" in p for p in running) >= 1 and sum("client_train" in p for p in running) >= 3, running
        job_id = flare("job", "submit", "-j", str(job)).strip().splitlines()[-1].split("job_id:")[-1].strip()
        assert "COMPLETED" in flare("job", "wait", job_id, "--timeout", "600", timeout=660)
        flare("job", "download", job_id, "-o", str(tmp_path / "result"))
    finally:
        subprocess.run([nvflare, "poc", "stop"], capture_output=True, env=env, timeout=180, cwd=tmp_path, stdin=subprocess.DEVNULL)
        import signal
        import time

        deadline = time.time() + 30
        while _processes_mentioning(str(kit)) and time.time() < deadline:
            time.sleep(1)
        leftovers = _processes_mentioning(str(kit))
        for line in leftovers:  # stop what the POC left, then fail below
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
    assert leftovers == [], "POC processes outlived `nvflare poc stop`"
    model = next((tmp_path / "result").glob("*/workspace/global.safetensors"))
    from medtools.core import ckpt

    assert ckpt.load(model, tensors=False).provenance["federated"]["sites"] == ["site-1", "site-2", "site-3"]
    run_cli("segment", sites["all"], "-m", model, "-o", tmp_path / "pred", "-q", check=True)
    assert len(list((tmp_path / "pred").rglob("*_seg.nii.gz"))) == 6


def test_a_kind_without_a_trainer_is_a_usage_error(sites, tmp_path) -> None:
    proc = run_cli("fl-train", "ddpm", sites["site-1"], "-o", tmp_path / "m.safetensors", "--rounds", "1")
    assert proc.returncode == 2 and "seg" in proc.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_api_fl_job_writes_the_folder_fl_job_writes(sites, tmp_path) -> None:
    from medtools import api

    result = api.fl_job("seg", [sites["site-1"], sites["site-2"]], tmp_path / "job", rounds=4, local_epochs=3, algorithm="fedprox", mu=0.05, options={"seed": 7, "batch_size": 4}, size=32, binary=True)
    assert result == {"output": str(tmp_path / "job"), "sites": ["site-1", "site-2"], "rounds": 4}
    server = json.loads((tmp_path / "job" / "app_server" / "config" / "config_fed_server.json").read_text())["workflows"][0]["args"]
    assert server["num_rounds"] == 4 and server["fedprox_mu"] == 0.05 and server["num_clients"] == 2


def test_a_classifier_trains_federated_and_classify_loads_it(tmp_path) -> None:
    run_cli("phantom", "cxr", "-o", tmp_path / "cxr", "-n", "48", "--patients", "24", "--size", "32", "-q", check=True)
    run_cli("manifest", tmp_path / "cxr", "-o", tmp_path / "all.csv", "-q", check=True)
    with open(tmp_path / "all.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    patients = sorted({r["patient"] for r in rows})
    sites = []
    for index in range(3):
        path = tmp_path / f"site{index + 1}.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(r for r in rows if patients.index(r["patient"]) % 3 == index)
        sites.append(path)
    output = tmp_path / "cls.safetensors"
    run_cli("fl-train", "cls", *sites, "-o", output, "--rounds", "2", "--local-epochs", "2", "--arch", "test_resnet", "--size", "32", "-b", "4", "--timeout", "600", "-q", check=True)
    assert _processes_mentioning(str(tmp_path)) == []
    records = [json.loads(line) for line in run_cli("classify", tmp_path / "cxr", "-m", output, check=True).stdout.splitlines()]
    assert len(records) == 48 and {r["label"] for r in records} <= {"NORMAL", "PNEUMONIA"}
    from medtools.core import ckpt

    loaded = ckpt.load(output, kind="cls", tensors=False)
    assert loaded.config["class_names"] == ["NORMAL", "PNEUMONIA"] and loaded.provenance["federated"]["sites"] == ["site-1", "site-2", "site-3"]
    refused = run_cli("fl-train", "cls", *sites, "-o", tmp_path / "dp.safetensors", "--arch", "test_resnet", "--dp-epsilon", "8")
    assert refused.returncode == 2 and "BatchNorm" in refused.stderr
