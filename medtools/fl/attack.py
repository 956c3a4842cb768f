"""Gradient inversion of one site's round update ("Inverting Gradients", Geiping et al. 2020).

Threat model: an honest-but-curious server (or anyone who sees one site's update on the wire)
knows the global model it sent, the site's loss and that the site took one SGD step on one
image (batch 1, the most favourable case for the attacker). From the update Δθ = −lr·g it
recovers the image by optimising a dummy image x so that the gradient it would produce points
the same way as g:

    min_x  1 − <∇θ L(x, y), g> / (‖∇θ L(x, y)‖ ‖g‖)  +  α · TV(x),   x ∈ [0, 1]

(the paper's cosine-similarity objective over all parameters at once, total-variation prior,
Adam on the signed gradient of x with step-size decay at 3/8, 5/8, 7/8 of the run, box
constraint), from a Gaussian start. The label is inferred from the update as in iDLG (Zhao et
al. 2020: the one negative entry of the last layer's bias gradient under cross-entropy) for a
classifier. A segmenter's site trains on its mask; the attacker is given it (``labels="known"``,
a worst case) or optimises it jointly with the image as soft labels (DLG, Zhu et al. 2019).

With DP, the site's step is Opacus DP-SGD: the per-sample gradient clipped to ``max_grad_norm``,
Gaussian noise of σ·max_grad_norm added, σ calibrated by Opacus' RDP accountant to (ε, δ) for
``dp_steps`` steps at sampling rate ``dp_sample_rate`` (by default one step at rate 1: this one
update alone spends ε, the least noise any ε-DP site could add, again the attacker's best case).
Per-sample gradients come from Opacus' expanded-weights mode ("ew"): its hook mode refuses the
in-place residual additions of timm ResNets.

breaching (Geiping's framework, pypi 0.1.2 of 2022) was not used: unmaintained, Hydra-configured
with process-wide state, classification only, and without Opacus' DP-SGD; the attack is short.

Both updates come from the same model: BatchNorm layers are replaced by GroupNorm (Opacus'
``ModuleValidator.fix``) for the plain and the DP step alike, so the only difference is DP.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtools.core.errors import InputError, UsageError

# the paper's optimiser step (its reference implementation's default), at fewer iterations; the TV
# weight was set once on a phantom before any HC18 run (the paper uses 1e-4 to 1e-1 by setting)
ATTACK_LR = 0.1
TV_WEIGHT = 0.01
SITE_LR = 0.01
KINDS = ("cls", "seg")


@dataclass
class AttackSettings:
    """How the site stepped and how the attacker optimises (every knob a documented default)."""

    steps: int = 2000  # attacker's Adam iterations
    tv: float = TV_WEIGHT  # total-variation weight α
    lr: float = ATTACK_LR  # attacker's Adam step size on x
    restarts: int = 1  # independent starts; the best gradient match is kept
    site_lr: float = SITE_LR  # the site's SGD learning rate (the update's scale; cosine ignores it)
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    dp_sample_rate: float = 1.0
    dp_steps: int = 1
    seed: int = 0
    labels: str = "infer"  # infer | known
    extra: dict[str, Any] = field(default_factory=dict)


def _loss_fn(kind: str):
    import torch.nn.functional as F

    if kind == "cls":
        return lambda logits, target: F.cross_entropy(logits, target)

    def seg(logits: Any, target: Any) -> Any:  # seg-train's loss: cross-entropy + soft Dice
        from segmentation_models_pytorch.losses import DiceLoss

        if target.is_floating_point():  # soft labels (N, K, H, W) of the joint optimisation
            probs = logits.softmax(1)
            inter = (probs * target).sum((0, 2, 3))
            dice = 1 - (2 * inter + 1e-7) / (probs.sum((0, 2, 3)) + target.sum((0, 2, 3)) + 1e-7)
            present = target.sum((0, 2, 3)) > 0
            return F.cross_entropy(logits, target) + (dice * present).sum() / present.sum().clamp(min=1)
        return F.cross_entropy(logits, target) + DiceLoss(mode="multiclass", from_logits=True)(logits, target)

    return seg


def private_model(model: Any) -> tuple[Any, list[str]]:
    """The model with every layer Opacus cannot train privately replaced (BatchNorm → GroupNorm)."""
    from opacus.validators import ModuleValidator

    before = {name: type(m).__name__ for name, m in model.named_modules()}
    fixed = ModuleValidator.fix(copy.deepcopy(model)).train()  # a site trains: train mode (GroupNorm and dropout-free nets act the same)
    after = {name: type(m).__name__ for name, m in fixed.named_modules()}
    replaced = sorted({f"{before[n]}->{after[n]}" for n in before if n in after and before[n] != after[n]})
    for module in fixed.modules():  # Opacus' backward hooks refuse in-place activations (same numbers)
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    problems = ModuleValidator.validate(fixed, strict=False)
    if problems:
        raise UsageError(f"this model has layers Opacus cannot train privately: {'; '.join(map(str, problems))}")
    return fixed, replaced


def noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """σ that Opacus' RDP accountant needs for (ε, δ) after ``steps`` steps at ``sample_rate``."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps, accountant="rdp"))


def site_update(model: Any, kind: str, x: Any, y: Any, settings: AttackSettings) -> tuple[list[Any], dict[str, Any]]:
    """One local SGD step of a site on one image → (Δθ per parameter, DP record or {}).

    Plain: Δθ = −lr·∇θL. DP: the same step through Opacus' DPOptimizer (per-sample clipping,
    Gaussian noise from a generator seeded by ``settings.seed``)."""
    import torch

    site = copy.deepcopy(model).train()
    before = [p.detach().clone() for p in site.parameters()]
    loss_fn = _loss_fn(kind)
    record: dict[str, Any] = {}
    optimizer = torch.optim.SGD(site.parameters(), lr=settings.site_lr)
    if settings.dp_epsilon is None:
        optimizer.zero_grad()
        loss_fn(site(x), y).backward()
        optimizer.step()
    else:
        import warnings

        from opacus import PrivacyEngine
        from opacus.accountants import RDPAccountant

        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
        warnings.filterwarnings("ignore", message=".*Optimal order is the largest alpha.*")
        sigma = noise_multiplier(settings.dp_epsilon, settings.dp_delta, settings.dp_sample_rate, settings.dp_steps)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=1)
        generator = torch.Generator(device=x.device).manual_seed(settings.seed)
        engine = PrivacyEngine(accountant="rdp")
        site, optimizer, loader = engine.make_private(module=site, optimizer=optimizer, data_loader=loader, noise_multiplier=sigma, max_grad_norm=settings.dp_max_grad_norm, poisson_sampling=False, noise_generator=generator, grad_sample_mode="ew")
        for xb, yb in loader:
            optimizer.zero_grad()
            loss_fn(site(xb), yb).backward()
            optimizer.step()
        accountant = RDPAccountant()
        accountant.history = [(sigma, settings.dp_sample_rate, settings.dp_steps)]
        record = {
            "epsilon": float(accountant.get_epsilon(settings.dp_delta)),
            "target_epsilon": settings.dp_epsilon,
            "delta": settings.dp_delta,
            "noise_multiplier": sigma,
            "max_grad_norm": settings.dp_max_grad_norm,
            "sample_rate": settings.dp_sample_rate,
            "steps": settings.dp_steps,
            "accountant": "rdp",
            "library": "opacus",
        }
    after = [p.detach() for p in site.parameters()]
    return [a - b for a, b in zip(after, before)], record


def infer_label(model: Any, update: Sequence[Any]) -> int:
    """iDLG: under cross-entropy the last layer's bias gradient p − onehot(y) is negative only at
    y, so Δb = −lr·g is positive only there (without a bias: the rows of the weight update)."""
    params = [name for name, _ in model.named_parameters()]
    last_bias = [i for i, n in enumerate(params) if n.endswith("bias")]
    last_weight = [i for i, n in enumerate(params) if n.endswith("weight")]
    if last_bias and last_bias[-1] > last_weight[-1]:
        return int(update[last_bias[-1]].argmax())
    return int(update[last_weight[-1]].sum(dim=1).argmax())


def total_variation(x: Any) -> Any:
    """Anisotropic TV (mean absolute difference of neighbours), as the paper's prior."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def invert(model: Any, kind: str, update: Sequence[Any], shape: tuple[int, ...], *, label: Any, to_model: Any, settings: AttackSettings, generator: Any) -> tuple[Any, float]:
    """The dummy image (in [0, 1]) whose gradient best matches ``update``, and 1 − its cosine."""
    import torch

    target = [-u for u in update]  # Δθ = −lr·g: the gradient's direction
    target_norm = torch.sqrt(sum((t * t).sum() for t in target))
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    loss_fn = _loss_fn(kind)
    best, best_cost = None, math.inf
    for _ in range(max(1, settings.restarts)):
        x = torch.randn(shape, generator=generator).mul_(0.25).add_(0.5).clamp_(0, 1).to(device).requires_grad_(True)
        soft = None
        variables = [x]
        if label is None:  # segmenter without a known mask: joint soft-label optimisation
            classes = int(model(to_model(x.detach())).shape[1])
            soft = torch.randn((shape[0], classes, *shape[2:]), generator=generator).to(device).requires_grad_(True)
            variables.append(soft)
        optimizer = torch.optim.Adam(variables, lr=settings.lr)
        milestones = [int(settings.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        cost_value = math.inf
        for _step in range(settings.steps):
            optimizer.zero_grad()
            y = soft.softmax(1) if soft is not None else label
            grads = torch.autograd.grad(loss_fn(model(to_model(x)), y), params, create_graph=True)
            dot = sum((g * t).sum() for g, t in zip(grads, target))
            norm = torch.sqrt(sum((g * g).sum() for g in grads))
            match = 1 - dot / (norm * target_norm + 1e-12)
            cost = match + settings.tv * total_variation(x)
            cost.backward()
            x.grad.sign_()  # the paper's signed gradient
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            cost_value = float(match.detach())
        if cost_value < best_cost:
            best, best_cost = x.detach().clone(), cost_value
    return best, best_cost


def image_metrics(truth: np.ndarray, guess: np.ndarray) -> dict[str, float]:
    """PSNR (dB) and SSIM of a reconstruction against the true image, both (C, H, W) in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    truth, guess = truth.astype(np.float64), guess.astype(np.float64)
    ssim = float(np.mean([structural_similarity(t, g, data_range=1.0) for t, g in zip(truth, guess)]))
    return {"psnr": float(peak_signal_noise_ratio(truth, guess, data_range=1.0)), "ssim": ssim}


def attack_one(model: Any, kind: str, image: np.ndarray, *, mask: np.ndarray | None = None, norm: dict[str, Any] | None = None, settings: AttackSettings, device: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Attack one site's update on one image: (C, H, W) in [0, 1] (and its integer mask for a
    segmenter) → (reconstruction (C, H, W) in [0, 1], record with psnr, ssim, label, match, dp)."""
    import torch

    from medtools.core.preprocess import to_model_range
    from medtools.core.train import derive_seed

    from medtools.core.device import resolve_device

    norm = norm or {}
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    model = model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    if kind == "cls":
        y = torch.tensor([int(settings.extra.get("label", 0))], device=device)
    else:
        if mask is None:
            raise InputError("a segmenter's update needs the image's mask (the site trains on it)")
        y = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))[None].to(device)

    def to_model(t: Any) -> Any:
        return to_model_range(t, norm)

    update, dp = site_update(model, kind, to_model(x), y, settings)
    record: dict[str, Any] = {"kind": kind, "dp": dp or None}
    if kind == "cls":
        label: Any = int(y[0]) if settings.labels == "known" else infer_label(model, update)
        record["label_true"], record["label_used"] = int(y[0]), label
        label = torch.tensor([label], device=device)
    else:
        label = y if settings.labels == "known" else None
        record["mask"] = "known" if label is not None else "optimised"
    generator = torch.Generator().manual_seed(derive_seed(settings.seed, "fl-attack"))
    guess, match = invert(model, kind, update, tuple(x.shape), label=label, to_model=to_model, settings=settings, generator=generator)
    guess_np = guess[0].cpu().numpy()
    record.update(image_metrics(image, guess_np))
    record["gradient_mismatch"] = match
    return guess_np, record


@dataclass
class AttackModel:
    """The global model the attacker knows: kind, network (Opacus-compatible), input norm and size."""

    kind: str
    model: Any
    norm: dict[str, Any]
    size: int
    channels: int
    label_values: list[int] | None
    description: dict[str, Any]


FRESH = {  # small freshly initialised models per kind (registry configs)
    "cls": {"arch": "lenet", "in_channels": 1, "num_classes": 2},
    "seg": {"arch": "unet", "encoder": "tu-test_resnet", "in_channels": 1, "classes": 2, "encoder_depth": 3},
}


def lenet(in_channels: int, classes: int, size: int) -> Any:
    """The small CNN of the gradient-leakage papers (DLG, Zhu et al. 2019; used again by Geiping et
    al.): three 5×5 convolutions with sigmoids, one linear layer. An attack benchmark, not a
    medtools checkpoint kind."""
    from torch import nn

    if size % 4:
        raise UsageError(f"--arch lenet needs --size divisible by 4, got {size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 12, 5, padding=2, stride=2), nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
        nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(),
        nn.Flatten(), nn.Linear(12 * (size // 4) ** 2, classes),
    )


def prepare_model(checkpoint: Path | str | None = None, *, kind: str = "cls", arch: str | None = None, encoder: str | None = None, classes: int = 2, size: int | None = None, seed: int = 0) -> AttackModel:
    """The attacked model: a seg or cls checkpoint, or a fresh one of ``kind`` (``arch``,
    ``encoder``, ``classes``) initialised from ``seed``; BatchNorm → GroupNorm for Opacus."""
    from medtools.core import ckpt
    from medtools.core.preprocess import UNIT_NORM, canonical_norm
    from medtools.core.train import initial_weights

    if checkpoint is not None:
        loaded, model = ckpt.load_model(checkpoint, kind=KINDS)
        kind, config = loaded.kind, dict(loaded.config)
        norm = canonical_norm(loaded.norm, UNIT_NORM)
        size = size or int(config.get("image_size") or 32)
        source: dict[str, Any] = {"checkpoint": str(checkpoint), "sha256": _sha256(checkpoint)}
    else:
        if kind not in KINDS:
            raise UsageError(f"--kind {kind!r}: choose from {', '.join(KINDS)}")
        config = dict(FRESH[kind])
        if arch is not None:
            config["arch"] = arch
        if kind == "seg" and encoder is not None:
            config["encoder"] = encoder
        config["num_classes" if kind == "cls" else "classes"] = int(classes)
        with initial_weights(seed):
            model = lenet(config["in_channels"], config["num_classes"], size or 32) if (kind, config["arch"]) == ("cls", "lenet") else ckpt.new_model(kind, config)
        norm = canonical_norm(UNIT_NORM)
        size = size or 32
        source = {"fresh": True, "seed": seed}
    model, replaced = private_model(model)
    channels = int(config.get("in_channels", 1))
    label_values = [int(v) for v in config["label_values"]] if config.get("label_values") else None
    description = {"kind": kind, "config": {k: v for k, v in config.items() if k in ("arch", "encoder", "in_channels", "num_classes", "classes", "encoder_depth")}, "parameters": int(sum(p.numel() for p in model.parameters())), "layers_replaced": replaced, "size": size, **source}
    return AttackModel(kind, model, norm, int(size), channels, label_values, description)


def _sha256(path: Path | str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def mask_indices(mask: np.ndarray, label_values: list[int] | None) -> np.ndarray:
    """A label image → class indices (the checkpoint's ``label_values``; else 0 / non-zero)."""
    values = np.unique(mask)
    if label_values is not None and set(values.tolist()) <= set(label_values):
        lookup = {v: i for i, v in enumerate(label_values)}
        return np.vectorize(lookup.get)(mask).astype(np.int64)
    if label_values is None or (len(label_values) == 2 and len(values) <= 2):
        return (mask > 0).astype(np.int64)
    raise InputError(f"mask values {values.tolist()[:8]} are not the model's label values {label_values}")


def find_mask(folder: Path, item: Any) -> Path:
    """The mask of an input in ``folder``: the same relative name, or its stem with a mask suffix
    (``_mask``, ``_seg``, … as ``medtools manifest`` pairs them)."""
    from medtools.core.manifest import MASK_SUFFIXES
    from medtools.core.io.formats import split_ext

    candidate = folder / item.rel
    if candidate.is_file():
        return candidate
    stem, ext = split_ext(item.rel)
    for suffix in MASK_SUFFIXES:
        for extension in (ext, ".png"):
            candidate = folder / f"{stem}{suffix}{extension}"
            if candidate.is_file():
                return candidate
    raise InputError(f"no mask for {item.path} in {folder} (same name, or {Path(stem).name}_mask{ext})")


def attack_image(target: AttackModel, image: Any, *, mask: Any = None, settings: AttackSettings, device: Any = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The attack on one image with and (when ``settings.dp_epsilon``) without DP: ({"plain": x̂,
    "dp": x̂} as (H, W[, C]) float arrays in [0, 1], the record: truth-vs-reconstruction PSNR/SSIM
    per arm, the random start's PSNR/SSIM as a baseline, DP settings)."""
    import torch

    from medtools.core.preprocess import load_image, resize
    from medtools.core.train import derive_seed

    from medtools.core.device import resolve_device

    device = resolve_device(device) if not isinstance(device, torch.device) else device  # once per image, not per arm
    truth = load_image(image, target.size, target.channels, target.norm)
    labels = None
    if target.kind == "seg":
        if mask is None and settings.labels == "known":
            raise UsageError("--labels known on a segmenter needs --mask (the masks the site trains on)")
        if mask is not None:
            array = mask.array if hasattr(mask, "array") else np.asarray(mask)
            array = array[..., 0] if array.ndim == 3 else array
            labels = resize(mask_indices(array, target.label_values)[None], target.size, labels=True)[0]
    arms = {"plain": None} if settings.dp_epsilon is None else {"plain": None, "dp": settings.dp_epsilon}
    images: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {}
    for arm, epsilon in arms.items():
        arm_settings = copy.copy(settings)
        arm_settings.dp_epsilon = epsilon
        guess, result = attack_one(target.model, target.kind, truth, mask=labels, norm=target.norm, settings=arm_settings, device=device)
        images[arm] = np.moveaxis(guess, 0, -1)[..., 0] if guess.shape[0] == 1 else np.moveaxis(guess, 0, -1)
        record[arm] = result
    start = torch.randn(truth.shape, generator=torch.Generator().manual_seed(derive_seed(settings.seed, "fl-attack"))).mul_(0.25).add_(0.5).clamp_(0, 1).numpy()
    record["baseline"] = {"what": "the attack's random start", **image_metrics(truth, start)}
    return images, record


def attack_files(
    inputs: Sequence[str],
    output: Path | str | None,
    *,
    model: Path | str | None = None,
    kind: str = "cls",
    arch: str | None = None,
    encoder: str | None = None,
    classes: int = 2,
    size: int | None = None,
    masks: Path | str | None = None,
    settings: AttackSettings,
    device: str | None = None,
    overwrite: bool = False,
    shard: str | None = None,
) -> int:
    """``medtools fl-attack``: per input image, the reconstruction from the plain update
    (``<name>_plain.png``) and, with ``settings.dp_epsilon``, from the DP update (``<name>_dp.png``)
    under ``output``; paths on stdout or one JSON line per image; the batch driver's exit code."""
    from medtools import api
    from medtools.core import batch
    from medtools.core.inputs import check_output_arg, expand_inputs, output_for, select_shard, skip_existing
    from medtools.core.io import read_image

    check_settings(settings)
    if masks is not None and not Path(masks).is_dir():
        raise UsageError(f"--mask {masks}: not a folder")
    output = check_output_arg(Path(output) if output is not None else None, 2)
    items = select_shard(expand_inputs(inputs, output=output), shard)  # nothing usable: exit 5 before any model work
    target = prepare_model(model, kind=kind, arch=arch, encoder=encoder, classes=classes, size=size, seed=settings.seed)
    if target.kind == "seg" and masks is None:
        raise UsageError("a segmenter's site trains on masks: give them with --mask FOLDER")
    arms = ("plain",) if settings.dp_epsilon is None else ("plain", "dp")

    def work(item: Any) -> Any:
        targets = {arm: output_for(item, output, ext=".png", suffix=f"_{arm}") for arm in arms}
        if skip_existing(list(targets.values()), overwrite):
            return batch.SKIPPED
        mask = read_image(find_mask(Path(masks), item)) if masks is not None and target.kind == "seg" else None
        images, record = api.fl_attack(read_image(item.path), target, mask=mask, settings=settings, device=device)
        written = [write_png(images[arm], targets[arm]) for arm in arms]
        return {"path": str(item.path), "outputs": [str(p) for p in written], "model": target.description, "settings": public_settings(settings), **record}

    return batch.run_items(items, work, emit=batch.emitter(), total=len(items), description="fl-attack").exit_code


def write_png(array: np.ndarray, path: Path) -> Path:
    """An image in [0, 1] as an 8-bit PNG (atomic)."""
    from medtools.core.io import Image, write_image

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(Image(np.clip(np.rint(array * 255), 0, 255).astype(np.uint8), format="png"), path, format="png")


def check_settings(settings: AttackSettings) -> None:
    """Flag values the attack cannot run with → UsageError (exit 2)."""
    if settings.steps < 1 or settings.restarts < 1:
        raise UsageError("--steps and --restarts must be at least 1")
    if settings.labels not in ("infer", "known"):
        raise UsageError(f"--labels {settings.labels!r}: choose infer or known")
    if settings.dp_epsilon is not None:
        if settings.dp_epsilon <= 0:
            raise UsageError("--dp-epsilon must be positive")
        if not 0 < settings.dp_delta < 1:
            raise UsageError("--dp-delta must be in (0, 1)")
        if not 0 < settings.dp_sample_rate <= 1:
            raise UsageError("--dp-sample-rate must be in (0, 1]")
        if settings.dp_steps < 1 or settings.dp_max_grad_norm <= 0:
            raise UsageError("--dp-steps must be at least 1 and --dp-max-grad-norm positive")


def public_settings(settings: AttackSettings) -> dict[str, Any]:
    out = {k: v for k, v in vars(settings).items() if k != "extra"}
    if settings.dp_epsilon is None:
        out = {k: v for k, v in out.items() if not k.startswith("dp_")}
    return out
