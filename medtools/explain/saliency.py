"""Saliency of one target score per item, by library: MONAI (Grad-CAM, Grad-CAM++, occlusion) and
captum (integrated gradients). Nothing here computes a CAM by hand.

The network is wrapped in :class:`Scores`: [0, 1] inputs (N, C, H, W) at the slice's size → one
score per target class (N, K). A classifier's score is its logit; a segmenter's score for class
c is the mean logit of c over the region the trained model predicts as c (Vinogradova et al.
2020, "Towards interpretable semantic segmentation via gradient-weighted class activation
mapping"), or over the whole slice where it predicts none. The region is fixed per item, so the
trained model, its randomised twin and the faithfulness curves all explain the same target.
Every method is called with an explicit class index (MONAI's ``class_idx=None`` indexes with a
per-pixel argmax).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medtools.core.errors import UsageError

HEAD_NAMES = ("segmentation_head", "classification_head", "head", "fc", "classifier", "last_linear")
IG_STEPS = 32  # integrated gradients: Riemann steps (captum's default is 50)


def _torch_module() -> Any:
    import torch

    class Scores(torch.nn.Module):
        """x → (N, K) target scores through a Predictor's preprocessing and forward."""

        def __init__(self, predictor: Any, segment: bool):
            super().__init__()
            self.model = predictor.model  # a submodule: its layers are named "model.<name>"
            self.predictor = predictor
            self.segment = segment
            self.regions: Any = None  # (N or 1, K, H, W) float: the fixed region of each target

        def forward(self, x: Any) -> Any:
            if not x.requires_grad and torch.is_grad_enabled():
                x = x.detach().requires_grad_(True)  # frozen weights: gradients flow through the input
            out = self.predictor.forward(x)
            if not self.segment:
                return out.float()
            regions = self.regions.to(out.device)
            if regions.shape[0] == 1 and out.shape[0] > 1:
                regions = regions.expand(out.shape[0], *regions.shape[1:])
            return (out.float() * regions).sum((-2, -1)) / regions.sum((-2, -1)).clamp_min(1.0)

    return Scores


def scores_module(predictor: Any, *, segment: bool) -> Any:
    """The scores wrapper in the model's own mode (eval for a loaded model): MONAI's CAM and
    occlusion restore the wrapper's mode after each call, and a wrapper left in its default train
    mode would switch the shared model to training (BatchNorm statistics then drift)."""
    return _torch_module()(predictor, segment).train(predictor.model.training)


def seg_regions(probs: np.ndarray) -> np.ndarray:
    """(N, K, H, W) softmax → (N, K, H, W) float32 regions: where the model predicts class k, or
    the whole slice where it predicts k nowhere."""
    winner = probs.argmax(1)
    regions = np.stack([(winner == k) for k in range(probs.shape[1])], axis=1).astype(np.float32)
    empty = regions.sum((-2, -1)) == 0
    regions[empty] = 1.0
    return regions


# ---------------------------------------------------------------- layers


def _convs(model: Any) -> list[str]:
    import torch

    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d) and not any(part in HEAD_NAMES for part in name.split("."))]


def default_layer(model: Any) -> str:
    """The last conv block: the largest module holding the last convolution (outside the head)
    but not the first one (the stem), e.g. ``layer4`` of a ResNet, ``features.denseblock4`` of a
    DenseNet, ``decoder`` of a U-Net."""
    convs = _convs(model)
    if not convs:
        raise UsageError("the model has no 2-D convolution: Grad-CAM needs one (use --method occlusion or ig)")
    parts = convs[-1].split(".")
    best = convs[-1]
    for depth in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:depth])
        if convs[0].startswith(prefix + "."):
            break
        best = prefix
    return best


def layer_names(model: Any, depth: int = 3) -> list[str]:
    """Module names up to ``depth`` dots that hold a convolution: what --layer accepts (listed)."""
    convs = _convs(model)
    names = [name for name, _ in model.named_modules() if name and name.count(".") < depth and any(c == name or c.startswith(name + ".") for c in convs)]
    return names


def check_layer(model: Any, layer: str | None) -> str:
    """--layer NAME (default: :func:`default_layer`) → a module name of ``model``; a wrong name
    is a UsageError listing the valid ones."""
    if layer is None:
        return default_layer(model)
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        valid = layer_names(model)
        raise UsageError(f"--layer {layer!r} is not a layer of this model; valid layers: {', '.join(valid)} (default: {default_layer(model)})")
    return layer


# ---------------------------------------------------------------- methods


def saliency(net: Any, x: Any, target: int, *, method: str, layer: str | None, regions: Any = None, batch_size: int = 16) -> np.ndarray:
    """(N, H, W) float32 ≥ 0: the saliency of score ``target`` for each item of ``x`` (a float
    tensor (N, C, H, W) in [0, 1]) by ``method``; ``regions`` (N, K, H, W) for a segmenter."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*required_grads.*", category=UserWarning)
    maps = []
    step = batch_size if method == "gradcam" else 1  # MONAI's GradCAMpp mixes up batch and channels for N > 1
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        net.regions = regions[start : start + len(chunk)] if regions is not None else None
        if method in ("gradcam", "gradcam++"):
            from monai.visualize import GradCAM, GradCAMpp

            cam_class = GradCAM if method == "gradcam" else GradCAMpp
            hooked = dict(net.named_modules())[f"model.{layer}"]
            before = set(hooked._forward_hooks), set(hooked._backward_hooks)
            try:
                cam = cam_class(nn_module=net, target_layers=f"model.{layer}", postprocessing=lambda m: m)
                with torch.enable_grad():
                    out = cam(chunk, class_idx=int(target))
            finally:  # MONAI leaves its hooks on the layer: remove them, the model is shared (serve, api)
                for key in set(hooked._forward_hooks) - before[0]:
                    del hooked._forward_hooks[key]
                for key in set(hooked._backward_hooks) - before[1]:
                    del hooked._backward_hooks[key]
            maps.append(out[:, 0].detach().float().cpu().numpy())
        elif method == "occlusion":
            from monai.visualize import OcclusionSensitivity

            side = min(chunk.shape[-2:])
            mask = max(4, side // 8)
            occlusion = OcclusionSensitivity(nn_module=net, mask_size=mask, n_batch=32, verbose=False, mode="gaussian", overlap=0.5, activate=False)
            with torch.no_grad():
                base = net(chunk)[0, int(target)].float()
                occluded, _ = occlusion(chunk)
            # occluded: the score with the patch around each pixel hidden, (1, K, H, W) (MONAI
            # ≥ 1.3; older releases put the classes last: (1, 1, H, W, K))
            hidden = occluded[0, int(target)] if occluded.ndim == 4 else occluded[0, 0, ..., int(target)]
            drop = (base - hidden.float()).clamp_min(0)
            maps.append(drop.cpu().numpy()[None])
        elif method == "ig":
            from captum.attr import IntegratedGradients

            ig = IntegratedGradients(net)
            with torch.enable_grad():
                attribution = ig.attribute(chunk.clone().requires_grad_(True), baselines=torch.zeros_like(chunk), target=int(target), n_steps=IG_STEPS, internal_batch_size=IG_STEPS)
            maps.append(attribution.detach().float().sum(1).abs().cpu().numpy())
        else:
            from medtools.explain import METHODS

            raise UsageError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    net.regions = None
    out = np.concatenate(maps).astype(np.float32) if maps else np.zeros((0, *x.shape[-2:]), np.float32)
    return np.nan_to_num(np.maximum(out, 0.0))


def reinitialised(predictor: Any, stages: Sequence[str], seed: int = 0) -> Any:
    """A copy of ``predictor`` whose modules ``stages`` (names) have fresh random weights
    (each submodule's own ``reset_parameters``); the original is untouched."""
    import copy

    import torch

    twin = copy.copy(predictor)
    twin.model = copy.deepcopy(predictor.model)
    modules = dict(twin.model.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for stage in stages:
            for module in modules[stage].modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return twin


def cascade_stages(model: Any, limit: int = 6) -> list[list[str]]:
    """Module names to re-initialise, top (output side) first: the model's parameterised
    children in reverse order, a child with several parameterised children split into them;
    at most ``limit`` steps, the last one always the whole remaining model."""
    def with_params(module: Any) -> list[tuple[str, Any]]:
        return [(n, m) for n, m in module.named_children() if any(True for _ in m.parameters())]

    stages: list[str] = []
    for name, child in reversed(with_params(model)):
        inner = with_params(child)
        if len(inner) > 2:
            stages += [f"{name}.{n}" for n, _ in reversed(inner)]
        else:
            stages.append(name)
    steps = [[stage] for stage in stages]
    if len(steps) > limit:  # merge the bottom ones into one last step
        steps = steps[: limit - 1] + [stages[limit - 1 :]]
    return steps
