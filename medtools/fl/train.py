"""fl-train and fl-job: the federated run of a kind's own trainer on FLARE (see docs/federated.md).

``fl_train`` checks every site manifest first (a missing or unreadable one stops the run
before anything starts: exit 5, no model), writes the FLARE job folder (``job.build_job``)
into a scratch folder beside -o, runs FLARE's simulator on it with one client per site
(``job.simulate``) and publishes the server's global checkpoint to -o. ``fl_job`` writes the
same folder for a real federation (``nvflare job submit`` / POC mode).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medtools.core import report
from medtools.core.errors import UsageError
from medtools.core.train import TrainOptions

# shared training options that make sense at a site (device, batch size, lr, seed, ...)
SITE_OPTIONS = ("batch_size", "lr", "seed", "device", "precision", "workers", "steps_per_epoch", "deterministic")
TRAIN_DEFAULTS = TrainOptions(epochs=1, batch_size=16, lr=1e-3)


def _options(options: TrainOptions | dict[str, Any] | None) -> dict[str, Any]:
    if isinstance(options, dict):
        options = TRAIN_DEFAULTS.replace(**{k: v for k, v in options.items() if v is not None})
    options = options or TRAIN_DEFAULTS
    if options.resume or options.keep_ids or options.compile:
        raise UsageError("fl-train: --resume, --keep-ids and --compile are not supported in federated runs")
    values = dataclasses.asdict(options)
    return {k: values[k] for k in SITE_OPTIONS}


def _trainer_kwargs(kind: str, trainer: dict[str, Any] | None, *, dp: bool = False) -> dict[str, Any]:
    """The keywords for KIND's trainer; one it does not take is a UsageError naming the flag."""
    import inspect

    from medtools.core import registry

    accepted = inspect.signature(registry.resolve(registry.get(kind).trainer)).parameters
    trainer = {k: v for k, v in (trainer or {}).items() if v is not None and v is not False}
    unknown = sorted(k for k in trainer if k not in accepted)
    if unknown:
        raise UsageError(f"fl-train {kind}: {', '.join('--' + k.replace('_', '-') for k in unknown)} is not an option of {kind}'s trainer")
    if dp and "normalization" not in accepted:
        raise UsageError(f"--dp-epsilon: {kind}'s trainer cannot build its network without BatchNorm (DP-SGD needs per-sample gradients); federated DP supports seg")
    if "schedule" in accepted:
        trainer.setdefault("schedule", "constant")  # one learning rate for all rounds (a per-round schedule would restart every round)
    if isinstance(trainer.get("modalities"), str):
        trainer["modalities"] = [m.strip() for m in trainer["modalities"].split(",") if m.strip()]
    if trainer.get("resize") is not None:
        trainer["resize"] = [int(v) for v in trainer["resize"]]
    if "keep_best" in accepted:
        trainer.setdefault("keep_best", False)
    return trainer


def fl_job(
    kind: str,
    sites: Sequence[str | Path],
    output: Path,
    *,
    rounds: int = 5,
    local_epochs: int = 1,
    algorithm: str = "fedavg",
    mu: float | None = None,
    dp_epsilon: float | None = None,
    dp_delta: float = 1e-5,
    min_sites: int | None = None,
    options: TrainOptions | dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export the federated job as a FLARE job folder ``output`` (site manifest paths as each site sees them)."""
    from medtools.core import registry
    from medtools.fl.job import build_job, site_names

    if output.exists():
        raise UsageError(f"fl-job: {output} exists; give a new folder")
    entry = registry.get(kind)
    if not entry.trainer:
        raise UsageError(f"fl-job: kind {kind!r} has no trainer")
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".fl-job-", dir=output.parent))
    try:
        folder = build_job(kind, list(sites), scratch, rounds=rounds, local_epochs=local_epochs, algorithm=algorithm, mu=mu, dp_epsilon=dp_epsilon, dp_delta=dp_delta, min_sites=min_sites, options=_options(options), trainer=_trainer_kwargs(kind, trainer, dp=dp_epsilon is not None))
        folder.rename(output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.log(f"fl-job: FLARE job folder {output} ({len(sites)} sites: {', '.join(site_names(len(sites)))}); submit it with `nvflare job submit -j {output}`")
    return {"output": str(output), "sites": site_names(len(sites)), "rounds": rounds}


def fl_train(
    kind: str,
    sites: Sequence[str | Path],
    output: Path,
    *,
    rounds: int = 5,
    local_epochs: int = 1,
    algorithm: str = "fedavg",
    mu: float | None = None,
    dp_epsilon: float | None = None,
    dp_delta: float = 1e-5,
    min_sites: int | None = None,
    threads: int | None = None,
    timeout: float | None = None,
    keep_workspace: Path | None = None,
    options: TrainOptions | dict[str, Any] | None = None,
    trainer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Federated training of ``kind`` over the site manifests in FLARE's simulator; writes -o."""
    from medtools.core import ckpt
    from medtools.core.paths import check_outputs
    from medtools.fl.job import build_job, check_sites, publish, simulate

    manifests = [Path(s).resolve() for s in sites]
    check_outputs(manifests, [output])
    if keep_workspace is not None and Path(keep_workspace).exists():
        raise UsageError(f"--keep-workspace {keep_workspace} exists; give a new folder")
    check_sites(kind, manifests)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}.fl-", dir=output.parent))
    try:
        folder = build_job(kind, manifests, scratch / "job", rounds=rounds, local_epochs=local_epochs, algorithm=algorithm, mu=mu, dp_epsilon=dp_epsilon, dp_delta=dp_delta, min_sites=min_sites, options=_options(options), trainer=_trainer_kwargs(kind, trainer, dp=dp_epsilon is not None))
        report.log(f"fl-train: {len(manifests)} sites, {rounds} rounds × {local_epochs} local epochs, {algorithm}{', DP ε=' + str(dp_epsilon) if dp_epsilon else ''} (FLARE simulator, workspace {scratch})")
        found = simulate(folder, scratch / "workspace", sites=len(manifests), threads=threads or len(manifests), timeout=timeout, log=scratch / "simulator.log")
        publish(found, output)
    finally:
        if keep_workspace is not None:
            shutil.move(str(scratch), keep_workspace)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    meta = ckpt.load(output, tensors=False).provenance
    federated = meta.get("federated") or {}
    return {
        "output": str(output),
        "kind": kind,
        "rounds": federated.get("rounds"),
        "sites": federated.get("sites"),
        "algorithm": algorithm,
        "final": federated.get("final_mean", {}),
        "history": federated.get("history", []),
        **({"dp": meta["dp"]} if "dp" in meta else {}),
        "train_seconds": round(time.time() - started, 2),
    }


def fl_train_job(kind: str, sites: Sequence[str | Path], output: Path, *, json_output: bool = False, **settings: Any) -> int:
    """fl-train: run, then the checkpoint path (or the summary JSON with its run record) on stdout."""
    record = report.RunRecord(seed=(settings.get("options") or {}).get("seed", 0))
    result = fl_train(kind, sites, output, **settings)
    if json_output:
        report.emit_json({**result, "run": record.as_dict()})
    else:
        report.emit_path(result["output"])
    return 0


def fl_job_job(kind: str, sites: Sequence[str | Path], output: Path, *, json_output: bool = False, **settings: Any) -> int:
    """fl-job: export, then the job folder (or JSON) on stdout."""
    result = fl_job(kind, sites, output, **settings)
    if json_output:
        report.emit_json(result)
    else:
        report.emit_path(result["output"])
    return 0
