"""Noise schedules and the sampling loop, all from diffusers (Ho et al. 2020; Song et al. 2021; Lu et al. 2022).

Training always uses the ``DDPMScheduler`` (1000 steps by default) whose config is stored in
the checkpoint (``medtools.scheduler``); samplers are rebuilt from that same config so a
model trained once can be sampled with DDPM (ancestral, slow), DDIM (deterministic,
~50 steps) or DPM-Solver++ (~20 steps). The loop is the short visible one of
``pipeline_ddpm.py``: set timesteps, predict noise, step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medtools.core.errors import UsageError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# sampler name → (diffusers class, default steps, extra config)
SAMPLERS: dict[str, tuple[str, int | None, dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", None, {}),  # None: all training timesteps
    "ddim": ("DDIMScheduler", 50, {"timestep_spacing": "trailing"}),
    "dpm-solver": ("DPMSolverMultistepScheduler", 20, {"timestep_spacing": "trailing", "algorithm_type": "dpmsolver++", "solver_order": 2}),
}


def scheduler_config(
    *,
    timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    prediction_type: str = "epsilon",
) -> dict[str, Any]:
    """The DDPMScheduler keywords stored with the model."""
    if beta_schedule not in BETA_SCHEDULES:
        raise UsageError(f"--schedule must be one of {', '.join(BETA_SCHEDULES)}, got {beta_schedule!r}")
    if timesteps < 2:
        raise UsageError("--timesteps must be at least 2")
    return {
        "num_train_timesteps": int(timesteps),
        "beta_schedule": beta_schedule,
        "beta_start": float(beta_start),
        "beta_end": float(beta_end),
        "prediction_type": prediction_type,
        "clip_sample": True,
    }


def training_scheduler(config: dict[str, Any]):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**config)


def make_sampler(name: str, config: dict[str, Any]):
    """A diffusers scheduler for ``name`` built from the training DDPM config."""
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    if name not in SAMPLERS:
        raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    class_name, _, extra = SAMPLERS[name]
    diffusers_logging.set_verbosity_error()  # DDPM-only keys (clip_sample, variance_type) are expected extras
    base = training_scheduler(config).config
    if class_name == "DPMSolverMultistepScheduler" and base.get("clip_sample"):
        # DDPM and DDIM clip the predicted x0 to [-1, 1] at every step (clip_sample); DPM-Solver
        # has no such flag, and without it the multistep extrapolation of an imperfect model's x0
        # saturates (on the CPU-sized CXR model: 64 % of pixels at 0 or 255, fd 1410 vs 182 for
        # DDPM-1000). Dynamic thresholding with a maximum of 1 is exactly that clip.
        extra = {**extra, "thresholding": True, "sample_max_value": float(base.get("clip_sample_range", 1.0))}
    return getattr(diffusers, class_name).from_config(base, **extra)


def default_steps(name: str, config: dict[str, Any]) -> int:
    steps = SAMPLERS[name][1] if name in SAMPLERS else None
    return int(steps or config["num_train_timesteps"])


def target_for(scheduler: Any, x0: Any, noise: Any, t: Any) -> Any:
    """What the UNet is trained to predict (noise, or v for v-prediction)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise UsageError(f"unsupported prediction type {kind!r}")


def image_generators(seed: int, indices: Sequence[int]) -> list[Any]:
    """One CPU generator per image index, so image k is the same whatever the batch, shard or device."""
    import torch

    return [torch.Generator("cpu").manual_seed(int(seed) * 1_000_003 + int(i)) for i in indices]


def sample(
    model: Any,
    scheduler: Any,
    *,
    steps: int,
    generators: list[Any],
    shape: tuple[int, int, int],
    device: Any,
    precision: str = "fp32",
    eta: float = 0.0,
    class_labels: Any = None,
    guidance: float = 1.0,
) -> Any:
    """Run the reverse process for ``len(generators)`` images of ``shape`` (C, H, W) → tensor in [-1, 1].

    ``class_labels`` (N,) asks a class-conditional model for those classes with
    classifier-free guidance ε = ε(x, ∅) + w·(ε(x, y) − ε(x, ∅)), ``w = guidance``: 0 is the
    unconditional (null-class) model exactly, 1 the plain conditional one, > 1 sharper
    classes. Only the passes a ``w`` needs are run (0 and 1: one; otherwise both, batched).
    """
    import inspect

    import torch
    from diffusers.utils.torch_utils import randn_tensor

    from medtools.core.device import autocast

    scheduler.set_timesteps(steps, device=device)
    x = randn_tensor((len(generators), *shape), generator=generators, device=device, dtype=torch.float32)
    x = x * scheduler.init_noise_sigma
    step_kwargs = {"eta": eta} if "eta" in inspect.signature(scheduler.step).parameters else {}
    from medtools.synth.models import null_labels

    null = null_labels(model, len(generators), device)
    if class_labels is not None and null is None:
        raise UsageError("this checkpoint is not class-conditional: drop --class")
    if class_labels is not None:
        class_labels = torch.as_tensor(class_labels, dtype=torch.long, device=device)
    guidance = float(guidance)

    def eps(model_in: Any, t: Any) -> Any:
        with autocast(device, precision):
            if class_labels is None or guidance == 0.0:
                return model(model_in, t, class_labels=null).sample.float()
            if guidance == 1.0:
                return model(model_in, t, class_labels=class_labels).sample.float()
            both = model(torch.cat([model_in, model_in]), t, class_labels=torch.cat([null, class_labels])).sample.float()
        uncond, cond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    with torch.no_grad():
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(x, t)
            predicted = eps(model_in, t)
            x = scheduler.step(predicted, t, x, generator=generators, **step_kwargs).prev_sample
    return x.clamp(-1.0, 1.0)
