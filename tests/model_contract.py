"""The model contract every registered kind keeps (after smp's tests/models/base.py).

``ModelContract`` is parametrised over the registry: a family that registers a kind with
``tiny`` configs in its ``models.py`` is tested here with no new test code. Each tiny config:
forward and backward; 1 and 4 input channels (where the kind has ``channels_key``); odd
input sizes through the Predictor; save → load gives the same output; an unknown config
key → CheckpointError (exit 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from medtools.core import ckpt, registry  # noqa: E402
from medtools.core.errors import EXIT_CHECKPOINT, CheckpointError  # noqa: E402
from medtools.core.predict import Predictor  # noqa: E402


def contract_cases() -> list[Any]:
    cases = []
    for kind in sorted(registry.discover().values(), key=lambda k: k.name):
        for index, config in enumerate(kind.tiny):
            cases.append(pytest.param(kind.name, dict(config), id=f"{kind.name}-{index}-{config.get('arch', kind.name)}"))
    return cases


def _inputs(kind: registry.Kind, config: dict[str, Any], n: int, size: int) -> tuple[Any, dict[str, Any]]:
    if kind.example:  # kinds whose input is not an image batch (latents…) say how to make one
        return registry.resolve(kind.example)(config, n, size)
    channels = int(config.get(kind.channels_key or "in_channels", 1))
    x = torch.rand(n, channels, size, size)
    extra = {"timesteps": torch.randint(0, 100, (n,))} if kind.task == "denoise" else {}
    return x, extra


def _size(config: dict[str, Any]) -> int:
    return int(config.get("image_size") or config.get("sample_size") or 32)


class ModelContract:
    """Subclass (or parametrise) with ``kind_name`` and ``config``."""

    def check_forward_backward(self, kind_name: str, config: dict[str, Any]) -> None:
        kind = registry.get(kind_name)
        torch.manual_seed(0)
        model = ckpt.new_model(kind_name, config).train()
        x, extra = _inputs(kind, config, 2, _size(config))
        extra.pop("model_space", None)  # a Predictor flag, not a forward argument
        x.requires_grad_(True)
        forward = registry.resolve(kind.forward) if kind.forward else None
        out = forward(model, x, **extra) if forward else model(x)
        out.float().pow(2).mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    def check_channels(self, kind_name: str, config: dict[str, Any], channels: int) -> None:
        kind = registry.get(kind_name)
        if not kind.channels_key or kind.task == "denoise" or kind.example:
            pytest.skip(f"{kind_name} has a fixed channel layout (its tiny configs cover it)")
        config = {**config, kind.channels_key: channels}
        model = ckpt.new_model(kind_name, config).eval()
        x, extra = _inputs(kind, config, 2, _size(config))
        with torch.no_grad():
            out = model(x, **extra)
        assert out.shape[0] == 2 and torch.isfinite(out).all()

    def check_save_load_predict_odd_size(self, kind_name: str, config: dict[str, Any], tmp_path: Path) -> None:
        kind = registry.get(kind_name)
        torch.manual_seed(0)
        model = ckpt.new_model(kind_name, config).eval()
        path = ckpt.save(tmp_path / "m.safetensors", model.state_dict(), kind=kind_name, config=config)
        predictor = Predictor(path, kind=kind_name, device="cpu", batch_size=2)
        size = _size(config)
        odd = size + 5 if kind.task in ("segment", "classify") else size  # others run at their own size
        x, extra = _inputs(kind, config, 3, odd)
        got = predictor.predict(x, **extra)
        assert got.shape[0] == 3 and np.isfinite(got).all()
        if kind.task == "segment":
            assert got.shape[-2:] == (odd, odd)
        # the reloaded model gives what the model in memory gave
        reference = Predictor.from_model(model, kind=kind_name, config=config, batch_size=2).predict(x, **extra)
        np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)

    def check_unknown_config_key(self, kind_name: str, config: dict[str, Any], tmp_path: Path) -> None:
        model = ckpt.new_model(kind_name, config)
        path = ckpt.save(tmp_path / "m.safetensors", model.state_dict(), kind=kind_name, config={**config, "no_such_key": 1})
        with pytest.raises(CheckpointError, match="no_such_key") as info:
            Predictor(path, kind=kind_name, device="cpu")
        assert info.value.exit_code == EXIT_CHECKPOINT
