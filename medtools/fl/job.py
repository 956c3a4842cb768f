"""The federated job as a FLARE job folder, and the simulator run of it.

``build_job`` writes the folder ``fl-job`` exports and ``fl-train`` simulates (one job
definition for both): a server app with :class:`medtools.fl.server.GlobalModel` (FLARE's
FedAvg controller) and one client app per site, FLARE's ``ScriptRunner`` running
``medtools/fl/client.py`` in the client's job process with that site's manifest path (as the
site sees it) and the training settings. Sites are named ``site-1`` … ``site-N`` in manifest
order (the names ``nvflare poc prepare -n N`` gives).

``simulate`` runs ``nvflare simulator`` on that folder in a child process that leads a process group of its
own, bounded by a timeout; whatever happens, every process of that group is then ended, so no
FLARE process outlives the call. The global checkpoint is taken from the server's run folder
only when the run finished; -o is written by an atomic rename, so a failed run leaves no model.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from medtools.core import report
from medtools.core.errors import InputError, UsageError

ALGORITHMS = ("fedavg", "fedprox")
DEFAULT_MU = 0.01
JOB_NAME = "medtools-fl"
SITE_SCRIPT = "medtools_site.py"
SITE_SCRIPT_TEXT = '''"""A medtools federated site: FLARE runs this in the client's job process (medtools must be installed there)."""

from medtools.fl.client import main

if __name__ == "__main__":
    main()
'''


def encode_settings(settings: dict[str, Any]) -> str:
    """JSON in URL-safe base64: one shell-safe word in the job's client config (FLARE splits the script arguments)."""
    import base64

    return base64.urlsafe_b64encode(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).decode()


def site_names(n: int) -> list[str]:
    return [f"site-{i}" for i in range(1, n + 1)]


def check_sites(kind: str, manifests: list[Path]) -> None:
    """Every site manifest readable, with labelled cases whose files exist (InputError, exit 5,
    naming the site); the kind must have a trainer (UsageError)."""
    from medtools.core import registry
    from medtools.core.manifest import load_rows

    entry = registry.get(kind)
    if not entry.trainer:
        trainable = sorted(k.name for k in registry.discover().values() if k.trainer)
        raise UsageError(f"fl-train: kind {kind!r} has no trainer; federated training supports {', '.join(trainable)}")
    for name, manifest in zip(site_names(len(manifests)), manifests):
        if not manifest.is_file():
            raise InputError(f"{name}: site manifest {manifest} does not exist")
        try:
            rows = load_rows(manifest)
        except InputError as exc:
            raise InputError(f"{name}: site manifest {manifest}: {exc}") from None
        except (OSError, UnicodeDecodeError, ValueError, KeyError) as exc:
            raise InputError(f"{name}: site manifest {manifest} is not a readable manifest CSV ({exc})") from None
        labelled = [r for r in rows if r.get("label") or r.get("class")]
        if not labelled:
            raise InputError(f"{name}: site manifest {manifest} lists no labelled case (no label or class)")
        for row in labelled:
            for column, value in row.items():
                if column in ("patient", "case", "visit", "class") or not value:
                    continue
                path = Path(value) if Path(value).is_absolute() else manifest.parent / value
                if not Path(value).exists() and not path.exists():
                    raise InputError(f"{name}: site manifest {manifest}: {column} file {value} of case {row.get('case', '?')} does not exist")


def build_job(
    kind: str,
    manifests: list[str | Path],
    job_dir: Path,
    *,
    rounds: int,
    local_epochs: int,
    algorithm: str = "fedavg",
    mu: float | None = None,
    dp_epsilon: float | None = None,
    dp_delta: float = 1e-5,
    min_sites: int | None = None,
    options: dict[str, Any],
    trainer: dict[str, Any],
) -> Path:
    """Write the FLARE job folder ``job_dir/JOB_NAME`` and return it."""
    from nvflare.job_config.api import FedJob
    from nvflare.job_config.script_runner import FrameworkType, ScriptRunner

    from medtools.fl.server import GlobalModel

    if algorithm not in ALGORITHMS:
        raise UsageError(f"unknown --algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}")
    if rounds < 1 or local_epochs < 1:
        raise UsageError("--rounds and --local-epochs must be at least 1")
    n = len(manifests)
    if n < 1:
        raise UsageError("give at least one site manifest")
    min_sites = n if min_sites is None else int(min_sites)
    if not 1 <= min_sites <= n:
        raise UsageError(f"--min-sites must be between 1 and the number of sites ({n}), got {min_sites}")
    fedprox_mu = (DEFAULT_MU if mu is None else float(mu)) if algorithm == "fedprox" else None
    if mu is not None and algorithm != "fedprox":
        raise UsageError("--mu is FedProx's coefficient: add --algorithm fedprox")
    dp = None
    if dp_epsilon is not None:
        if dp_epsilon <= 0 or not 0 < dp_delta < 1:
            raise UsageError("--dp-epsilon must be positive and --dp-delta in (0, 1)")
        dp = {"epsilon": float(dp_epsilon), "delta": float(dp_delta), "rounds": int(rounds), "local_epochs": int(local_epochs)}
        trainer = {**trainer, "normalization": "group"}  # DP-SGD needs per-sample gradients: no BatchNorm
    settings = {"local_epochs": int(local_epochs), "options": options, "trainer": trainer, "dp": dp}
    job = FedJob(name=JOB_NAME, min_clients=min_sites)
    record = {"local_epochs": int(local_epochs), "seed": options.get("seed", 0), "min_sites": min_sites, **({"dp_target": dp} if dp else {})}
    job.to_server(GlobalModel(num_clients=min_sites, num_rounds=rounds, fedprox_mu=fedprox_mu, algorithm=algorithm, settings=record))
    job.set_app_packages(["medtools"])  # medtools is installed at every site: FLARE copies none of its code into the job
    job_dir.mkdir(parents=True, exist_ok=True)
    script = job_dir / SITE_SCRIPT
    script.write_text(SITE_SCRIPT_TEXT)
    for name, manifest in zip(site_names(n), manifests):
        args = ["--kind", kind, "--manifest", str(manifest), "--settings", encode_settings(settings)]
        job.to(ScriptRunner(script=str(script), script_args=shlex.join(args), framework=FrameworkType.NUMPY), name)
    job.export_job(str(job_dir))
    script.unlink()
    folder = job_dir / JOB_NAME
    for copied in sorted(folder.glob(f"app_*/custom/**/{SITE_SCRIPT}")):  # FLARE copies it under its path relative to the working folder
        custom = next(p for p in copied.parents if p.name == "custom")
        if copied.parent != custom:
            copied.rename(custom / SITE_SCRIPT)
            top = custom / copied.relative_to(custom).parts[0]
            shutil.rmtree(top)
    for config in folder.glob("app_*/config/config_fed_client.json"):  # the script by name, found in the app's custom folder at each site
        data = json.loads(config.read_text())
        for executor in data.get("executors", []):
            args = executor.get("executor", {}).get("args", {})
            if args.get("task_script_path") == str(script):
                args["task_script_path"] = SITE_SCRIPT
        config.write_text(json.dumps(data, indent=4))
    return folder


def _end_group(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to every process of the child's process group (FLARE's server and clients)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            if process.poll() is not None and not _group_alive(process.pid):
                return
            time.sleep(0.2)


def _group_alive(group: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == group and fields[0] != "Z":  # state, ppid, pgrp, ...
            return True
    return False


def simulate(job_folder: Path, workspace: Path, *, sites: int, threads: int = 1, timeout: float | None = None, log: Path | None = None) -> Path:
    """Run FLARE's simulator on ``job_folder``; return the server's global checkpoint."""
    nvflare = Path(sys.executable).with_name("nvflare")
    command = [str(nvflare) if nvflare.exists() else "nvflare", "simulator", str(job_folder), "-w", str(workspace), "-n", str(sites), "-t", str(max(1, min(threads, sites)))]
    log = log or workspace.with_name(workspace.name + ".log")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _end_group(process)
    found = sorted(workspace.glob(f"**/app_server/{_output_name()}")) + sorted(workspace.glob(f"server/**/{_output_name()}"))
    if code is None:
        raise UsageError(f"fl-train: the FLARE simulator did not finish within {timeout:.0f} s (--keep-workspace DIR keeps its log)")
    if not found:
        tail = _tail(log)
        raise _site_error(log) or UsageError(f"fl-train: the federated run ended without a global model (exit {code}); last lines of {log}:\n{tail}")
    return found[0]


def _output_name() -> str:
    from medtools.fl.server import OUTPUT_NAME

    return OUTPUT_NAME


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _site_error(log: Path) -> Exception | None:
    """The first medtools error a site raised (its type, so the exit code is the site's), from the simulator log."""
    import re

    from medtools.core import errors

    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"medtools\.core\.errors\.(\w+): (.*)", text)
    if not found:
        return None
    kind = getattr(errors, found.group(1), None)
    kind = kind if isinstance(kind, type) and issubclass(kind, errors.MedtoolsError) else UsageError
    return kind(f"fl-train: a site stopped the run: {found.group(2).strip()}")


def publish(found: Path, output: Path) -> Path:
    """Copy the global checkpoint to -o atomically."""
    from medtools.core.io.atomic import atomic_path

    with atomic_path(output) as tmp:
        shutil.copyfile(found, tmp)
    report.log(f"fl-train: global model {output}")
    return output
