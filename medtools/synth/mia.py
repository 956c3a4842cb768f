"""Membership inference on a DDPM: was this image in the training set?

Three attacks, each giving a score per image (higher = more likely a member):

* ``loss``: the seed's reconstruction-loss attack (Hu & Pang 2023; Matsumoto et al. 2023):
  noise the image at fixed timesteps with seeded noise and use minus the denoising error
  ||ε_θ(x_t, t) − ε||², averaged over timesteps and draws.
* ``pia``: proximal initialisation (Kong et al., ICLR 2024): take ε₀ = ε_θ(x₀, 0) as the
  noise, build x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε₀ deterministically and score minus the ℓ₄
  distance ||ε_θ(x_t, t) − ε₀||₄, averaged over the timesteps (multi-timestep).
* ``secmi``: SecMI-stat (Duan et al., ICML 2023): invert x₀ deterministically with DDIM to
  t = 100 (interval 10), take one DDIM denoising step and invert it again; minus the
  squared error between the two x_t.

Members and non-members must be different patients (a held-out image of a training
patient is not a non-member): overlapping patients are refused with exit 5. Reported per
attack: ROC AUC, best balanced accuracy, TPR at 1% and 0.1% FPR (Carlini et al. 2022);
with fewer than 1,000 non-members the 0.1% point is the TPR at zero false positives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core import report
from medtools.core.errors import UsageError

ATTACKS = ("loss", "pia", "secmi")
ATTACKS_HEADER = ("attack", "auc", "balanced_accuracy", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")
SECMI_T, SECMI_INTERVAL = 100, 10  # Duan et al. 2023, DDPM with T = 1000


# ---------------------------------------------------------------- data


def _limit(refs: list[Any], limit: int | None, rng: np.random.Generator) -> list[Any]:
    if limit is None or len(refs) <= limit:
        return refs
    keep = sorted(rng.choice(len(refs), size=limit, replace=False))
    return [refs[i] for i in keep]


# ---------------------------------------------------------------- attacks


class Denoiser:
    """ε_θ(x, t) through the model's Predictor (batched, autocast), with the training schedule's ᾱ."""

    def __init__(self, predictor: Any, sched_config: dict[str, Any]):
        import torch

        from medtools.synth.schedule import training_scheduler

        scheduler = training_scheduler(sched_config)
        if scheduler.config.prediction_type != "epsilon":
            raise UsageError(f"mia supports epsilon-prediction models, this one predicts {scheduler.config.prediction_type}")
        self.predictor = predictor
        self.alphas = scheduler.alphas_cumprod.to(torch.float64)
        self.T = int(scheduler.config.num_train_timesteps)

    def alpha(self, t: int) -> float:
        return float(self.alphas[t])

    def eps(self, x: Any, t: int) -> Any:
        """Noise estimate for model-space samples ``x`` (N, C, H, W) at timestep ``t`` (CPU float32)."""
        import torch

        return torch.from_numpy(self.predictor.predict(x, model_space=True, timesteps=int(t)))

    def ddim(self, x: Any, t_from: int, t_to: int, eps: Any) -> Any:
        """Deterministic DDIM move of x from t_from to t_to (either direction) with noise estimate eps."""
        a_from, a_to = self.alpha(t_from), self.alpha(t_to)
        x0 = (x - (1 - a_from) ** 0.5 * eps) / a_from**0.5
        return a_to**0.5 * x0 + (1 - a_to) ** 0.5 * eps


def loss_scores(d: Denoiser, x0: Any, timesteps: Sequence[int], repeats: int, seed: int) -> np.ndarray:
    import torch

    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(x0), dtype=torch.float64)
    for t in timesteps:
        a = d.alpha(t)
        for _ in range(repeats):
            noise = torch.randn(x0.shape, generator=generator)
            predicted = d.eps(a**0.5 * x0 + (1 - a) ** 0.5 * noise, t)
            total += ((predicted - noise) ** 2).flatten(1).mean(1).double()
    return -(total / (len(timesteps) * repeats)).numpy()


def pia_scores(d: Denoiser, x0: Any, timesteps: Sequence[int]) -> np.ndarray:
    import torch

    eps0 = d.eps(x0, 0)
    total = torch.zeros(len(x0), dtype=torch.float64)
    for t in timesteps:
        a = d.alpha(t)
        predicted = d.eps(a**0.5 * x0 + (1 - a) ** 0.5 * eps0, t)
        total += ((predicted - eps0).abs() ** 4).flatten(1).mean(1).double() ** 0.25
    return -(total / len(timesteps)).numpy()


def secmi_scores(d: Denoiser, x0: Any, t_sec: int = SECMI_T, interval: int = SECMI_INTERVAL) -> np.ndarray:
    x = x0
    for t in range(0, t_sec, interval):
        x = d.ddim(x, t, t + interval, d.eps(x, t))
    x_prev = d.ddim(x, t_sec, t_sec - interval, d.eps(x, t_sec))
    x_again = d.ddim(x_prev, t_sec - interval, t_sec, d.eps(x_prev, t_sec - interval))
    return -((x_again - x) ** 2).flatten(1).mean(1).double().numpy()


# ---------------------------------------------------------------- metrics


def roc_curve(scores_members: np.ndarray, scores_nonmembers: np.ndarray) -> dict[str, np.ndarray]:
    """FPR, TPR and thresholds at every distinct score (member predicted when score ≥ threshold):
    ``sklearn.metrics.roc_curve`` with every threshold kept."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    scores = np.concatenate([scores_members, scores_nonmembers])
    labels = np.concatenate([np.ones(len(scores_members)), np.zeros(len(scores_nonmembers))])
    fpr, tpr, thresholds = sk_roc_curve(labels, scores, drop_intermediate=False)
    return {"fpr": fpr, "tpr": tpr, "threshold": thresholds}


def attack_metrics(scores_members: np.ndarray, scores_nonmembers: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    from scipy.stats import mannwhitneyu

    auc = float(mannwhitneyu(scores_members, scores_nonmembers).statistic) / (len(scores_members) * len(scores_nonmembers))
    roc = roc_curve(scores_members, scores_nonmembers)
    fpr, tpr = roc["fpr"], roc["tpr"]
    return {
        "auc": auc,
        "balanced_accuracy": float(np.max((tpr + 1.0 - fpr) / 2.0)),
        "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max()),
        "tpr_at_0.1pct_fpr": float(tpr[fpr <= 0.001].max()),
    }, roc


def write_roc(path: Path, curves: dict[str, dict[str, np.ndarray]], metrics: dict[str, dict[str, float]], title: str) -> list[Path]:
    """ROC as PNG (linear and log-log panels) and CSV (attack, fpr, tpr, threshold) beside it."""
    import csv
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medtools.core.io import atomic_path

    png = path if path.suffix.lower() == ".png" else path.with_suffix(".png")
    csv_path = png.with_suffix(".csv")
    png.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["attack", "fpr", "tpr", "threshold"])
    for name, roc in curves.items():
        for f, t, th in zip(roc["fpr"], roc["tpr"], roc["threshold"]):
            writer.writerow([name, f"{f:.6g}", f"{t:.6g}", f"{th:.8g}"])
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buffer.getvalue())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, roc in curves.items():
        label = f"{name} (AUC {metrics[name]['auc']:.3f})"
        axes[0].plot(roc["fpr"], roc["tpr"], label=label)
        axes[1].plot(np.maximum(roc["fpr"], 1e-4), np.maximum(roc["tpr"], 1e-4), label=label)
    for ax in axes:
        ax.plot([1e-4, 1], [1e-4, 1], ":", color="gray")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_xlim(0, 1)
    axes[0].set_ylim(0, 1)
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlim(1e-3, 1)
    axes[1].set_ylim(1e-3, 1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return [png, csv_path]


# ---------------------------------------------------------------- command


def run_mia(
    *,
    model: Path,
    members: Sequence[str],
    nonmembers: Sequence[str],
    attacks: Sequence[str] = ATTACKS,
    timesteps: Sequence[int] = (10, 50, 100, 200),
    repeats: int = 4,
    roc: Path | None = None,
    patient_regex: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    device: str | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Score members and non-members with each attack; metrics per attack (and ROC files)."""
    import torch

    from medtools.synth.images import check_disjoint_patients, collect_images, load_images
    from medtools.core.predict import Predictor
    from medtools.core.preprocess import to_model_range
    from medtools.synth.train import scheduler_of

    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise UsageError(f"--attacks: unknown {unknown or '(none)'}; choose from {', '.join(ATTACKS)}")
    refs_members = collect_images(members, patient_regex=patient_regex)
    refs_nonmembers = collect_images(nonmembers, patient_regex=patient_regex)
    check_disjoint_patients(refs_members, refs_nonmembers, ("--members", "--nonmembers"), "non-members must be other patients (check --patient-regex)")
    rng = np.random.default_rng(seed)
    refs_members, refs_nonmembers = _limit(refs_members, limit, rng), _limit(refs_nonmembers, limit, rng)

    predictor = Predictor(model, kind="ddpm", device=device, precision=precision, batch_size=batch_size)
    checkpoint = predictor.checkpoint
    denoiser = Denoiser(predictor, scheduler_of(checkpoint))
    bad = [t for t in timesteps if not 0 < t < denoiser.T]
    if bad or not timesteps:
        raise UsageError(f"--timesteps must lie in 1..{denoiser.T - 1}, got {list(timesteps)}")
    if "secmi" in attacks and denoiser.T <= SECMI_T:
        raise UsageError(f"secmi needs more than {SECMI_T} diffusion steps; this model has {denoiser.T}")
    size, channels = int(checkpoint.config["sample_size"]), int(checkpoint.config["in_channels"])
    sets = {
        name: to_model_range(torch.from_numpy(load_images(refs, size, channels)), predictor.norm)
        for name, refs in (("members", refs_members), ("nonmembers", refs_nonmembers))
    }
    report.log(f"{len(refs_members)} member images ({len({r.patient for r in refs_members})} patients) vs {len(refs_nonmembers)} non-member images ({len({r.patient for r in refs_nonmembers})} patients) at {size}×{size}")

    def score(name: str, x0: Any) -> np.ndarray:
        if name == "loss":
            return loss_scores(denoiser, x0, timesteps, repeats, seed)
        if name == "pia":
            return pia_scores(denoiser, x0, timesteps)
        return secmi_scores(denoiser, x0)

    results: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name in report.progress(list(attacks), total=len(attacks), description="attacks"):
        metrics, curve = attack_metrics(score(name, sets["members"]), score(name, sets["nonmembers"]))
        results[name], curves[name] = metrics, curve
        report.log(f"{name}: AUC {metrics['auc']:.4f}  balanced acc {metrics['balanced_accuracy']:.4f}  TPR@1%FPR {metrics['tpr_at_1pct_fpr']:.4f}  TPR@0.1%FPR {metrics['tpr_at_0.1pct_fpr']:.4f}")
    out: dict[str, Any] = {
        "attacks": results,
        "members": {"images": len(refs_members), "patients": len({r.patient for r in refs_members})},
        "nonmembers": {"images": len(refs_nonmembers), "patients": len({r.patient for r in refs_nonmembers})},
        "timesteps": list(timesteps),
        "repeats": repeats,
        "image_size": size,
        "device": str(predictor.device),
    }
    dp = checkpoint.provenance.get("dp")
    if isinstance(dp, dict):
        out["model_dp"] = {k: dp[k] for k in ("epsilon", "delta") if k in dp}
    if roc is not None:
        title = f"MIA on {Path(model).name}: {len(refs_members)} members vs {len(refs_nonmembers)} non-members"
        out["files"] = [str(p) for p in write_roc(roc, curves, results, title)]
    return out


def render(result: dict[str, Any]) -> list[str]:
    """mia's table for people: one row per attack."""
    rows = ["\t".join(ATTACKS_HEADER)]
    rows += ["\t".join([name] + [f"{values[k]:.4f}" for k in ATTACKS_HEADER[1:]]) for name, values in result["attacks"].items()]
    return rows


def mia_job(*, model: Path, seed: int, **options: Any) -> int:
    """``mia``: the attacks' AUC and TPR at low FPR on stdout (table or JSON with the run record)."""
    from medtools.core import report

    result = run_mia(model=model, seed=seed, **options)
    record = report.RunRecord(seed=seed, device=result.pop("device", None))
    record.add_checkpoint(model)
    report.emit_result(result, render, record=record)
    for path in result.get("files", []):
        report.log(f"wrote {path}")
    return 0
